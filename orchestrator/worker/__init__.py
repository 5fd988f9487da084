"""What runs inside a worker: runtime, tool execution, warm pool, relics, cleanup, janitor
and host stats. Drives the Docker engine only through :mod:`orchestrator.engine`."""
