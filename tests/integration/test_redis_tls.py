"""Redis with a password over TLS (``rediss://``): broker, result backend and registry."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import OrchestratorClient, Settings
from tests.integration.conftest import USED_HOSTS
from tests.integration.harness import TEST_IMAGE, WorkerProcess, have, require

PASSWORD = "s3cret-pw"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _certificates(directory: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=orchestrator-test-ca",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    )


@pytest.fixture(scope="module")
def tls_redis(services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require(have("openssl") and have("redis-server"), "openssl and redis-server (TLS test)")
    directory = tmp_path_factory.mktemp("tls")
    _certificates(directory)
    port = _free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            "server.crt",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.crt",
            "--tls-auth-clients",
            "no",
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = (
        f"rediss://:{PASSWORD}@127.0.0.1:{port}/0"
        f"?ssl_cert_reqs=required&ssl_ca_certs={directory / 'ca.crt'}"
    )
    try:
        import redis

        client = redis.Redis.from_url(url)
        for _ in range(50):
            try:
                client.ping()
                break
            except redis.RedisError:
                time.sleep(0.1)
        require(bool(client.ping()), "redis-server with TLS support")
        yield url
    finally:
        server.terminate()
        server.wait(10)


def test_a_tool_runs_with_broker_backend_and_registry_on_tls_redis_with_a_password(
    tls_redis: str, tmp_path: Path
) -> None:
    host = f"it-tls-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(host)
    env = {"ORCHESTRATOR_BROKER_URL": tls_redis, "ORCHESTRATOR_RESULT_BACKEND": tls_redis}
    worker = WorkerProcess(host, tmp_path, env=env, registry_url=tls_redis).start()
    client = OrchestratorClient(
        Settings.from_env({}, broker_url=tls_redis, result_backend=tls_redis, host_name=host)
    )
    try:
        result = client.run_tool(
            {
                "tool_name": "tls",
                "session_id": "tls",
                "image": TEST_IMAGE,
                "command": ["echo", "over tls"],
            },
            timeout=60,
        )
        assert result.status == "succeeded" and result.stdout == "over tls\n"
        assert client.redis.exists(f"orch:host:{host}")  # the registry is on TLS Redis too
    finally:
        client.close()
        worker.stop()


def test_a_wrong_password_is_refused(tls_redis: str) -> None:
    import redis

    wrong = tls_redis.replace(PASSWORD, "wrong")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(wrong).ping()
