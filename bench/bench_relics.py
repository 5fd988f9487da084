"""Relic readiness, session cleanup and scaling with sessions.

- readiness: time from the relic's HTTP server first answering (polled from here every
  millisecond at the container address) to ``start_relic`` returning; median over N relics.
- cleanup: 10 relics removed with ``force=true``; 10 relics that ignore SIGTERM cleaned
  gracefully (target: one grace period plus 2 s, not ten).
- scale: 100 sessions with one relic each started then cleaned; time per start and per
  cleanup for the first and last tenth, to show they stay flat.

Needs Redis and the Docker engine (``make setup``); starts its own worker.
Usage: ``python bench/bench_relics.py [--sessions 100]``.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator import OrchestratorClient, Settings  # noqa: E402
from tests.integration.harness import TEST_IMAGE, WorkerProcess, settings_env  # noqa: E402

SERVE = "mkdir -p /www && echo ok > /www/health && exec httpd -f -p 8000 -h /www"
STUBBORN = "trap '' TERM; mkdir -p /www && echo ok > /www/health && httpd -f -p 8000 -h /www"


def relic(session_id: str, name: str, script: str = SERVE) -> dict[str, Any]:
    return {
        "relic_name": name,
        "session_id": session_id,
        "image": TEST_IMAGE,
        "command": ["sh", "-c", script],
        "resource_limits": {"memory_mb": 64, "cpu_limit": 0.5},
    }


def _answers(address: str) -> bool:
    connection = http.client.HTTPConnection(address, 8000, timeout=0.2)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def readiness_once(client: OrchestratorClient, engine: Any) -> float:
    """Seconds between the server first answering and start_relic returning."""
    session_id = f"bench-ready-{uuid.uuid4().hex[:6]}"
    name = f"orch-relic-{session_id}-web"
    first_answer: list[float] = []

    def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not first_answer:
            try:
                attrs = engine.api.inspect_container(name)
            except docker.errors.NotFound:
                time.sleep(0.001)
                continue
            for net in (attrs["NetworkSettings"]["Networks"] or {}).values():
                if net.get("IPAddress") and _answers(net["IPAddress"]):
                    first_answer.append(time.monotonic())
                    return
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    client.start_relic(relic(session_id, "web"), timeout=60)
    returned = time.monotonic()
    watcher.join(5)
    client.cleanup_session(session_id)
    return returned - first_answer[0] if first_answer else float("nan")


def timed(function: Any) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readiness-runs", type=int, default=15)
    parser.add_argument("--sessions", type=int, default=100)
    args = parser.parse_args()
    host = f"bench-{uuid.uuid4().hex[:6]}"
    worker = WorkerProcess(host, Path(tempfile.mkdtemp())).start()
    client = OrchestratorClient(Settings.from_env(settings_env(host)))
    engine = docker.from_env()
    try:
        waits = [readiness_once(client, engine) for _ in range(args.readiness_runs)]
        print(
            f"readiness: server answering -> start_relic returned, median "
            f"{statistics.median(waits) * 1000:.1f} ms over {len(waits)} relics (target < 100 ms)"
        )

        for label, script, force, target in (
            ("force cleanup of 10 relics", SERVE, True, "< 2 s"),
            ("graceful cleanup of 10 relics ignoring SIGTERM", STUBBORN, False, "< 12 s"),
        ):
            session_id = f"bench-clean-{uuid.uuid4().hex[:6]}"
            for n in range(10):
                client.start_relic(relic(session_id, f"r{n}", script), timeout=60)
            started = time.perf_counter()
            client.cleanup_session(session_id, force=force, timeout=120)
            seconds = time.perf_counter() - started
            print(f"{label}: {seconds:.2f} s (target {target})")

        ids = [f"bench-scale-{n:03d}-{uuid.uuid4().hex[:4]}" for n in range(args.sessions)]
        starts = [timed(lambda s=s: client.start_relic(relic(s, "svc"), timeout=60)) for s in ids]
        cleans = [timed(lambda s=s: client.cleanup_session(s, timeout=120)) for s in ids]
        tenth = max(1, len(ids) // 10)
        for label, series in (("start", starts), ("cleanup", cleans)):
            first = statistics.median(series[:tenth]) * 1000
            last = statistics.median(series[-tenth:]) * 1000
            print(
                f"{args.sessions} sessions, {label}: first tenth median {first:.0f} ms, "
                f"last tenth median {last:.0f} ms, ratio last/first {last / first:.2f}"
            )
    finally:
        client.close()
        worker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
