"""Behaviour of relic helpers without an engine: the HTTP health probe against a real local
server, container and volume names, and waiting for health on a fake container."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.errors import RelicExited, RelicUnhealthy
from orchestrator.models import RelicStartRequest
from orchestrator.worker.relics import probe, relic_container_name, volume_name, wait_healthy
from tests.unit.fakes import FakeContainer

ROUTES = {"/health": 200, "/ready": 204, "/moved": 302, "/missing": 404, "/broken": 500}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        status = ROUTES.get(self.path.split("?")[0], 404)
        body = b"ok" if status < 300 else b""
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/health")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return None


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


# -- probe -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "healthy"),
    [
        ("/health", True),
        ("/ready", True),
        ("/moved", True),
        ("/missing", False),
        ("/broken", False),
    ],
)
def test_probe_is_healthy_for_statuses_below_400(server, path, healthy):
    assert probe("127.0.0.1", server, path) is healthy


def test_probe_of_a_closed_port_is_unhealthy(closed_port):
    assert probe("127.0.0.1", closed_port, "/health") is False


def test_probe_of_a_server_that_never_answers_gives_up_at_its_timeout(silent_port):
    begin = time.monotonic()

    assert probe("127.0.0.1", silent_port, "/health", timeout_seconds=0.2) is False

    assert time.monotonic() - begin < 1.0


# -- names --------------------------------------------------------------------------------


def test_a_relic_container_is_named_from_its_session_and_name():
    assert relic_container_name("s1", "db") == "orch-relic-s1-db"
    assert relic_container_name("s1", "db") != relic_container_name("s2", "db")


def test_a_relic_volume_is_scoped_to_its_session():
    assert volume_name("s1", "data") == "orch-s1-data"
    assert volume_name("s1", "data") != volume_name("s2", "data")


# -- wait_healthy ---------------------------------------------------------------------------


def relic_request(port: int, timeout: float = 5.0, path: str = "/health") -> RelicStartRequest:
    return RelicStartRequest(
        session_id="s1",
        relic_name="db",
        image="busybox:latest",
        port=port,
        health_check_endpoint=path,
        health_timeout_seconds=timeout,
    )


def running_relic(**kwargs) -> FakeContainer:
    kwargs.setdefault("networks", {"session_s1": "127.0.0.1"})
    kwargs.setdefault("run_seconds", None)
    container = FakeContainer("orch-relic-s1-db", **kwargs)
    container.start()
    return container


def test_wait_healthy_returns_the_address_once_the_endpoint_answers(server):
    container = running_relic()

    assert wait_healthy(container, "session_s1", relic_request(server)) == "127.0.0.1"


def test_wait_healthy_uses_the_first_network_when_none_is_named(server):
    container = running_relic(networks={"bridge": "127.0.0.1"})

    assert wait_healthy(container, None, relic_request(server)) == "127.0.0.1"


def test_a_relic_that_exits_while_waited_on_raises_with_its_last_log_lines(closed_port):
    lines = [f"line {i}\n".encode() for i in range(30)]
    container = running_relic(
        run_seconds=0.1, exit_code=3, stdout=lines[:-1], stderr=[b"fatal: no config\n"]
    )
    begin = time.monotonic()

    with pytest.raises(RelicExited) as caught:
        wait_healthy(container, "session_s1", relic_request(closed_port))

    message = str(caught.value)
    assert time.monotonic() - begin < 2
    assert "relic 'db' exited with code 3 before it was healthy" in message
    assert message.rstrip().endswith("fatal: no config")
    assert "line 28" in message
    assert "line 9\n" not in message  # only the last 20 lines


def test_a_relic_whose_endpoint_never_answers_is_unhealthy_after_the_timeout(closed_port):
    container = running_relic(stdout=[b"listening on the wrong port\n"])
    begin = time.monotonic()

    with pytest.raises(RelicUnhealthy) as caught:
        wait_healthy(container, "session_s1", relic_request(closed_port, timeout=0.3))

    elapsed = time.monotonic() - begin
    assert 0.3 <= elapsed < 1.5
    message = str(caught.value)
    assert f"did not answer GET /health on port {closed_port} within 0.3 s" in message
    assert "listening on the wrong port" in message
    assert not container.exited


def test_a_relic_answering_with_an_error_status_is_unhealthy(server):
    container = running_relic()

    with pytest.raises(RelicUnhealthy):
        wait_healthy(container, "session_s1", relic_request(server, timeout=0.3, path="/broken"))


def test_a_relic_without_an_address_on_the_network_is_unhealthy(server):
    container = running_relic(networks={"other": "127.0.0.1"})

    with pytest.raises(RelicUnhealthy):
        wait_healthy(container, "session_s1", relic_request(server, timeout=0.3))
