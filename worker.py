"""The Celery application: ``celery -A worker worker``, ``celery -A worker beat``,
``celery -A worker flower``.

Settings come from ``ORCHESTRATOR_*`` environment variables: Celery's from the
configuration module ``celeryconfig.py`` beside this file, the orchestrator's own here.
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

from orchestrator.settings import Settings
from orchestrator.worker import compat
from orchestrator.worker.heap import freeze_startup_heap
from tasks import TASK_MODULES

settings = Settings.from_env()
compat.apply_all()

app = Celery("orchestrator")
app.config_from_object("celeryconfig")
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
    _guard_flower(settings)


#: The documented credentials (docs/trust-model.md): Flower refuses them outside development.
DEFAULT_FLOWER_CREDENTIALS = frozenset({"admin:orchestrator"})


def default_credentials(basic_auth: list[str] | None) -> list[str]:
    """The entries of Flower's ``basic_auth`` that protect nothing: the documented default
    or an empty password. Only their user names are returned (never a password)."""
    weak = []
    for entry in basic_auth or []:
        user, _, password = entry.partition(":")
        if entry in DEFAULT_FLOWER_CREDENTIALS or not password:
            weak.append(user)
    return weak


def host_allowed(host_name: str, allowed: list[str], bind_address: str = "") -> bool:
    """True when Flower serves requests whose ``Host`` header names ``host_name``.

    Args:
        host_name: the header's host, without its port (``[::1]`` brackets allowed).
        allowed: ``ORCHESTRATOR_FLOWER_ALLOWED_HOSTS``; ``*`` allows any host.
        bind_address: Flower's ``--address``, also allowed (unless it is every interface).
    """
    names = {name.lower().strip("[]").rstrip(".") for name in allowed}
    if "*" in names:
        return True
    if bind_address and bind_address not in ("0.0.0.0", "::"):
        names.add(bind_address.lower().strip("[]"))
    return host_name.lower().strip("[]").rstrip(".") in names


def _guard_flower(policy: Settings) -> None:
    """Two guards around Flower, on its tornado Application:

    - it refuses to start with default credentials (:func:`default_credentials`), whatever
      gave them (these Settings, ``FLOWER_BASIC_AUTH``, ``flowerconfig.py``, ``--basic-auth``),
      unless ``ORCHESTRATOR_DEV_ALLOW_DEFAULT_CREDENTIALS`` says this is a development machine;
    - it answers 400 to a request whose ``Host`` header it does not serve (see
      :func:`host_allowed`): a web page that rebinds its own DNS name to Flower's address
      reaches Flower from the victim's browser, but with its own name in ``Host``.
      ``/healthcheck`` stays open to any name (probes use addresses); it shows nothing.
    """
    import tornado.web
    from flower.app import Flower

    class ForeignHost(tornado.web.RequestHandler):
        def prepare(self) -> None:
            self.set_status(400)
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish(
                "400: this Host header is not one Flower serves; an operator adds the name "
                "to ORCHESTRATOR_FLOWER_ALLOWED_HOSTS\n"
            )

    start_http_server = Flower.start_http_server
    find_handler = Flower.find_handler

    def guarded_start(self: Any) -> Any:
        weak = default_credentials(self.options.basic_auth)
        if weak and not policy.dev_allow_default_credentials:
            raise SystemExit(
                f"Flower refuses to start: the credentials of user(s) {', '.join(weak)} are the "
                "documented default admin:orchestrator or have no password. Set "
                "ORCHESTRATOR_FLOWER_BASIC_AUTH=user:password (`orchestrator up` generates "
                "them), or ORCHESTRATOR_DEV_ALLOW_DEFAULT_CREDENTIALS=true on a development "
                "machine."
            )
        return start_http_server(self)

    def guarded_find(self: Any, request: Any, **kwargs: Any) -> Any:
        prefix = (self.options.url_prefix or "").strip("/")
        health = f"/{prefix}/healthcheck" if prefix else "/healthcheck"
        allowed = policy.flower_allowed_hosts
        if request.path != health and not host_allowed(
            request.host_name, allowed, self.options.address or ""
        ):
            log.info("Flower refused a request for host %r", request.host_name[:100])
            return self.get_handler_delegate(request, ForeignHost)
        return find_handler(self, request, **kwargs)

    Flower.start_http_server = guarded_start
    Flower.find_handler = guarded_find


if _celery_subcommand() == "flower":
    _prepare_flower()


@worker_ready.connect
def _start_housekeeping(**_: Any) -> None:
    from tasks.runtime import get_runtime

    runtime = get_runtime()
    runtime.start_housekeeping()
    freeze_startup_heap()  # its full GC passes then skip what startup loaded
    log.info(
        "orchestrator worker ready on host %s (queues: celery, tools, relics, %s)",
        settings.host_name,
        settings.host_queue,
    )


@worker_shutdown.connect
def _stop_housekeeping(**_: Any) -> None:
    from tasks.runtime import get_runtime

    get_runtime().stop_housekeeping()
