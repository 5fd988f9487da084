"""Files in and out of containers, against raw docker-py in the same run (interleaved).

- relic files: a 10 MB file put then got back through the client (``put_files`` +
  ``get_files``, via Celery, the worker and the engine's archive API) vs raw docker-py
  ``put_archive`` + ``get_archive`` of the same bytes into the same container
  (target <= 1.5x);
- tool files: a tool run with 1 MB of input files and 1 MB collected (fetched by the
  client) vs the same run without files plus the raw ``put_archive`` + ``get_archive`` of
  1 MB each into a fresh created container, as a tool's is (target <= 1.15x).

Medians over ``--rounds`` rounds, each round running both sides back to back.
Needs Redis and the Docker engine (``make setup``); starts its own worker.
Usage: ``python bench/bench_files.py [--rounds 9]``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator import OrchestratorClient, Settings  # noqa: E402
from orchestrator.models import FileContent  # noqa: E402
from tests.integration.harness import TEST_IMAGE, WorkerProcess, settings_env  # noqa: E402

MB = 1024 * 1024
SERVE = "mkdir -p /www /tmp && echo ok > /www/health && exec httpd -f -p 8000 -h /www"
TOOL = "mkdir -p /out && head -c 1048576 /dev/urandom > /out/o.bin"


def tar_of(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def raw_put_get(api: Any, container: str, path: str, data: bytes) -> float:
    """Raw docker-py: put ``data`` at ``path``, read it back; seconds."""
    started = time.perf_counter()
    api.put_archive(container, os.path.dirname(path), tar_of(os.path.basename(path), data))
    chunks, _ = api.get_archive(container, path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        member = tar.next()
        handle = tar.extractfile(member) if member is not None else None
        assert handle is not None and handle.read() == data
    return time.perf_counter() - started


def timed(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def tool_request(with_files: bool, data: bytes) -> dict[str, Any]:
    request: dict[str, Any] = {
        "tool_name": "bench-files",
        "session_id": "bench-files",
        "image": TEST_IMAGE,
        "command": ["sh", "-c", TOOL],
        "resource_limits": {"memory_mb": 128, "cpu_limit": 1.0, "pids_limit": 255},
    }
    if with_files:
        request["files"] = [FileContent.of("/in/data.bin", data).model_dump(exclude_none=True)]
        request["collect"] = ["/out/o.bin"]
    return request


def tool_run(client: OrchestratorClient, with_files: bool, data: bytes) -> None:
    result = client.run_tool(tool_request(with_files, data), timeout=120)
    assert result.status == "succeeded", result
    if with_files:
        collected = client.get_collected_file(result.execution_id, "/out/o.bin")
        assert len(collected) == MB


def report(label: str, ours: list[float], raw: list[float], target: float) -> None:
    mine, theirs = statistics.median(ours), statistics.median(raw)
    print(
        f"{label}: orchestrator {mine * 1000:.1f} ms, raw {theirs * 1000:.1f} ms, "
        f"ratio {mine / theirs:.2f} (target <= {target}), median of {len(ours)}"
    )


def relic_files(client: OrchestratorClient, api: Any, rounds: int) -> None:
    session = f"bench-files-{uuid.uuid4().hex[:6]}"
    data = os.urandom(10 * MB)
    ours: list[float] = []
    raw: list[float] = []
    try:  # a start that fails still leaves its session network: cleaned up below
        info = client.start_relic(
            {
                "relic_name": "ws",
                "session_id": session,
                "image": TEST_IMAGE,
                "command": ["sh", "-c", SERVE],
            },
            timeout=60,
        )

        def through_client() -> None:
            client.put_files(info.relic_id, {"/work/big.bin": data})
            assert client.get_files(info.relic_id, ["/work/big.bin"])["/work/big.bin"] == data

        raw_put_get(api, info.container_name, "/tmp/big.bin", data)  # warm both paths
        through_client()
        for _ in range(rounds):
            ours.append(timed(through_client))
            raw.append(raw_put_get(api, info.container_name, "/tmp/big.bin", data))
    finally:
        client.cleanup_session(session)
    report("10 MB put + get", ours, raw, 1.5)


def fresh_put_get(api: Any, data: bytes) -> float:
    """The raw archive calls of a tool run: into a fresh, created (not started) container,
    whose file system the engine mounts for the first time, as for every tool run."""
    box = api.create_container(TEST_IMAGE, ["true"], labels={"bench": "files"})["Id"]
    try:
        return raw_put_get(api, box, "/in.bin", data)
    finally:
        api.remove_container(box, force=True)


def tool_files(client: OrchestratorClient, api: Any, rounds: int) -> None:
    data = os.urandom(MB)
    ours: list[float] = []
    raw: list[float] = []
    tool_run(client, True, data)
    tool_run(client, False, data)
    for _ in range(rounds):
        ours.append(timed(lambda: tool_run(client, True, data)))
        without = timed(lambda: tool_run(client, False, data))
        raw.append(without + fresh_put_get(api, data))
    report("tool run, 1 MB in + 1 MB collected", ours, raw, 1.15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    host = f"bench-{uuid.uuid4().hex[:6]}"
    worker = WorkerProcess(host, Path(tempfile.mkdtemp())).start()
    client = OrchestratorClient(Settings.from_env(settings_env(host)))
    api = docker.from_env().api
    try:
        relic_files(client, api, args.rounds)
        tool_files(client, api, args.rounds)
    finally:
        client.close()
        worker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
