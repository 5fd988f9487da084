"""The Celery application: ``celery -A worker worker``, ``celery -A worker beat``,
``celery -A worker flower``.

Settings are read once here, from ``ORCHESTRATOR_*`` environment variables.
With no further flags the worker consumes ``celery``, ``tools``, ``relics`` and
``host.<ORCHESTRATOR_HOST_NAME>`` on a threads pool sized by
``ORCHESTRATOR_WORKER_CONCURRENCY``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from celeryconfig import worker_config
from orchestrator.settings import Settings
from tasks import TASK_MODULES

settings = Settings.from_env()

app = Celery("orchestrator")
app.conf.update(worker_config(settings))
app.conf.imports = TASK_MODULES

log = logging.getLogger("orchestrator.worker")


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
