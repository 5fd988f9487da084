"""The Celery application: ``celery -A worker worker``, ``celery -A worker beat``,
``celery -A worker flower``.

Settings are read once here, from ``ORCHESTRATOR_*`` environment variables.
With no further flags the worker consumes ``celery``, ``tools``, ``relics`` and
``host.<ORCHESTRATOR_HOST_NAME>`` on a threads pool sized by
``ORCHESTRATOR_WORKER_CONCURRENCY``.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

import click
from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from celeryconfig import worker_config
from orchestrator.settings import Settings
from orchestrator.worker import compat
from tasks import TASK_MODULES

settings = Settings.from_env()
compat.apply_all()

app = Celery("orchestrator")
app.conf.update(worker_config(settings))
app.conf.imports = TASK_MODULES


def _apply_retry_policy(celery_app: Celery, policy: Settings) -> None:
    """Tasks retry on DockerUnavailable as many times as the operator's settings say."""
    for module in TASK_MODULES:
        importlib.import_module(module)
    for name, task in celery_app.tasks.items():
        if name.startswith("orchestrator.") and getattr(task, "autoretry_for", None):
            task.max_retries = policy.docker_retries  # read at each retry; backoff is 2..30 s


_apply_retry_policy(app, settings)

log = logging.getLogger("orchestrator.worker")


def _celery_subcommand() -> str | None:
    """The ``celery`` subcommand loading this module (``worker``, ``flower``...), if any."""
    context = click.get_current_context(silent=True)
    return None if context is None else context.invoked_subcommand


def _prepare_flower() -> None:
    """Flower reads its options from ``FLOWER_*`` variables, a ``flowerconfig.py`` in the
    working directory, then its command line, each overriding the one before. Basic auth
    from Settings goes in as the lowest of these (an explicit ``FLOWER_BASIC_AUTH`` or
    ``--basic_auth`` wins), so Flower never starts without authentication, which also
    turns its ``/api`` on. (Its API applies tasks by name from the app's registry: the
    task modules are imported above, by ``_apply_retry_policy``.)
    """
    os.environ.setdefault("FLOWER_BASIC_AUTH", settings.flower_basic_auth)


if _celery_subcommand() == "flower":
    _prepare_flower()


@worker_ready.connect
def _start_housekeeping(**_: Any) -> None:
    from tasks.runtime import get_runtime

    runtime = get_runtime()
    runtime.start_housekeeping()
    log.info(
        "orchestrator worker ready on host %s (queues: celery, tools, relics, %s)",
        settings.host_name,
        settings.host_queue,
    )


@worker_shutdown.connect
def _stop_housekeeping(**_: Any) -> None:
    from tasks.runtime import get_runtime

    get_runtime().stop_housekeeping()
