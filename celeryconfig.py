"""Celery's configuration module for the worker, beat and Flower: every public name in it is
a Celery setting (``broker_url``, ``result_backend``, ``task_serializer``, ``task_routes``,
``task_queues``, ``worker_pool``, ``beat_schedule``...).

``worker.py`` loads it with ``app.config_from_object("celeryconfig")``, and any ``celery``
command run without ``-A`` from the repository (or in the worker image) finds it by Celery's
convention: Celery's default loader imports the module named ``celeryconfig``. Either way
Celery takes every attribute of this module as a setting, so nothing else is public here:
the helpers are imported under ``_`` names (``tests/unit/test_packaging.py`` checks it). The
values are the client's settings (:func:`orchestrator.client.config.client_config`) plus the
worker's (:func:`orchestrator.worker.config.worker_options`).

They are built from ``ORCHESTRATOR_*`` environment variables when this module is imported.
That is what a Celery configuration module does, and it is the documented exception to the
rule that nothing reads ``os.environ`` at import time, a rule for the library
(``orchestrator/``), where only :mod:`orchestrator.client.celeryconfig`, which Celery imports
by name, is such a module.

This module is part of the worker (the repository and the image), like ``worker.py`` and
``tasks/``: it is not installed in site-packages, where it would take the place of a user's
own ``celeryconfig``. Where only the package is installed, ``celery --config
orchestrator.client.celeryconfig ...`` gives the client's settings (docs/celery.md, "The
celery command").
"""

# No `from __future__ import annotations` here: it would add a public name, `annotations`.
from orchestrator.client.config import client_config as _client_config
from orchestrator.settings import Settings as _Settings
from orchestrator.worker.config import worker_options as _worker_options

_settings = _Settings.from_env()

globals().update(_client_config(_settings))
globals().update(_worker_options(_settings))
