"""Celery's configuration module for ``celery`` commands run wherever the package is
installed: every public name in it is a Celery setting, the client's
(:func:`orchestrator.client.config.client_config`: broker and result backend, JSON only,
routes, result settings)::

    celery --config orchestrator.client.celeryconfig call orchestrator.tools.execute --args '[...]'
    celery --config orchestrator.client.celeryconfig result <execution id>
    celery --config orchestrator.client.celeryconfig inspect ping

(``CELERY_CONFIG_MODULE=orchestrator.client.celeryconfig`` in the environment does the same
as ``--config``). Task names are strings, so these commands need no task code, only these
settings.

The settings are built from ``ORCHESTRATOR_*`` environment variables when this module is
imported. That is what a Celery configuration module does, and it is the documented
exception to the rule that nothing in ``orchestrator/`` reads ``os.environ`` at import time:
nothing in the library imports this module; Celery does, by name. ``OrchestratorClient``
builds the same settings from the Settings it is given.
"""

# No `from __future__ import annotations` here: it would add a public name, `annotations`.
from orchestrator.client.config import client_config as _client_config
from orchestrator.settings import Settings as _Settings

globals().update(_client_config(_Settings.from_env()))
