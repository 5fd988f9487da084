"""Celery task definitions: thin adapters from JSON messages to :mod:`orchestrator`.

A task parses its request with pydantic, calls one function of the library and
returns ``model_dump(mode="json")``. Nothing here imports docker.
"""

TASK_MODULES = [
    "tasks.tools",
    "tasks.relics",
    "tasks.cleanup",
    "tasks.sessions",
    "tasks.janitor",
    "tasks.stats",
]
