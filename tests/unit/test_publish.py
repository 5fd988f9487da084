"""A send refused by a pooled channel that kombu closed under it goes out again (fakes)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import pytest

from orchestrator.client import publish

# Raised from code whose file is kombu's, as kombu's Redis channel raises it.
_KOMBU = compile(
    "def closed_channel_put():\n    return None.client\n",
    "/venv/lib/python3.11/site-packages/kombu/transport/redis.py",
    "exec",
)
_scope: dict[str, Any] = {}
exec(_KOMBU, _scope)  # noqa: S102 - a function whose frames name kombu's file


class App:
    """A Celery app's send_task and connection_for_write, failing as told."""

    def __init__(self, fail_with: BaseException | None = None, kombu: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail_with, self.kombu = fail_with, kombu
        self.fresh_connections = 0

    def send_task(self, name: str, args: list[Any], **options: Any) -> str:
        self.calls.append({"name": name, "args": args, **options})
        if len(self.calls) == 1 and self.kombu:
            _scope["closed_channel_put"]()
        if len(self.calls) == 1 and self.fail_with is not None:
            raise self.fail_with
        return str(options["task_id"])

    @contextmanager
    def connection_for_write(self) -> Any:
        self.fresh_connections += 1
        yield f"connection-{self.fresh_connections}"


def test_a_plain_send_goes_once_with_a_task_id_made_for_it() -> None:
    app = App()
    task_id = publish.send_task(app, "t", [1], queue="q")  # type: ignore[arg-type]
    assert len(app.calls) == 1 and app.calls[0]["queue"] == "q"
    assert task_id == app.calls[0]["task_id"] and len(task_id) == 36


def test_a_channel_closed_under_the_producer_is_sent_again_fresh_under_the_same_id() -> None:
    app = App(kombu=True)
    task_id = publish.send_task(app, "t", [1], task_id="abc", queue="q")  # type: ignore[arg-type]
    assert task_id == "abc"
    first, second = app.calls
    assert first["task_id"] == second["task_id"] == "abc"
    assert "connection" not in first and second["connection"] == "connection-1"
    assert second["queue"] == "q" and second["args"] == [1]


def test_an_attribute_error_of_our_own_is_not_hidden() -> None:
    app = App(fail_with=AttributeError("a bug of ours"))
    with pytest.raises(AttributeError, match="a bug of ours"):
        publish.send_task(app, "t", [])  # type: ignore[arg-type]
    assert len(app.calls) == 1 and app.fresh_connections == 0


def test_from_kombu_reads_the_innermost_frame() -> None:
    try:
        _scope["closed_channel_put"]()
    except AttributeError as exc:
        assert publish.from_kombu(exc)
    assert not publish.from_kombu(AttributeError("never raised"))
