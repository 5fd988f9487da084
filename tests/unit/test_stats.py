"""Table-driven tests of :mod:`orchestrator.core.stats` against captured and hand-written payloads,
then the collection on one host (:mod:`orchestrator.worker.collect`) on a FakeEngine.

Every expected number below was worked out by hand from the fixture's raw numbers (the
derivation is in the comment next to it), never by calling the code under test. See
``fixtures/stats/README.md`` for where each payload comes from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core import stats
from orchestrator.core.specs import labels
from orchestrator.core.types import Container, ContainerSpec
from orchestrator.engine.fake import FakeEngine, FakeProgram
from orchestrator.errors import (
    ContainerNotFound,
    DockerUnavailable,
    HostUnavailable,
    InvalidRequest,
    WrongHost,
)
from orchestrator.models import ContainerStats, RelicStartRequest, ToolExecutionResult
from orchestrator.settings import Settings
from orchestrator.state import keys
from orchestrator.worker import collect, relics
from orchestrator.worker.runtime import Runtime

FIXTURES = Path(__file__).parent / "fixtures" / "stats"


def load(name: str) -> dict[str, Any]:
    """One fixture payload, decoded."""
    with (FIXTURES / f"{name}.json").open(encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


@dataclass(frozen=True)
class Case:
    """What every function must return for one fixture."""

    fixture: str
    cpu_percent: float
    cpu_seconds: float
    memory_used: int
    memory_limit: int
    memory_percent: float
    peak_memory: int | None
    network: tuple[int, int]
    block_io: tuple[int, int]


HOST_MEMORY = 25276502016  # memory_stats.limit of every unlimited container on this engine

CASES = [
    Case(
        fixture="v1_idle",
        cpu_percent=0.0,  # total_usage 26287553 == precpu 26287553: cpu_delta 0
        cpu_seconds=0.026287553,  # 26287553 ns
        memory_used=626688,  # usage 634880 - total_inactive_file 8192
        memory_limit=HOST_MEMORY,
        memory_percent=0.0024793304057788815,  # 626688 / 25276502016 * 100
        peak_memory=3821568,
        network=(946, 0),
        block_io=(0, 0),  # io_service_bytes_recursive == []
    ),
    Case(
        fixture="v1_cpu_half",
        # (29521163082 - 29016489808) / (672830000000 - 670820000000) * 2 * 100
        # = 504673274 / 2010000000 * 200
        cpu_percent=50.21624616915423,
        cpu_seconds=29.521163082,
        memory_used=331776,  # usage 331776 - total_inactive_file 0
        memory_limit=HOST_MEMORY,
        memory_percent=0.0013125866854123492,  # 331776 / 25276502016 * 100
        peak_memory=4087808,
        network=(836, 0),
        block_io=(0, 0),
    ),
    Case(
        fixture="v1_old_no_online_cpus",
        # same numbers as v1_cpu_half; online_cpus absent -> len(percpu_usage) == 2
        cpu_percent=50.21624616915423,
        cpu_seconds=29.521163082,
        memory_used=331776,
        memory_limit=HOST_MEMORY,
        memory_percent=0.0013125866854123492,
        peak_memory=4087808,
        network=(836, 0),
        block_io=(0, 0),
    ),
    Case(
        fixture="v1_cpu_one_shot",
        # precpu_stats zeroed (no system_cpu_usage): no previous sample -> 0.0
        cpu_percent=0.0,
        cpu_seconds=40.681848695,
        memory_used=331776,
        memory_limit=HOST_MEMORY,
        memory_percent=0.0013125866854123492,
        peak_memory=4087808,
        network=(906, 0),
        block_io=(0, 0),
    ),
    Case(
        fixture="v1_memory",
        cpu_percent=0.0,  # 353607364 == 353607364
        cpu_seconds=0.353607364,
        memory_used=17416192,  # 45502464 - total_inactive_file 28086272
        memory_limit=67108864,  # -m 64m
        memory_percent=25.9521484375,  # 17416192 / 67108864 * 100
        peak_memory=62316544,
        network=(656, 0),
        block_io=(0, 0),
    ),
    Case(
        fixture="v1_blkio_derived",
        cpu_percent=0.0,
        cpu_seconds=0.353607364,
        memory_used=17416192,
        memory_limit=67108864,
        memory_percent=25.9521484375,
        peak_memory=62316544,
        network=(656, 0),
        # Read 1253376 + Read 45056; Write 8388608 + Write 0; Sync/Async/Discard/Total ignored
        block_io=(1298432, 8388608),
    ),
    Case(
        fixture="v1_network",
        cpu_percent=0.0,  # 72381078 == 72381078
        cpu_seconds=0.072381078,
        memory_used=667648,  # 667648 - 0
        memory_limit=HOST_MEMORY,
        memory_percent=0.002641378144718678,  # 667648 / 25276502016 * 100
        peak_memory=3547136,
        # eth0 (15028483, 24076) + eth1 (6077624, 8880)
        network=(21106107, 32956),
        block_io=(0, 0),
    ),
    Case(
        fixture="v1_network_none",
        cpu_percent=0.0,
        cpu_seconds=0.031452377,
        memory_used=540672,
        memory_limit=HOST_MEMORY,
        memory_percent=0.0021390301540053095,  # 540672 / 25276502016 * 100
        peak_memory=4087808,
        network=(0, 0),  # no "networks" key at all
        block_io=(0, 0),
    ),
    Case(
        fixture="v1_stopped",
        cpu_percent=0.0,
        cpu_seconds=0.0,
        memory_used=0,  # memory_stats == {}
        memory_limit=0,
        memory_percent=0.0,
        peak_memory=None,
        network=(0, 0),
        block_io=(0, 0),  # io_service_bytes_recursive == null
    ),
    Case(
        fixture="v2_busy",
        # (81234567000 - 80734012000) / (4231570000000 - 4227560000000) * 4 * 100
        # = 500555000 / 4010000000 * 400
        cpu_percent=49.93067331670823,
        cpu_seconds=81.234567,
        memory_used=115343360,  # 157286400 - inactive_file 41943040 (= 110 MiB)
        memory_limit=536870912,
        memory_percent=21.484375,  # 115343360 / 536870912 * 100
        peak_memory=None,  # cgroup v2: no max_usage
        network=(2097152, 524288),
        block_io=(11534336, 4194304),  # read 10485760 + 1048576; write 4194304 + 0
    ),
    Case(
        fixture="v2_idle_no_network",
        cpu_percent=0.0,  # 18762000 == 18762000
        cpu_seconds=0.018762,
        memory_used=1261568,  # 2314240 - inactive_file 1052672
        memory_limit=8341630976,
        memory_percent=0.015123757016220228,  # 1261568 / 8341630976 * 100
        peak_memory=None,
        network=(0, 0),
        block_io=(0, 0),  # io_service_bytes_recursive == null
    ),
]


def test_every_fixture_has_a_case() -> None:
    on_disk = {path.stem for path in FIXTURES.glob("*.json")}
    assert on_disk == {case.fixture for case in CASES}


def by_fixture(case: Case) -> str:
    return case.fixture


@pytest.mark.parametrize("case", CASES, ids=by_fixture)
def test_cpu_percent(case: Case) -> None:
    assert stats.cpu_percent(load(case.fixture)) == pytest.approx(case.cpu_percent, abs=1e-9)


@pytest.mark.parametrize("case", CASES, ids=by_fixture)
def test_cpu_total_seconds(case: Case) -> None:
    assert stats.cpu_total_seconds(load(case.fixture)) == pytest.approx(case.cpu_seconds)


@pytest.mark.parametrize("case", CASES, ids=by_fixture)
def test_memory(case: Case) -> None:
    raw = load(case.fixture)
    assert stats.memory_used_bytes(raw) == case.memory_used
    assert stats.memory_limit_bytes(raw) == case.memory_limit
    assert stats.memory_percent(raw) == pytest.approx(case.memory_percent, abs=1e-12)
    assert stats.peak_memory_bytes(raw) == case.peak_memory


@pytest.mark.parametrize("case", CASES, ids=by_fixture)
def test_network_bytes(case: Case) -> None:
    assert stats.network_bytes(load(case.fixture)) == case.network


@pytest.mark.parametrize("case", CASES, ids=by_fixture)
def test_block_io_bytes(case: Case) -> None:
    assert stats.block_io_bytes(load(case.fixture)) == case.block_io


@pytest.mark.parametrize("case", CASES, ids=by_fixture)
def test_return_types(case: Case) -> None:
    raw = load(case.fixture)
    assert type(stats.cpu_percent(raw)) is float
    assert type(stats.memory_used_bytes(raw)) is int
    assert type(stats.memory_limit_bytes(raw)) is int
    assert type(stats.memory_percent(raw)) is float
    assert all(type(n) is int for n in (*stats.network_bytes(raw), *stats.block_io_bytes(raw)))


# --- summarize ------------------------------------------------------------------------------

NOW = datetime(2026, 11, 28, 14, 0, 0, tzinfo=UTC)

SUMMARIES = [
    pytest.param(
        "v1_cpu_half",
        {"status": "running", "started_at": NOW - timedelta(seconds=90.5)},
        {
            "cpu_percent": 50.22,  # 50.2162...
            "memory_used_mb": 0.316,  # 331776 / 1048576 = 0.31640625
            "memory_limit_mb": 24105.551,  # 25276502016 / 1048576 = 24105.55078125
            "memory_percent": 0.0,  # 0.0013...
            "network_rx_mb": 0.001,  # 836 / 1048576 = 0.000797...
            "network_tx_mb": 0.0,
            "disk_read_mb": 0.0,
            "disk_write_mb": 0.0,
            "running_seconds": 90.5,
        },
        id="v1_cpu_half",
    ),
    pytest.param(
        "v1_memory",
        {"status": "running", "started_at": NOW - timedelta(minutes=2)},
        {
            "cpu_percent": 0.0,
            "memory_used_mb": 16.609,  # 17416192 / 1048576 = 16.609375
            "memory_limit_mb": 64.0,
            "memory_percent": 25.95,  # 25.9521484375
            "network_rx_mb": 0.001,  # 656 / 1048576 = 0.000626...
            "network_tx_mb": 0.0,
            "disk_read_mb": 0.0,
            "disk_write_mb": 0.0,
            "running_seconds": 120.0,
        },
        id="v1_memory",
    ),
    pytest.param(
        "v1_network",
        {"status": "running", "started_at": None},
        {
            "cpu_percent": 0.0,
            "memory_used_mb": 0.637,  # 667648 / 1048576 = 0.63671875
            "memory_limit_mb": 24105.551,
            "memory_percent": 0.0,
            "network_rx_mb": 20.128,  # 21106107 / 1048576 = 20.12835...
            "network_tx_mb": 0.031,  # 32956 / 1048576 = 0.031429...
            "disk_read_mb": 0.0,
            "disk_write_mb": 0.0,
            "running_seconds": 0.0,  # start time unknown
        },
        id="v1_network",
    ),
    pytest.param(
        "v1_stopped",
        {"status": "exited", "started_at": NOW - timedelta(hours=1)},
        {
            "cpu_percent": 0.0,
            "memory_used_mb": 0.0,
            "memory_limit_mb": 0.0,
            "memory_percent": 0.0,
            "network_rx_mb": 0.0,
            "network_tx_mb": 0.0,
            "disk_read_mb": 0.0,
            "disk_write_mb": 0.0,
            "running_seconds": 0.0,  # not running
        },
        id="v1_stopped",
    ),
    pytest.param(
        "v1_blkio_derived",
        {"status": "running", "started_at": NOW},
        {
            "cpu_percent": 0.0,
            "memory_used_mb": 16.609,
            "memory_limit_mb": 64.0,
            "memory_percent": 25.95,
            "network_rx_mb": 0.001,
            "network_tx_mb": 0.0,
            "disk_read_mb": 1.238,  # 1298432 / 1048576 = 1.23828125
            "disk_write_mb": 8.0,  # 8388608 / 1048576
            "running_seconds": 0.0,
        },
        id="v1_blkio_derived",
    ),
    pytest.param(
        "v2_busy",
        {"status": "running", "started_at": NOW - timedelta(seconds=3600.25)},
        {
            "cpu_percent": 49.93,  # 49.9306...
            "memory_used_mb": 110.0,  # 115343360 / 1048576
            "memory_limit_mb": 512.0,
            "memory_percent": 21.48,  # 21.484375
            "network_rx_mb": 2.0,
            "network_tx_mb": 0.5,
            "disk_read_mb": 11.0,  # 11534336 / 1048576
            "disk_write_mb": 4.0,
            "running_seconds": 3600.25,
        },
        id="v2_busy",
    ),
    pytest.param(
        "v2_idle_no_network",
        {"status": "running", "started_at": NOW - timedelta(seconds=5)},
        {
            "cpu_percent": 0.0,
            "memory_used_mb": 1.203,  # 1261568 / 1048576 = 1.203125
            "memory_limit_mb": 7955.199,  # 8341630976 / 1048576 = 7955.19921875
            "memory_percent": 0.02,  # 0.01512...
            "network_rx_mb": 0.0,
            "network_tx_mb": 0.0,
            "disk_read_mb": 0.0,
            "disk_write_mb": 0.0,
            "running_seconds": 5.0,
        },
        id="v2_idle_no_network",
    ),
]


@pytest.mark.parametrize(("fixture", "state", "expected"), SUMMARIES)
def test_summarize(fixture: str, state: dict[str, Any], expected: dict[str, float]) -> None:
    result = stats.summarize(
        load(fixture),
        container_id="abc123",
        name=f"/{fixture}",
        status=state["status"],
        started_at=state["started_at"],
        now=NOW,
        kind="tool",
        session_id="s-1",
        host="worker-a",
    )
    assert isinstance(result, ContainerStats)
    assert result.model_dump() == {
        "container_id": "abc123",
        "name": f"/{fixture}",
        "status": state["status"],
        "kind": "tool",
        "session_id": "s-1",
        "host": "worker-a",
        **expected,
    }


def test_summarize_defaults_and_empty_payload() -> None:
    result = stats.summarize(
        {}, container_id="c", name="n", status="created", started_at=None, now=NOW
    )
    assert result == ContainerStats(container_id="c", name="n", status="created")


@pytest.mark.parametrize(
    ("started_at", "now", "expected"),
    [
        pytest.param(NOW - timedelta(seconds=42), NOW, 42.0, id="aware"),
        pytest.param(datetime(2026, 11, 28, 13, 59), NOW, 60.0, id="naive-start-is-utc"),
        pytest.param(NOW - timedelta(seconds=1), NOW.replace(tzinfo=None), 1.0, id="naive-now"),
        pytest.param(
            datetime(2026, 11, 28, 15, 0, tzinfo=timezone(timedelta(hours=2))),
            NOW,
            3600.0,
            id="other-zone",
        ),
        pytest.param(NOW + timedelta(seconds=3), NOW, 0.0, id="clock-skew-clamped"),
        pytest.param(NOW - timedelta(microseconds=1234567), NOW, 1.235, id="rounded"),
    ],
)
def test_summarize_running_seconds(started_at: datetime, now: datetime, expected: float) -> None:
    result = stats.summarize(
        {}, container_id="c", name="n", status="running", started_at=started_at, now=now
    )
    assert result.running_seconds == expected


# --- edge cases -----------------------------------------------------------------------------


def cpu_payload(
    total: Any, pre_total: Any, system: Any, pre_system: Any, **cpu_stats: Any
) -> dict[str, Any]:
    """A payload holding only CPU counters."""
    return {
        "cpu_stats": {"cpu_usage": {"total_usage": total}, "system_cpu_usage": system, **cpu_stats},
        "precpu_stats": {"cpu_usage": {"total_usage": pre_total}, "system_cpu_usage": pre_system},
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param({}, 0.0, id="empty"),
        pytest.param({"cpu_stats": None, "precpu_stats": None}, 0.0, id="nulls"),
        pytest.param(cpu_payload(100, 100, 2000, 1000, online_cpus=2), 0.0, id="zero-cpu-delta"),
        pytest.param(cpu_payload(200, 100, 1000, 1000, online_cpus=2), 0.0, id="zero-sys-delta"),
        pytest.param(cpu_payload(100, 200, 2000, 1000, online_cpus=2), 0.0, id="counter-reset"),
        pytest.param(cpu_payload(200, 100, 1000, 2000, online_cpus=2), 0.0, id="sys-backwards"),
        pytest.param(cpu_payload(500, 0, 2000, None, online_cpus=2), 0.0, id="no-previous"),
        # 100 / 1000 * 4 * 100
        pytest.param(cpu_payload(200, 100, 2000, 1000, online_cpus=4), 40.0, id="online-4"),
        # online_cpus 0 -> len(percpu_usage) 3: 100 / 1000 * 3 * 100
        pytest.param(
            {
                "cpu_stats": {
                    "cpu_usage": {"total_usage": 200, "percpu_usage": [1, 2, 3]},
                    "system_cpu_usage": 2000,
                    "online_cpus": 0,
                },
                "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 1000},
            },
            30.0,
            id="percpu-fallback",
        ),
        # neither online_cpus nor percpu_usage -> 1: 100 / 1000 * 1 * 100
        pytest.param(cpu_payload(200, 100, 2000, 1000), 10.0, id="one-cpu-fallback"),
        # a non-numeric online_cpus counts as missing -> 1
        pytest.param(cpu_payload(200, 100, 2000, 1000, online_cpus="2"), 10.0, id="junk-online"),
        # old engines sent floats: 1e9 / 4e9 * 2 * 100
        pytest.param(
            cpu_payload(3.0e9, 2.0e9, 3.0881377e14, 3.0881377e14 - 4e9, online_cpus=2),
            50.0,
            id="floats",
        ),
        pytest.param(cpu_payload("200", "100", "2000", "1000"), 0.0, id="strings-ignored"),
    ],
)
def test_cpu_percent_edges(raw: dict[str, Any], expected: float) -> None:
    assert stats.cpu_percent(raw) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("memory_stats", "used", "limit", "percent", "peak"),
    [
        pytest.param(None, 0, 0, 0.0, None, id="null"),
        pytest.param({}, 0, 0, 0.0, None, id="empty"),
        pytest.param({"usage": 1000}, 1000, 0, 0.0, None, id="no-stats-no-limit"),
        pytest.param({"usage": 1000, "stats": None, "limit": 4000}, 1000, 4000, 25.0, None),
        # v1: 1000 - 300
        pytest.param(
            {
                "usage": 1000,
                "limit": 2000,
                "max_usage": 1500,
                "stats": {"total_inactive_file": 300},
            },
            700,
            2000,
            35.0,
            1500,
            id="v1",
        ),
        # v1 with total_inactive_file >= usage falls through to inactive_file (docker CLI)
        pytest.param(
            {
                "usage": 1000,
                "limit": 2000,
                "stats": {"total_inactive_file": 1000, "inactive_file": 200},
            },
            800,
            2000,
            40.0,
            None,
            id="v1-total-too-big",
        ),
        pytest.param(
            {
                "usage": 1000,
                "limit": 2000,
                "stats": {"total_inactive_file": 5000, "inactive_file": 5000},
            },
            1000,
            2000,
            50.0,
            None,
            id="v1-both-too-big",
        ),
        # v2: 1000 - 250
        pytest.param(
            {"usage": 1000, "limit": 1000, "stats": {"inactive_file": 250, "anon": 750}},
            750,
            1000,
            75.0,
            None,
            id="v2",
        ),
        pytest.param(
            {"usage": 1000, "limit": 1000, "stats": {"inactive_file": 1000}},
            1000,
            1000,
            100.0,
            None,
            id="v2-inactive-equals-usage",
        ),
        pytest.param(
            {"usage": None, "limit": None, "max_usage": None, "stats": {"inactive_file": 10}},
            0,
            0,
            0.0,
            None,
            id="null-values",
        ),
    ],
)
def test_memory_edges(
    memory_stats: Any, used: int, limit: int, percent: float, peak: int | None
) -> None:
    raw = {"memory_stats": memory_stats}
    assert stats.memory_used_bytes(raw) == used
    assert stats.memory_limit_bytes(raw) == limit
    assert stats.memory_percent(raw) == pytest.approx(percent)
    assert stats.peak_memory_bytes(raw) == peak


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param({}, (0, 0), id="missing"),
        pytest.param({"networks": None}, (0, 0), id="null"),
        pytest.param({"networks": {}}, (0, 0), id="empty"),
        pytest.param({"networks": {"eth0": None}}, (0, 0), id="null-interface"),
        pytest.param({"networks": {"eth0": {"rx_bytes": 5}}}, (5, 0), id="partial"),
        pytest.param(
            {
                "networks": {
                    "eth0": {"rx_bytes": 1, "tx_bytes": 2},
                    "eth1": {"rx_bytes": 10, "tx_bytes": 20},
                    "eth2": {"rx_bytes": 100, "tx_bytes": 200},
                }
            },
            (111, 222),
            id="three-interfaces",
        ),
    ],
)
def test_network_edges(raw: dict[str, Any], expected: tuple[int, int]) -> None:
    assert stats.network_bytes(raw) == expected


def blkio(op: Any, value: Any) -> dict[str, Any]:
    return {"major": 8, "minor": 0, "op": op, "value": value}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param({}, (0, 0), id="missing"),
        pytest.param({"blkio_stats": None}, (0, 0), id="null-blkio"),
        pytest.param({"blkio_stats": {}}, (0, 0), id="empty-blkio"),
        pytest.param({"blkio_stats": {"io_service_bytes_recursive": None}}, (0, 0), id="null"),
        pytest.param({"blkio_stats": {"io_service_bytes_recursive": []}}, (0, 0), id="empty"),
        pytest.param(
            {
                "blkio_stats": {
                    "io_service_bytes_recursive": [
                        blkio("Read", 1),
                        blkio("READ", 2),
                        blkio("read", 4),
                        blkio("Write", 10),
                        blkio("write", 20),
                        blkio("Sync", 1000),
                        blkio("Async", 1000),
                        blkio("Total", 1000),
                        blkio("Discard", 1000),
                        blkio(None, 1000),
                        blkio("Read", None),
                        None,
                    ]
                }
            },
            (7, 30),
            id="case-insensitive",
        ),
    ],
)
def test_block_io_edges(raw: dict[str, Any], expected: tuple[int, int]) -> None:
    assert stats.block_io_bytes(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param({}, 0.0, id="empty"),
        pytest.param({"cpu_stats": {"cpu_usage": None}}, 0.0, id="null"),
        pytest.param({"cpu_stats": {"cpu_usage": {"total_usage": 1_500_000_000}}}, 1.5, id="1.5s"),
    ],
)
def test_cpu_total_seconds_edges(raw: dict[str, Any], expected: float) -> None:
    assert stats.cpu_total_seconds(raw) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(0, 0.0, id="zero"),
        pytest.param(1048576, 1.0, id="one"),
        pytest.param(1572864, 1.5, id="one-and-a-half"),
        pytest.param(1049100, 1.0, id="rounded-down"),  # 1.0004997...
        pytest.param(1049101, 1.001, id="rounded-up"),  # 1.0005006...
    ],
)
def test_bytes_to_mb(value: int, expected: float) -> None:
    assert stats.bytes_to_mb(value) == expected


# --- parse_docker_time ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="none"),
        pytest.param("", None, id="empty"),
        pytest.param("0001-01-01T00:00:00Z", None, id="go-zero-time"),
        pytest.param(
            "2026-11-28T13:58:01.123456789Z",
            datetime(2026, 11, 28, 13, 58, 1, 123456, tzinfo=UTC),
            id="nanoseconds-truncated",
        ),
        pytest.param(
            "2026-11-28T13:45:43.19101766Z",
            datetime(2026, 11, 28, 13, 45, 43, 191017, tzinfo=UTC),
            id="eight-digits",
        ),
        pytest.param(
            "2026-11-28T13:45:43.5Z",
            datetime(2026, 11, 28, 13, 45, 43, 500000, tzinfo=UTC),
            id="one-digit",
        ),
        pytest.param(
            "2026-11-28T13:45:43.999999999Z",
            datetime(2026, 11, 28, 13, 45, 43, 999999, tzinfo=UTC),
            id="no-rounding-into-next-second",
        ),
        pytest.param(
            "2026-11-28T13:45:43Z", datetime(2026, 11, 28, 13, 45, 43, tzinfo=UTC), id="no-fraction"
        ),
        pytest.param(
            "2015-05-07T19:30:48.165009273+05:30",
            datetime(2015, 5, 7, 14, 0, 48, 165009, tzinfo=UTC),
            id="offset",
        ),
        pytest.param(
            "2026-11-28T13:45:43-0200",
            datetime(2026, 11, 28, 15, 45, 43, tzinfo=UTC),
            id="offset-without-colon",
        ),
        pytest.param(
            "2026-11-28T13:45:43.25",
            datetime(2026, 11, 28, 13, 45, 43, 250000, tzinfo=UTC),
            id="naive",
        ),
    ],
)
def test_parse_docker_time(value: str | None, expected: datetime | None) -> None:
    parsed = stats.parse_docker_time(value)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is UTC


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01T00:00:00Z", "2026-11-28", "12:00:00Z"])
def test_parse_docker_time_rejects_garbage(value: str) -> None:
    with pytest.raises(ValueError):
        stats.parse_docker_time(value)


@pytest.mark.parametrize(
    ("fixture", "read", "preread"),
    [
        pytest.param(
            "v1_cpu_half",
            datetime(2026, 11, 28, 13, 45, 46, 203366, tzinfo=UTC),
            datetime(2026, 11, 28, 13, 45, 45, 199616, tzinfo=UTC),  # ".19961616Z"
            id="v1_cpu_half",
        ),
        pytest.param(
            "v1_cpu_one_shot",
            datetime(2026, 11, 28, 13, 46, 8, 516553, tzinfo=UTC),
            None,  # one_shot: no previous sample
            id="v1_cpu_one_shot",
        ),
        pytest.param("v1_stopped", None, None, id="v1_stopped"),
    ],
)
def test_parse_fixture_times(fixture: str, read: datetime | None, preread: datetime | None) -> None:
    raw = load(fixture)
    assert stats.parse_docker_time(raw["read"]) == read
    assert stats.parse_docker_time(raw["preread"]) == preread


def test_public_api() -> None:
    assert sorted(stats.__all__) == [
        "block_io_bytes",
        "bytes_to_mb",
        "cpu_percent",
        "cpu_total_seconds",
        "memory_limit_bytes",
        "memory_percent",
        "memory_used_bytes",
        "network_bytes",
        "parse_docker_time",
        "peak_memory_bytes",
        "summarize",
    ]


# --- collecting on one host: orchestrator.worker.collect on a FakeEngine ---------------------

SETTINGS = Settings.from_env({}, host_name="h1")
#: An image whose containers run until stopped, each using 8 MiB (busybox:latest exits at once).
SLEEPER = "sleeper:latest"
MIB = 1024 * 1024
LATER = 1_900_000_000.0


@pytest.fixture
def rt(redis, engine: FakeEngine) -> Runtime:
    engine.add_image(SLEEPER, FakeProgram(run_seconds=None, memory_bytes=8 * MIB))
    return Runtime(SETTINGS, redis, engine=engine)


def container(
    engine: FakeEngine,
    name: str,
    *,
    session: str = "s1",
    kind: str = "tool",
    host: str = "h1",
    running: bool = True,
    managed: bool = True,
    memory_mb: int | None = None,
) -> Container:
    """A started container: running (8 MiB in use), or already exited."""
    tags = labels(kind, session, LATER, host) if managed else {}
    spec = ContainerSpec(
        name=name,
        image=SLEEPER if running else "busybox:latest",
        labels=tags,
        memory_mb=memory_mb,
    )
    created = engine.create_container(spec)
    engine.start_container(created.id)
    return engine.inspect_container(created.id)


def test_host_stats_sample_the_running_managed_containers_of_this_host(rt, engine):
    relic = container(engine, "orch-relic-s1-db", kind="relic", memory_mb=256)
    running = container(engine, "orch-tool-e1")
    container(engine, "orch-tool-e0", running=False)
    first = container(engine, "orch-tool-e9", session="s0")
    container(engine, "orch-tool-elsewhere", host="h2")
    container(engine, "stranger", managed=False)

    found = collect.host_stats(rt)

    assert [s.name for s in found] == [
        "orch-tool-e9",  # session s0 first, then by kind and name
        "orch-relic-s1-db",
        "orch-tool-e0",
        "orch-tool-e1",
    ]
    by_name = {s.name: s for s in found}
    assert by_name["orch-relic-s1-db"].memory_used_mb == 8.0  # 8 MiB in use
    assert by_name["orch-relic-s1-db"].memory_limit_mb == 256.0
    assert by_name["orch-relic-s1-db"].kind == "relic"
    assert by_name["orch-tool-e1"].memory_used_mb == 8.0
    assert by_name["orch-tool-e1"].status == "running"
    assert by_name["orch-tool-e1"].container_id == running.id
    stopped = by_name["orch-tool-e0"]
    assert (stopped.status, stopped.memory_used_mb, stopped.running_seconds) == ("exited", 0, 0)
    assert {(s.host, s.session_id) for s in found} == {("h1", "s0"), ("h1", "s1")}
    sampled = sorted(ref for (ref,) in engine.called("container_stats"))
    assert sampled == sorted([relic.id, running.id, first.id])  # never the exited one


def test_host_stats_leave_out_containers_that_vanish_while_listed_or_sampled(rt, engine):
    container(engine, "orch-tool-a", running=False)
    listed_away = container(engine, "orch-tool-b")
    container(engine, "orch-tool-c")  # the only one sampled: it vanishes meanwhile
    vanish = [listed_away.id]

    def remove_one() -> None:  # between the engine's listing and its inspections
        if vanish:
            engine.remove_container(vanish.pop())

    engine.on_list = remove_one
    engine.fail_next("container_stats", ContainerNotFound("read stats of orch-tool-c: gone"))

    found = collect.host_stats(rt)

    assert vanish == []
    assert [s.name for s in found] == ["orch-tool-a"]


@pytest.mark.parametrize(
    "empty_answer",
    [
        pytest.param(ValueError("Expecting value: line 1 column 1 (char 0)"), id="undecodable"),
        pytest.param({}, id="empty"),
    ],
)
def test_a_container_that_stops_while_sampled_is_reported_stopped_with_zeros(
    rt, engine, monkeypatch, empty_answer
):
    """The engine answers 200 with an empty body when the container stops meanwhile."""
    stopping = container(engine, "orch-tool-e1")

    def stopped_meanwhile(ref: str) -> dict[str, Any]:
        engine.kill_container(ref)
        if isinstance(empty_answer, Exception):
            raise empty_answer
        return empty_answer

    monkeypatch.setattr(engine, "container_stats", stopped_meanwhile)

    [found] = collect.host_stats(rt)

    assert found.container_id == stopping.id
    assert (found.status, found.memory_used_mb, found.running_seconds) == ("exited", 0, 0)


def test_an_engine_failure_is_a_host_error_not_an_exception(rt, engine):
    engine.fail_next("list_containers", DockerUnavailable("list containers: engine unreachable"))

    report = collect.host_report(rt)

    assert report.model_dump() == {
        "host": "h1",
        "containers": [],
        "errors": ["list containers: engine unreachable"],
    }


def test_a_container_is_found_by_name_id_relic_id_or_execution_id(rt, engine):
    relic = container(engine, "orch-relic-s1-db", kind="relic")
    tool = container(engine, "orch-tool-e1")
    request = RelicStartRequest(session_id="s1", relic_name="db", image="busybox:latest")
    relics._register(rt, "r1", request, "orch-relic-s1-db")
    rt.executions.start("e1", {"host": "h1", "container_id": tool.id})

    assert collect.find_container(rt, "orch-relic-s1-db").id == relic.id
    assert collect.find_container(rt, relic.id).id == relic.id
    assert collect.find_container(rt, relic.id[:12]).id == relic.id
    assert collect.find_container(rt, "r1").id == relic.id
    assert collect.find_container(rt, "e1").id == tool.id
    assert collect.stats_for(rt, "e1").name == "orch-tool-e1"


def test_only_managed_containers_are_found(rt, engine):
    container(engine, "stranger", managed=False)

    with pytest.raises(ContainerNotFound, match="no managed container 'stranger' on host h1"):
        collect.stats_for(rt, "stranger")
    with pytest.raises(ContainerNotFound, match="no managed container 'nothing'"):
        collect.stats_for(rt, "nothing")
    with pytest.raises(InvalidRequest, match="container:"):
        collect.stats_for(rt, "../etc")


def test_an_execution_without_a_container_says_why(rt, engine):
    rt.executions.start("e-pulling", {"host": "h1"})
    rt.executions.start("e-done", {"host": "h1"})
    done = ToolExecutionResult(
        execution_id="e-done", tool_name="t", session_id="s1", status="succeeded"
    )
    rt.executions.finish(done)

    with pytest.raises(ContainerNotFound, match="has no container yet"):
        collect.stats_for(rt, "e-pulling")
    with pytest.raises(ContainerNotFound, match=r"finished \(succeeded\) .*removed"):
        collect.stats_for(rt, "e-done")


def test_a_relic_on_another_host_is_forwarded_or_unavailable(rt, redis):
    request = RelicStartRequest(session_id="s1", relic_name="db", image="busybox:latest")
    relics._register(rt, "r1", request, "orch-relic-s1-db")
    redis.hset(keys.relic("r1"), "host", "h2")

    with pytest.raises(HostUnavailable, match="'h2', which has no live worker"):
        collect.stats_for(rt, "r1")
    rt.hosts.beat("h2", {})
    with pytest.raises(WrongHost) as raised:
        collect.stats_for(rt, "r1")
    assert raised.value.owner == "h2"


def test_aggregate_sums_per_session_and_overall_with_the_run_metrics(redis):
    def one(name: str, session: str, status: str, memory: float, host: str) -> ContainerStats:
        return ContainerStats(
            container_id=name,
            name=name,
            status=status,
            memory_used_mb=memory,
            cpu_percent=10.0,
            session_id=session,
            host=host,
        )

    replies = [
        collect.HostStats(host="h2", containers=[one("c", "s2", "running", 3.0, "h2")]),
        collect.HostStats(
            host="h1",
            containers=[one("a", "s1", "running", 1.5, "h1"), one("b", "s1", "exited", 0, "h1")],
            errors=["list containers: slow"],
        ).model_dump(mode="json"),
    ]
    for seconds in (1.0, 2.0, 6.0):
        redis.lpush(keys.METRICS_DURATIONS, seconds)
    redis.hset(keys.METRICS_BY_STATUS, "succeeded", 3)
    redis.hset(keys.METRICS_BY_TOOL, "t", 3)

    overview = collect.aggregate(replies, redis)

    assert [c.name for c in overview.containers] == ["a", "b", "c"]  # by host, session, name
    assert overview.sessions["s1"]["containers"] == 2
    assert overview.sessions["s1"]["running"] == 1
    assert overview.sessions["s1"]["memory_used_mb"] == 1.5
    assert overview.sessions["s1"]["cpu_percent"] == 20.0
    assert overview.totals["containers"] == 3
    assert overview.totals["memory_used_mb"] == 4.5
    assert overview.totals["durations_sampled"] == 3
    assert overview.totals["duration_mean_seconds"] == 3.0  # (1 + 2 + 6) / 3
    assert overview.totals["duration_p95_seconds"] == 6.0  # nearest rank: ceil(0.95 * 3) = 3rd
    assert overview.executions_by_status == {"succeeded": 3}
    assert overview.executions_by_tool == {"t": 3}
    assert overview.hosts == ["h1", "h2"]
    assert overview.errors == ["h1: list containers: slow"]
