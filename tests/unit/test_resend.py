"""Sending a task again after a restarted Redis broker lost its message (fakeredis)."""

from __future__ import annotations

import json
import socket
from typing import Any

import fakeredis
import pytest
from kombu.exceptions import OperationalError
from redis.exceptions import ResponseError

from orchestrator.client import resend
from orchestrator.client.resend import LostMessages, Sent
from orchestrator.state.redis_conn import broker_probe


class Broker(fakeredis.FakeRedis):
    """fakeredis whose INFO reports a settable run_id, or refuses like an ACL would."""

    run_id = "first"
    refuse = False

    def info(self, section: Any = None, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self.refuse:
            raise ResponseError("NOPERM this user has no permissions to run the 'info' command")
        return {"run_id": self.run_id}


class Result:
    def __init__(self, task_id: str, state: str = "PENDING") -> None:
        self.id = task_id
        self.state = state


class App:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], dict[str, Any]]] = []
        self.failures = 0

    def send_task(self, name: str, args: list[Any], **options: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.sent.append((name, args, options))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def message(task_id: str) -> str:
    return json.dumps({"body": "", "headers": {"id": task_id, "task": "t"}, "properties": {}})


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resend, "CHECK_EVERY_SECONDS", 0.0)
    monkeypatch.setattr(resend, "CONFIRM_AFTER_SECONDS", 0.0)


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def app() -> App:
    return App()


def sent_task(lost: LostMessages, state: str = "PENDING") -> Sent:
    return Sent(
        name="orchestrator.tools.execute",
        args=[{"tool_name": "t"}],
        options={"queue": "tools", "argsrepr": "[...]"},
        async_result=Result("task-1", state),  # type: ignore[arg-type]
        queues=("tools",),
        epoch=lost.epoch(),
    )


def test_nothing_is_read_or_sent_while_the_broker_is_the_same_process(broker, app):
    lost = LostMessages(app, broker)  # type: ignore[arg-type]
    sent = sent_task(lost)

    assert lost.check(sent) is False
    assert app.sent == []


def test_a_task_the_restarted_broker_lost_is_sent_again_under_its_id(broker, app):
    lost = LostMessages(app, broker)  # type: ignore[arg-type]
    sent = sent_task(lost)
    broker.run_id = "second"

    assert lost.check(sent) is True
    assert app.sent == [
        (
            "orchestrator.tools.execute",
            [{"tool_name": "t"}],
            {"task_id": "task-1", "queue": "tools", "argsrepr": "[...]"},
        )
    ]
    assert sent.epoch == "second"
    assert lost.check(sent) is False  # once per restart
    assert len(app.sent) == 1


def test_a_task_still_queued_or_being_delivered_is_not_sent_again(broker, app):
    lost = LostMessages(app, broker)  # type: ignore[arg-type]
    queued, delivered = sent_task(lost), sent_task(lost)
    broker.lpush("tools", message("other"), message("task-1"))
    broker.run_id = "second"
    assert lost.check(queued) is False

    broker.delete("tools")
    broker.hset("unacked", "tag", json.dumps([json.loads(message("task-1")), "tools", "tools"]))
    broker.run_id = "third"
    assert lost.check(delivered) is False
    assert app.sent == []
    assert (queued.epoch, delivered.epoch) == ("second", "third")


def test_a_task_with_a_state_is_not_sent_again(broker, app):
    lost = LostMessages(app, broker)  # type: ignore[arg-type]
    sent = sent_task(lost, state="RUNNING")
    broker.run_id = "second"

    assert lost.check(sent) is False
    assert app.sent == []


def test_garbage_in_the_queues_is_skipped(broker, app):
    lost = LostMessages(app, broker)  # type: ignore[arg-type]
    sent = sent_task(lost)
    broker.lpush("tools", "not json", json.dumps({"headers": None}), json.dumps([1]))
    broker.hset("unacked", "tag", "[]")
    broker.run_id = "second"

    assert lost.check(sent) is True


def test_checks_are_spaced(broker, app, monkeypatch):
    monkeypatch.setattr(resend, "CHECK_EVERY_SECONDS", 3600.0)
    lost = LostMessages(app, broker)  # type: ignore[arg-type]
    sent = sent_task(lost)
    broker.run_id = "second"

    assert lost.check(sent) is False  # too soon after the send
    assert app.sent == []


def test_a_broker_that_refuses_info_turns_the_checks_off(broker, app):
    broker.refuse = True
    lost = LostMessages(app, broker)  # type: ignore[arg-type]
    sent = sent_task(lost)

    assert (lost.enabled, sent.epoch) == (False, "")
    assert lost.check(sent) is False
    assert app.sent == []


def test_an_unreachable_broker_is_asked_again_at_the_next_check(app):
    down = broker_probe(f"redis://127.0.0.1:{closed_port()}/0")  # refused at once
    lost = LostMessages(app, down)  # type: ignore[arg-type]
    sent = sent_task(lost)

    assert (lost.enabled, sent.epoch) == (True, "")
    assert lost.check(sent) is False
    assert app.sent == []


def test_a_send_that_fails_is_tried_again_at_the_next_check(broker, app):
    lost = LostMessages(app, broker)  # type: ignore[arg-type]
    sent = sent_task(lost)
    broker.run_id = "second"
    app.failures = 1

    assert lost.check(sent) is False
    assert (app.sent, sent.epoch) == ([], "first")
    assert lost.check(sent) is True
    assert len(app.sent) == 1 and sent.epoch == "second"


def test_a_task_queued_with_a_priority_is_not_sent_again(broker, app):
    lost = LostMessages(app, broker)  # type: ignore[arg-type]
    sent = sent_task(lost)
    broker.lpush("tools\x06\x166", message("task-1"))  # kombu's list for priority step 6
    broker.run_id = "second"

    assert lost.check(sent) is False
    assert app.sent == []
