"""An in-memory :class:`~orchestrator.engine.base.Engine` for tests (no Docker needed).

It ships with the library, as dramatiq ships ``StubBroker`` and httpx ``MockTransport``:
unit tests of the orchestrator and of code built on it run against it, and the contract
suite (``tests/contract``) runs the same tests against it and a real engine, so its
behaviour cannot drift from Docker's where the orchestrator depends on it.

What a container "runs" is a :class:`FakeProgram`, chosen by image::

    engine = FakeEngine()
    engine.add_image("tool:1", FakeProgram(stdout=b'{"ok": true}\\n', run_seconds=0.05))

A program writes its output at start, then exits with ``exit_code`` after
``run_seconds`` of real time (``None``: runs until stopped or killed). Signals follow
Docker's rules for a container's PID 1 (see :class:`FakeProgram`). ``exec`` and the
``RUN`` steps of a build run :attr:`FakeProgram.on_exec` of the (base) image's program
(default: exit 0, no output). Failures are injected with :meth:`FakeEngine.fail_next`;
:attr:`FakeEngine.on_list` runs between listing and inspecting, to remove objects
mid-list as a real engine may.
"""

from __future__ import annotations

import io
import ipaddress
import itertools
import json
import posixpath
import re
import shlex
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from orchestrator.core import dockerfile as dockerfile_rules
from orchestrator.core.agent import AGENT_ENTRYPOINT, agent_input, new_nonce
from orchestrator.core.archive import TarStream
from orchestrator.core.types import (
    ArchiveStat,
    BuildSpec,
    Chunk,
    Container,
    ContainerSpec,
    ExecSpec,
    Image,
    Network,
    NetworkSpec,
    Stream,
    Volume,
)
from orchestrator.engine.base import Engine
from orchestrator.errors import (
    ContainerConflict,
    ContainerNotFound,
    DockerError,
    DockerUnavailable,
    ImageBuildFailed,
    ImageNotFound,
    NetworkInUse,
    NetworkNotFound,
    PathNotFound,
    VolumeInUse,
    VolumeNotFound,
)

__all__ = ["FakeEngine", "FakeProgram", "FakeExec", "SIGNAL_NUMBERS"]

#: Linux signal numbers; a process ended by signal N exits 128 + N, as Docker reports it.
SIGNAL_NUMBERS = {
    "SIGHUP": 1,
    "SIGINT": 2,
    "SIGQUIT": 3,
    "SIGILL": 4,
    "SIGTRAP": 5,
    "SIGABRT": 6,
    "SIGIOT": 6,
    "SIGBUS": 7,
    "SIGFPE": 8,
    "SIGKILL": 9,
    "SIGUSR1": 10,
    "SIGSEGV": 11,
    "SIGUSR2": 12,
    "SIGPIPE": 13,
    "SIGALRM": 14,
    "SIGTERM": 15,
    "SIGSTKFLT": 16,
    "SIGCHLD": 17,
    "SIGCLD": 17,
    "SIGCONT": 18,
    "SIGSTOP": 19,
    "SIGTSTP": 20,
    "SIGTTIN": 21,
    "SIGTTOU": 22,
    "SIGURG": 23,
    "SIGXCPU": 24,
    "SIGXFSZ": 25,
    "SIGVTALRM": 26,
    "SIGPROF": 27,
    "SIGWINCH": 28,
    "SIGIO": 29,
    "SIGPOLL": 29,
    "SIGPWR": 30,
    "SIGSYS": 31,
}
#: Signals whose default action does not end a process (ignore, stop or continue).
_NOT_FATAL_BY_DEFAULT = {17, 18, 19, 20, 21, 22, 23, 28}
_SIGKILL, _SIGTERM = 9, 15
_PREDEFINED_NETWORKS = ("bridge", "host", "none")
_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9-]+)*(?::[0-9]+)?"
_REFERENCE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?"
    r"(?:@sha256:[a-f0-9]{64})?$"
)
_ZERO_TIME = "0001-01-01T00:00:00Z"
_ids = itertools.count(1)


def _new_id() -> str:
    return f"{next(_ids):012x}".ljust(64, "0")


def _now() -> datetime:
    return datetime.now(UTC)


def _signal_number(signal: str) -> int:
    """The number of a signal given as Docker accepts it: ``SIGTERM``, ``term`` or ``15``.

    Raises:
        DockerError: it names no signal (Docker answers ``Invalid signal``).
    """
    raw = str(signal).strip()
    if raw.isdigit():
        number = int(raw)
        if 0 < number <= 64:
            return number
    else:
        upper = raw.upper()
        found = SIGNAL_NUMBERS.get(upper if upper.startswith("SIG") else "SIG" + upper)
        if found is not None:
            return found
    raise DockerError(f"Invalid signal: {signal}")


@dataclass(frozen=True)
class FakeExec:
    """What one exec in a fake container does (or one ``RUN`` step of a build)."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    run_seconds: float = 0.0


@dataclass
class FakeProgram:
    """What a fake container of some image does when started.

    Signals follow Docker's rules for a container's main process, which runs as PID 1:
    the kernel does not apply a signal's default action to PID 1, so a signal it has no
    handler for is ignored; only SIGKILL always ends it (exit code 137).
    """

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    #: seconds until it exits by itself; None: it runs until stopped or killed
    run_seconds: float | None = 0.0
    oom_killed: bool = False
    #: a process that ignores SIGTERM (``stop`` then needs its SIGKILL)
    ignores_sigterm: bool = False
    #: the signals it handles (``SIGTERM``, ``TERM`` or ``15``), each with the exit code
    #: its handler ends it with, as ``trap 'exit 143' TERM`` does; the others are
    #: ignored. None: a program whose handlers end it with 128 + N on every signal
    #: that ends a process by default.
    signal_exit_codes: Mapping[str, int] | None = None
    memory_bytes: int = 4 * 1024 * 1024
    #: a program like ``cat``: after ``stdout`` it writes what it read on its standard input
    echoes_stdin: bool = False
    #: exec behaviour: given the exec spec, what it prints and how it ends
    on_exec: Callable[[ExecSpec], FakeExec] = field(default=lambda spec: FakeExec())

    def exit_code_on(self, number: int) -> int | None:
        """The exit code signal ``number`` ends the program with; None: it is ignored."""
        if number == _SIGKILL:
            return 128 + _SIGKILL
        if number == _SIGTERM and self.ignores_sigterm:
            return None
        if self.signal_exit_codes is None:
            return None if number in _NOT_FATAL_BY_DEFAULT else 128 + number
        for name, code in self.signal_exit_codes.items():
            if _signal_number(name) == number:
                return code
        return None


@dataclass
class _Entry:
    """One path in a fake container's file system."""

    kind: Literal["file", "dir", "symlink"]
    #: permission and set-id/sticky bits (``0o7777``)
    mode: int
    data: bytes = b""
    link: str = ""


def _default_files() -> dict[str, _Entry]:
    return {"/tmp": _Entry("dir", 0o1777)}


@dataclass
class _FakeContainer:
    spec: ContainerSpec
    program: FakeProgram
    image_id: str = ""
    #: the image's labels, under the container's own (as Docker merges them)
    image_labels: Mapping[str, str] = field(default_factory=dict)
    id: str = field(default_factory=_new_id)
    status: str = "created"
    exit_code: int | None = None
    oom_killed: bool = False
    created_at: datetime = field(default_factory=_now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    ends_at: float | None = None
    #: how many times it was started; run N stopped at ``stopped_at[N]`` (monotonic)
    runs: int = 0
    stopped_at: dict[int, float] = field(default_factory=dict)
    networks: dict[str, str] = field(default_factory=dict)
    files: dict[str, _Entry] = field(default_factory=_default_files)
    #: what was given to its standard input (``attach_stdin``)
    stdin: bytes = b""
    #: a pool agent that was given its command (``run_attached``)
    agent_used: bool = False
    exited: threading.Event = field(default_factory=threading.Event)


class _ListStream:
    """A finished stream over a list, closable like a live one."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._items = list(items)
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in self._items:
            if self.closed:
                return
            yield item

    def close(self) -> None:
        self.closed = True


class _FollowStream(_ListStream):
    """Yields its items, then blocks until the container exits (as ``follow`` does)."""

    def __init__(self, items: Iterable[Any], box: _FakeContainer, tick: Callable[[], None]):
        super().__init__(items)
        self._box = box
        self._tick = tick

    def __iter__(self) -> Iterator[Any]:
        yield from super().__iter__()
        while not self.closed:
            self._tick()
            if self._box.exited.wait(0.01):
                return


class _StatsStream:
    """A sample at once, then one per interval until closed, as Docker's stats stream.

    Once the container has stopped, the samples are the engine's empty ones (zero time):
    the stream does not end by itself.
    """

    def __init__(self, sample: Callable[[], dict[str, Any]], interval: float) -> None:
        self._sample = sample
        self._interval = interval
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while not self._closed.is_set():
            yield self._sample()
            if self._closed.wait(self._interval):
                return

    def close(self) -> None:
        self._closed.set()


class _FakeExecStream(_ListStream):
    """A started exec: its output at once, then it runs for ``run_seconds``."""

    def __init__(self, exec_id: str, result: FakeExec, box: _FakeContainer) -> None:
        chunks: list[Chunk] = []
        if result.stdout:
            chunks.append((1, result.stdout))
        if result.stderr:
            chunks.append((2, result.stderr))
        super().__init__(chunks)
        self._id = exec_id
        self._result = result
        self._box = box
        self._run = box.runs
        self._ends = time.monotonic() + result.run_seconds

    @property
    def id(self) -> str:
        return self._id

    def _container_stopped_at(self) -> float | None:
        return self._box.stopped_at.get(self._run)

    def __iter__(self) -> Iterator[Chunk]:
        yield from super().__iter__()
        while time.monotonic() < self._ends and not self.closed:
            if self._container_stopped_at() is not None:
                return
            time.sleep(0.005)

    def exit_code(self) -> int | None:
        stopped = self._container_stopped_at()
        if stopped is not None and stopped < self._ends:
            return 128 + _SIGKILL  # killed with its container
        if time.monotonic() < self._ends:
            return None  # still running
        return self._result.exit_code


class FakeEngine(Engine):
    """An in-memory engine with Docker's semantics where the orchestrator relies on them.

    Args:
        images: image references present at start, each with the program its
            containers run (``None``: the default program, exit 0 at once).
    """

    def __init__(self, images: Mapping[str, FakeProgram | None] | None = None) -> None:
        self._lock = threading.RLock()
        self.containers: dict[str, _FakeContainer] = {}
        self.networks: dict[str, Network] = {}
        self.volumes: dict[str, Volume] = {}
        #: every tag present -> its image (several tags may share one image id)
        self.images: dict[str, Image] = {}
        self.programs: dict[str, FakeProgram] = {}
        #: images a pull can fetch (a registry); others are not found
        self.registry: dict[str, FakeProgram] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._failures: dict[str, list[BaseException]] = {}
        #: called by every ``list_*`` between reading the list and inspecting its items
        self.on_list: Callable[[], None] | None = None
        self.available = True
        #: seconds between two samples of ``stream_stats`` (Docker: about one)
        self.stats_interval_seconds = 1.0
        self._execs = itertools.count(1)
        self._networks_made = 0
        self.add_network("bridge", internal=False, subnet="172.17.0.0/16")
        self.add_network("host", internal=False, subnet=None)
        self.add_network("none", internal=False, subnet=None)
        for ref, program in (images or {"busybox:latest": None}).items():
            self.add_image(ref, program)

    # -- test controls ------------------------------------------------------------------

    def add_image(
        self,
        ref: str,
        program: FakeProgram | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        cmd: tuple[str, ...] = (),
        entrypoint: tuple[str, ...] = (),
        environment: tuple[str, ...] = (),
        working_dir: str = "",
        size_bytes: int = 1024 * 1024,
        onbuild: tuple[str, ...] = (),
    ) -> Image:
        """Make ``ref`` present locally (a new image); its containers run ``program``."""
        image = Image(
            id="sha256:" + _new_id(),
            labels=dict(labels or {}),
            cmd=tuple(cmd),
            entrypoint=tuple(entrypoint),
            environment=tuple(environment),
            working_dir=working_dir,
            size_bytes=size_bytes,
            created_at=_now(),
            onbuild=tuple(onbuild),
        )
        with self._lock:
            self.programs[image.id] = program or FakeProgram()
            self._set_tag(_tagged(ref), image)
            return self.images[_tagged(ref)]

    def add_network(
        self, name: str, *, internal: bool = True, subnet: str | None = "", **labels: str
    ) -> Network:
        """Create a network directly (as if someone else made it).

        Args:
            name: its name.
            internal: no route out of it.
            subnet: its subnet; ``""`` picks a free one, as Docker does; None: none.
            **labels: its labels.
        """
        with self._lock:
            chosen = self._free_subnet() if subnet == "" else subnet
            network = Network(
                id=_new_id(),
                name=name,
                labels=dict(labels),
                internal=internal,
                created_at=_now(),
                subnets=(chosen,) if chosen else (),
            )
            self.networks[network.id] = network
        return network

    def fail_next(self, method: str, error: BaseException, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` raise ``error``."""
        self._failures.setdefault(method, []).extend([error] * times)

    def program_of(self, ref: str) -> FakeProgram:
        """The program containers of image ``ref`` run."""
        return self.programs[self.inspect_image(ref).id]

    def _call(self, method: str, *args: Any) -> None:
        self.calls.append((method, args))
        if not self.available:
            raise DockerUnavailable(f"{method}: Docker engine unreachable (fake engine down)")
        pending = self._failures.get(method)
        if pending:
            raise pending.pop(0)

    def called(self, method: str) -> list[tuple[Any, ...]]:
        """The arguments of every call of ``method`` so far."""
        return [args for name, args in self.calls if name == method]

    # -- containers ---------------------------------------------------------------------

    def _find_box(self, ref: str) -> _FakeContainer | None:
        with self._lock:
            for box in self.containers.values():
                if ref and (box.id.startswith(ref) or box.spec.name == ref.lstrip("/")):
                    self._tick(box)
                    return box
        return None

    def _box(self, ref: str) -> _FakeContainer:
        box = self._find_box(ref)
        if box is None:
            raise ContainerNotFound(f"No such container: {ref}")
        return box

    def _tick(self, box: _FakeContainer) -> None:
        """Advance a running container: exit once its run time is over."""
        if box.status == "running" and box.ends_at is not None and time.monotonic() >= box.ends_at:
            self._exit(box, box.program.exit_code, oom=box.program.oom_killed)

    def _exit(self, box: _FakeContainer, code: int, oom: bool = False) -> None:
        with self._lock:
            if box.status != "running":
                return
            box.status = "exited"
            box.exit_code = code
            box.oom_killed = oom
            box.finished_at = _now()
            box.stopped_at[box.runs] = time.monotonic()
            box.networks = {name: "" for name in box.networks}
            box.exited.set()

    def _view(self, box: _FakeContainer) -> Container:
        spec = box.spec
        ports = {
            f"{c}/tcp": ((spec.ports_host_ip or "0.0.0.0", str(h)),)
            for c, h in spec.ports.items()
            if box.status == "running"
        }
        return Container(
            id=box.id,
            name=spec.name,
            image=spec.image,
            labels={**box.image_labels, **spec.labels},
            status=box.status,
            exit_code=box.exit_code if box.status in ("exited", "dead") else None,
            oom_killed=box.oom_killed,
            created_at=box.created_at,
            started_at=box.started_at,
            finished_at=box.finished_at,
            networks=dict(box.networks),
            ports=ports,
            memory_limit_bytes=(spec.memory_mb or 0) * 1024 * 1024,
            image_id=box.image_id,
            environment=dict(spec.environment),  # its own (the image's are left out)
        )

    def create_container(self, spec: ContainerSpec) -> Container:
        self._call("create_container", spec)
        with self._lock:
            if spec.name and not _NAME.match(spec.name):
                raise DockerError(
                    f"Invalid container name ({spec.name}), "
                    "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                )
            image = self._image(spec.image)  # Docker looks for the image before the name
            if spec.name and any(b.spec.name == spec.name for b in self.containers.values()):
                raise ContainerConflict(f'Conflict. The container name "/{spec.name}" is in use')
            if not spec.name:
                spec = replace(spec, name=f"fake_{_new_id()[:12]}")
            for mount in spec.mounts:
                if mount.kind == "volume" and mount.source not in self.volumes:
                    self.volumes[mount.source] = Volume(mount.source, {}, created_at=_now())
            box = _FakeContainer(
                spec=spec,
                program=self.programs[image.id],
                image_id=image.id,
                image_labels=dict(image.labels),
            )
            # Docker checks the network only when the container starts.
            network = "bridge" if spec.network == "default" else spec.network
            box.networks = {network: ""}
            self.containers[box.id] = box
            return self._view(box)

    def start_container(self, ref: str) -> None:
        self._call("start_container", ref)
        with self._lock:
            box = self._box(ref)
            if box.status == "running":
                return
            found = {name: self._find_network(name) for name in box.networks}
            for name, network in found.items():
                if network is None:
                    raise NetworkNotFound(f"network {name} not found")
            # A started exited container runs again (its output adds to the logs).
            box.status = "running"
            box.runs += 1
            box.exit_code = None
            box.exited.clear()
            box.started_at = _now()
            box.networks = {
                name: self._address(network, box) for name, network in found.items() if network
            }
            run = box.program.run_seconds
            box.ends_at = None if run is None else time.monotonic() + run
            self._tick(box)

    def _address(self, network: Network, box: _FakeContainer) -> str:
        """A free address for ``box`` in ``network`` ("" where Docker gives none)."""
        if not network.subnets or network.name in ("none", "host"):
            return ""
        subnet = ipaddress.ip_network(network.subnets[0])
        taken = {
            other.networks.get(network.name)
            for other in self.containers.values()
            if other is not box and other.status == "running"
        }
        hosts = subnet.hosts()
        next(hosts)  # the gateway
        for candidate in hosts:
            if str(candidate) not in taken:
                return str(candidate)
        raise DockerError(f"no available IPv4 addresses on network {network.name}")

    def inspect_container(self, ref: str) -> Container:
        self._call("inspect_container", ref)
        return self._view(self._box(ref))

    def list_containers(
        self, label_filters: Iterable[str] = (), *, include_stopped: bool = True
    ) -> list[Container]:
        filters = tuple(label_filters)
        self._call("list_containers", filters)
        with self._lock:
            for box in self.containers.values():
                self._tick(box)
            ids = [
                b.id
                for b in self.containers.values()
                if _labels_match({**b.image_labels, **b.spec.labels}, filters)
                and (include_stopped or b.status == "running")
            ]
        if self.on_list is not None:
            self.on_list()
        return [found for i in ids if (found := self.find_container(i)) is not None]

    def wait_container(self, ref: str, timeout_seconds: float) -> int | None:
        self._call("wait_container", ref, timeout_seconds)
        box = self._box(ref)
        ends = time.monotonic() + timeout_seconds
        while True:
            with self._lock:
                self._tick(box)
                if box.status != "running":
                    # Docker waits for "not running": a created container answers at once
                    # (exit code 0); one removed while waited on was killed (137).
                    return box.exit_code or 0
            left = ends - time.monotonic()
            if left <= 0:
                return None
            wake = box.ends_at - time.monotonic() if box.ends_at is not None else left
            box.exited.wait(max(0.0, min(left, wake, 0.05)))

    def kill_container(self, ref: str, signal: str = "SIGKILL") -> bool:
        self._call("kill_container", ref, signal)
        number = _signal_number(signal)  # an invalid signal is refused first, as by Docker
        with self._lock:
            box = self._find_box(ref)
            if box is None or box.status != "running":
                return False
            code = box.program.exit_code_on(number)
            if code is not None:
                self._exit(box, code)
            return True

    def stop_container(self, ref: str, grace_seconds: int) -> None:
        self._call("stop_container", ref, grace_seconds)
        box = self._box(ref)
        if box.status != "running":
            return
        code = box.program.exit_code_on(_SIGTERM)
        if code is not None:
            self._exit(box, code)
            return
        deadline = time.monotonic() + grace_seconds
        while (left := deadline - time.monotonic()) > 0:
            with self._lock:
                self._tick(box)
                if box.status != "running":
                    return
            box.exited.wait(min(left, 0.02))
        self._exit(box, 128 + _SIGKILL)

    def remove_container(self, ref: str) -> bool:
        self._call("remove_container", ref)
        with self._lock:
            box = self._find_box(ref)
            if box is None:
                return False
            self._exit(box, 128 + _SIGKILL)
            del self.containers[box.id]
            box.exited.set()
        return True

    def _log_lines(self, box: _FakeContainer) -> list[tuple[int, bytes]]:
        """The log as the engine stores it: each run's stdout lines, then its stderr's."""
        lines: list[tuple[int, bytes]] = []
        for _ in range(box.runs):
            echoed = box.stdin if box.program.echoes_stdin else b""
            for stream, output in ((1, box.program.stdout + echoed), (2, box.program.stderr)):
                lines.extend((stream, line) for line in output.splitlines(keepends=True))
        return lines

    def container_logs(
        self,
        ref: str,
        *,
        stdout: bool = True,
        stderr: bool = True,
        follow: bool = False,
        tail: int | None = None,
    ) -> Stream[bytes]:
        self._call("container_logs", ref, follow)
        box = self._box(ref)
        lines = self._log_lines(box)
        if tail is not None:  # Docker takes the tail of the whole log, then filters
            lines = lines[-tail:] if tail > 0 else []
        wanted = {1} if stdout else set()
        wanted |= {2} if stderr else set()
        chunks = [line for stream, line in lines if stream in wanted]
        return self._log_stream(box, chunks, follow)

    def follow_output(self, ref: str) -> Stream[Chunk]:
        self._call("follow_output", ref)
        box = self._box(ref)
        return self._log_stream(box, self._log_lines(box), follow=True)

    def _log_stream(self, box: _FakeContainer, items: list[Any], follow: bool) -> Stream[Any]:
        """``items``, then (followed, while ``box`` runs) a wait for its exit."""
        if follow and box.status == "running":
            return _FollowStream(items, box, lambda: self._tick(box))
        return _ListStream(items)

    def _stats_sample(self, box: _FakeContainer) -> dict[str, Any]:
        with self._lock:
            self._tick(box)
            running = box.status == "running" and box.id in self.containers
        if not running:
            return {
                "read": _ZERO_TIME,
                "preread": _ZERO_TIME,
                "name": "/" + box.spec.name,
                "id": box.id,
                "num_procs": 0,
                "memory_stats": {},
                "cpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
                "precpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
                "blkio_stats": {"io_service_bytes_recursive": None},
                "pids_stats": {},
                "storage_stats": {},
            }
        memory = box.program.memory_bytes
        return {
            "read": _now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "preread": _ZERO_TIME,
            "name": "/" + box.spec.name,
            "id": box.id,
            "num_procs": 0,
            "memory_stats": {
                "usage": memory,
                "max_usage": memory,
                "limit": (box.spec.memory_mb or 1024) * 1024 * 1024,
                "stats": {},
            },
            "cpu_stats": {
                "cpu_usage": {"total_usage": 1_000_000},
                "system_cpu_usage": 10_000_000,
                "online_cpus": 2,
            },
            "precpu_stats": {"cpu_usage": {"total_usage": 0}, "system_cpu_usage": 0},
            "blkio_stats": {"io_service_bytes_recursive": []},
            "pids_stats": {"current": 1},
            "storage_stats": {},
            **(
                {"networks": {"eth0": {"rx_bytes": 0, "tx_bytes": 0}}}
                if any(n != "none" for n in box.networks)
                else {}
            ),
        }

    def container_stats(self, ref: str) -> dict[str, Any]:
        self._call("container_stats", ref)
        return self._stats_sample(self._box(ref))

    def stream_stats(self, ref: str) -> Stream[dict[str, Any]]:
        self._call("stream_stats", ref)
        box = self._box(ref)
        return _StatsStream(lambda: self._stats_sample(box), self.stats_interval_seconds)

    def exec_start(self, ref: str, spec: ExecSpec) -> _FakeExecStream:
        self._call("exec_start", ref, spec)
        box = self._box(ref)
        if box.status != "running":
            raise DockerError(f"Container {box.id} is not running")
        return _FakeExecStream(f"exec-{next(self._execs)}", box.program.on_exec(spec), box)

    def run_attached(self, ref: str, spec: ExecSpec) -> _FakeExecStream:
        self._call("run_attached", ref, spec)
        agent_input(ref, spec, new_nonce())
        with self._lock:
            box = self._box(ref)
            if box.status != "running":
                raise DockerError(f"You cannot attach to a stopped container {box.id}")
            agent = box.spec.stdin_open and box.spec.entrypoint == AGENT_ENTRYPOINT
            if not agent or box.agent_used:
                raise DockerError(f"{box.id} is not a pool agent waiting for a command")
            box.agent_used = True
            result = box.program.on_exec(spec)
            ends = time.monotonic() + result.run_seconds
            # The agent runs the command and exits with it: the container ends as it does,
            # unless its program ends it sooner (an OOM kill of its cgroup, say).
            if box.ends_at is None or box.ends_at > ends:
                box.program = replace(box.program, exit_code=result.exit_code, oom_killed=False)
                box.ends_at = ends
        return _FakeExecStream(f"attach-{box.id}", result, box)

    # -- files --------------------------------------------------------------------------

    def _entry(self, box: _FakeContainer, path: str) -> _Entry | None:
        return _ROOT if path == "/" else box.files.get(path)

    def _resolve(self, box: _FakeContainer, path: str) -> str:
        """``path`` with every symbolic link along it followed (as the engine does)."""
        for _ in range(40):
            parts = path.strip("/").split("/") if path != "/" else []
            current = "/"
            changed = False
            for index, part in enumerate(parts):
                candidate = posixpath.join(current, part)
                entry = box.files.get(candidate)
                if entry is not None and entry.kind == "symlink":
                    target = posixpath.normpath(posixpath.join(current, entry.link))
                    # join, not "/".join: normpath keeps a leading "//" (a link to "/")
                    path = posixpath.normpath(posixpath.join(target, *parts[index + 1 :]))
                    changed = True
                    break
                current = candidate
            if not changed:
                return path
        raise DockerError(f"{path}: too many levels of symbolic links")

    def attach_stdin(self, ref: str, data: bytes) -> None:
        self._call("attach_stdin", ref)
        with self._lock:
            box = self._box(ref)
            if box.spec.stdin_open:  # Docker drops what is written to a closed stdin
                box.stdin = bytes(data)

    def put_archive(self, ref: str, path: str, tar_bytes: bytes | TarStream) -> None:
        self._call("put_archive", ref, path)
        if isinstance(tar_bytes, TarStream):
            tar_bytes = tar_bytes.getvalue()
        with self._lock:
            box = self._box(ref)
            target = self._resolve(box, _normalized(path))
            entry = self._entry(box, target)
            if entry is None:
                raise PathNotFound(f"{path}: no such file or directory in container {ref}")
            if entry.kind != "dir":
                raise DockerError(
                    f"write files into {ref}:{path}: extraction point is not a directory"
                )
            try:
                with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
                    for member in archive.getmembers():
                        self._extract(box, archive, member, target)
            except tarfile.TarError as exc:
                raise DockerError(f"write files into {ref}:{path}: {exc}") from exc

    def _extract(
        self, box: _FakeContainer, archive: tarfile.TarFile, member: tarfile.TarInfo, into: str
    ) -> None:
        parts = [p for p in member.name.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            return
        full = posixpath.join(into, *parts)
        parent = posixpath.dirname(full)
        while parent != "/" and parent not in box.files:  # missing parents: 0755
            box.files[parent] = _Entry("dir", 0o755)
            parent = posixpath.dirname(parent)
        mode = member.mode & 0o7777
        existing = box.files.get(full)
        if existing is not None and (existing.kind == "dir") != member.isdir():
            kinds = ("directory", "non-directory")
            old, new = kinds if existing.kind == "dir" else kinds[::-1]
            raise DockerError(f'cannot overwrite {old} "{full}" with {new} "{full}"')
        if member.isdir():
            box.files[full] = _Entry("dir", mode)
        elif member.issym():
            box.files[full] = _Entry("symlink", 0o777, link=member.linkname)
        elif member.islnk():
            source = box.files.get(posixpath.join(into, member.linkname.lstrip("/")))
            if source is not None:
                box.files[full] = replace(source)
        elif member.isfile():
            handle = archive.extractfile(member)
            box.files[full] = _Entry("file", mode, handle.read() if handle else b"")

    def get_archive(self, ref: str, path: str) -> tuple[Stream[bytes], ArchiveStat]:
        self._call("get_archive", ref, path)
        with self._lock:
            box = self._box(ref)
            wanted = _normalized(path)
            parent = self._resolve(box, posixpath.dirname(wanted))
            base = posixpath.join(parent, posixpath.basename(wanted))
            entry = self._entry(box, base)
            if entry is None:
                raise PathNotFound(f"{path}: no such file or directory in container {ref}")
            if path.endswith("/") and entry.kind != "dir":
                raise DockerError(f"read {ref}:{path}: not a directory")
            name = posixpath.basename(base) or "/"
            stat = ArchiveStat(
                name=name,
                size={"file": len(entry.data), "dir": 4096, "symlink": len(entry.link)}[entry.kind],
                mode=_go_file_mode(entry),
                link_target=self._resolve(box, base) if entry.kind == "symlink" else "",
            )
            # Docker names the members of an archive of the root "", "/bin", ...
            top = "" if base == "/" else name
            blocks = [_tar_member(top, entry)]
            if entry.kind == "dir":
                prefix = "" if base == "/" else base
                for full in sorted(box.files):
                    if full.startswith(prefix + "/"):
                        blocks.append(_tar_member(top + full[len(prefix) :], box.files[full]))
        blocks.append(b"\0" * (2 * tarfile.BLOCKSIZE))
        return _ListStream([b"".join(blocks)]), stat

    # -- networks -----------------------------------------------------------------------

    def _free_subnet(self) -> str:
        """The first of Docker's default pools that no network overlaps."""
        candidates = [f"172.{n}.0.0/16" for n in range(17, 32)]
        candidates += [f"192.168.{n}.0/20" for n in range(0, 256, 16)]
        for candidate in candidates:
            if not self._overlapping(candidate):
                return candidate
        raise DockerError("could not find an available, non-overlapping IPv4 address pool")

    def _overlapping(self, subnet: str) -> bool:
        wanted = ipaddress.ip_network(subnet)
        return any(
            wanted.overlaps(ipaddress.ip_network(other))
            for network in self.networks.values()
            for other in network.subnets
        )

    def create_network(self, spec: NetworkSpec) -> Network:
        self._call("create_network", spec)
        with self._lock:
            if any(n.name == spec.name for n in self.networks.values()):
                raise ContainerConflict(f"network with name {spec.name} already exists")
            if spec.subnet:
                try:
                    ipaddress.ip_network(spec.subnet)
                except ValueError as exc:
                    raise DockerError(f"create network {spec.name}: {exc}") from exc
                if self._overlapping(spec.subnet):
                    raise DockerError("Pool overlaps with other one on this address space")
            network = Network(
                id=_new_id(),
                name=spec.name,
                labels=dict(spec.labels),
                internal=spec.internal,
                created_at=_now(),
                subnets=(spec.subnet or self._free_subnet(),),
            )
            self.networks[network.id] = network
            return network

    def _find_network(self, name: str) -> Network | None:
        with self._lock:
            for network in self.networks.values():
                if name and (network.name == name or network.id.startswith(name)):
                    attached = tuple(
                        b.id
                        for b in self.containers.values()
                        if network.name in b.networks and b.status == "running"
                    )
                    return replace(network, containers=attached)
        return None

    def _network(self, name: str) -> Network:
        network = self._find_network(name)
        if network is None:
            raise NetworkNotFound(f"network {name} not found")
        return network

    def inspect_network(self, name: str) -> Network:
        self._call("inspect_network", name)
        return self._network(name)

    def list_networks(self, label_filters: Iterable[str] = ()) -> list[Network]:
        filters = tuple(label_filters)
        self._call("list_networks", filters)
        with self._lock:
            ids = [n.id for n in self.networks.values() if _labels_match(n.labels, filters)]
        if self.on_list is not None:
            self.on_list()
        return [found for i in ids if (found := self.find_network(i)) is not None]

    def remove_network(self, name: str) -> None:
        self._call("remove_network", name)
        with self._lock:
            network = self._network(name)
            if network.name in _PREDEFINED_NETWORKS:
                raise DockerError(f"{network.name} is a pre-defined network and cannot be removed")
            if network.containers:
                raise NetworkInUse(f"error while removing network: {name} has active endpoints")
            del self.networks[network.id]

    def connect_network(self, network: str, container: str, aliases: Iterable[str] = ()) -> None:
        self._call("connect_network", network, container)
        with self._lock:
            found = self._network(network)
            box = self._box(container)
            if found.name in box.networks:
                return
            if "none" in box.networks or "host" in box.networks:
                raise DockerError(
                    f"connect {container} to {network}: a container in network mode "
                    f"{box.spec.network} cannot be connected to another network"
                )
            running = box.status == "running"
            box.networks[found.name] = self._address(found, box) if running else ""

    def disconnect_network(self, network: str, container: str) -> None:
        self._call("disconnect_network", network, container)
        with self._lock:
            found = self._network(network)
            box = self._find_box(container)
            if box is not None:
                box.networks.pop(found.name, None)

    # -- volumes ------------------------------------------------------------------------

    def create_volume(self, name: str, labels: Mapping[str, str]) -> Volume:
        self._call("create_volume", name)
        with self._lock:
            if name and not _NAME.match(name):
                raise DockerError(
                    f"create {name}: includes invalid characters for a local volume name"
                )
            name = name or _new_id()
            if name not in self.volumes:
                self.volumes[name] = Volume(name=name, labels=dict(labels), created_at=_now())
            return self.volumes[name]

    def inspect_volume(self, name: str) -> Volume:
        self._call("inspect_volume", name)
        with self._lock:
            if name not in self.volumes:
                raise VolumeNotFound(f"get {name}: no such volume")
            return self.volumes[name]

    def list_volumes(self, label_filters: Iterable[str] = ()) -> list[Volume]:
        filters = tuple(label_filters)
        self._call("list_volumes", filters)
        with self._lock:
            return [v for v in self.volumes.values() if _labels_match(v.labels, filters)]

    def remove_volume(self, name: str) -> None:
        self._call("remove_volume", name)
        with self._lock:
            if name not in self.volumes:
                raise VolumeNotFound(f"get {name}: no such volume")
            users = [
                b.id
                for b in self.containers.values()
                for m in b.spec.mounts
                if m.kind == "volume" and m.source == name
            ]
            if users:
                raise VolumeInUse(f"remove {name}: volume is in use - {users}")
            del self.volumes[name]

    # -- images -------------------------------------------------------------------------

    def _set_tag(self, tag: str, image: Image) -> None:
        """Point ``tag`` at ``image``; keep every image's ``tags`` in step."""
        previous = self.images.get(tag)
        self.images[tag] = image
        for image_id in {image.id, previous.id if previous else ""} - {""}:
            self._retag(image_id)

    def _retag(self, image_id: str) -> None:
        tags = tuple(sorted(t for t, i in self.images.items() if i.id == image_id))
        for tag in tags:
            self.images[tag] = replace(self.images[tag], tags=tags)

    def _find_image(self, ref: str) -> Image | None:
        with self._lock:
            image = self.images.get(_tagged(ref))
            if image is not None:
                return image
            bare = ref.removeprefix("sha256:")
            if len(bare) >= 4 and re.fullmatch(r"[0-9a-f]+", bare):
                for candidate in self.images.values():
                    if candidate.id.removeprefix("sha256:").startswith(bare):
                        return candidate
        return None

    def _image(self, ref: str) -> Image:
        image = self._find_image(ref)
        if image is None:
            raise ImageNotFound(f"No such image: {_tagged(ref)}")
        return image

    def inspect_image(self, ref: str) -> Image:
        self._call("inspect_image", ref)
        return self._image(ref)

    def pull_image(self, ref: str) -> Image:
        self._call("pull_image", ref)
        _check_reference(ref)
        if _tagged(ref) not in self.registry:
            repository = _tagged(ref).rsplit(":", 1)[0]
            raise ImageNotFound(
                f"pull image {ref}: cannot be pulled (its registry has no such image, or no "
                f"registry is reachable): pull access denied for {repository}, repository "
                "does not exist or may require 'docker login'"
            )
        return self.add_image(ref, self.registry[_tagged(ref)])

    def build_image(self, spec: BuildSpec) -> Image:
        self._call("build_image", spec)
        try:
            _check_reference(spec.tag)
        except DockerError as exc:
            raise ImageBuildFailed(f"build image {spec.tag}: {exc}") from exc
        dockerfile = _read_dockerfile(spec)
        # Steps run outside the engine's lock: a slow RUN step must not stall the engine.
        image, program = _FakeBuild(self, spec).run(dockerfile)
        with self._lock:
            self.programs[image.id] = program
            self._set_tag(_tagged(spec.tag), image)
            return self.images[_tagged(spec.tag)]

    def tag_image(self, ref: str, tag: str) -> None:
        self._call("tag_image", ref, tag)
        _check_reference(tag)
        with self._lock:
            self._set_tag(_tagged(tag), self._image(ref))

    def list_images(self, label_filters: Iterable[str] = ()) -> list[Image]:
        filters = tuple(label_filters)
        self._call("list_images", filters)
        with self._lock:
            unique = {i.id: i for i in self.images.values()}
        return [i for i in unique.values() if _labels_match(i.labels, filters)]

    def remove_image(self, ref: str) -> None:
        self._call("remove_image", ref)
        with self._lock:
            image = self._image(ref)
            by_tag = _tagged(ref) in self.images
            users = [b.id[:12] for b in self.containers.values() if b.image_id == image.id]
            short = image.id.removeprefix("sha256:")[:12]
            if by_tag and len(image.tags) > 1:  # only this tag goes
                del self.images[_tagged(ref)]
                self._retag(image.id)
                return
            if not by_tag and len(image.tags) > 1:
                raise DockerError(
                    f"conflict: unable to delete {short} (must be forced) - "
                    "image is referenced in multiple repositories"
                )
            if users:
                raise DockerError(
                    f'conflict: unable to remove repository reference "{ref}" (must force) - '
                    f"container {users[0]} is using its referenced image {short}"
                )
            for tag in image.tags:
                self.images.pop(tag, None)

    def ping(self) -> None:
        self._call("ping")


_ROOT = _Entry("dir", 0o755)


class _FakeBuild:
    """Run a Dockerfile's instructions against a fake engine's images.

    ``FROM`` needs a present image (or one in the fake registry); every ``RUN`` runs the
    base image's :attr:`FakeProgram.on_exec`, as Docker runs it in a container of the
    image built so far; a non-zero exit fails the build with Docker's message.
    """

    _KNOWN = {
        "ADD",
        "ARG",
        "CMD",
        "COPY",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "FROM",
        "HEALTHCHECK",
        "LABEL",
        "MAINTAINER",
        "ONBUILD",
        "RUN",
        "SHELL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    }

    def __init__(self, engine: FakeEngine, spec: BuildSpec) -> None:
        self.engine = engine
        self.spec = spec
        self.image: Image | None = None
        self.program = FakeProgram()
        self.cmd_set = False
        self.log: list[str] = []
        self.onbuild: list[str] = []
        #: the current stage's name, and each finished named stage (image, program)
        self.stage = ""
        self.stages: dict[str, tuple[Image, FakeProgram]] = {}
        self.deadline = (
            None if spec.timeout_seconds is None else time.monotonic() + spec.timeout_seconds
        )

    def fail(self, message: str) -> ImageBuildFailed:
        tail = "\n".join(self.log[-10:])
        return ImageBuildFailed(f"build image {self.spec.tag}: {message}\n{tail}".rstrip())

    def run(self, dockerfile: str) -> tuple[Image, FakeProgram]:
        #: ARG values declared before the first FROM: what FROM lines may use
        global_args: dict[str, str] = {}
        for number, instruction, argument in _instructions(dockerfile):
            if instruction not in self._KNOWN:
                raise self.fail(
                    f"dockerfile parse error line {number}: unknown instruction: {instruction}"
                )
            if instruction == "FROM":
                words = [w for w in argument.split() if not w.startswith("--")]
                self.base(dockerfile_rules.expand(words[0], global_args) if words else "")
                if len(words) >= 3 and words[1].upper() == "AS":
                    self.stage = words[2].lower()
            elif self.image is None:
                if instruction != "ARG":
                    raise self.fail("no build stage in current context")
                for declaration in argument.split():
                    name, has_default, default = declaration.partition("=")
                    value = default.strip('"') if has_default else ""
                    global_args[name] = self.spec.build_args.get(name, value)
            else:
                self.step(instruction, argument)
        if self.image is None:
            raise self.fail("the Dockerfile has no FROM instruction")
        labels = {**self.image.labels, **self.spec.labels}
        image = replace(
            self.image,
            id="sha256:" + _new_id(),
            labels=labels,
            tags=(),
            created_at=_now(),
            onbuild=tuple(self.onbuild),
        )
        return image, self.program

    def base(self, ref: str) -> None:
        engine = self.engine
        if self.stage and self.image is not None:  # the stage before ends here
            self.stages[self.stage] = (self.image, self.program)
        self.stage = ""
        self.onbuild = []  # a stage's triggers are its own ONBUILD lines
        if ref.lower() in self.stages:
            self.image, self.program = self.stages[ref.lower()]
            return
        if ref == "scratch":
            self.image, self.program = Image(id=""), FakeProgram()
            return
        with engine._lock:
            found = engine._find_image(ref)
            if found is None and _tagged(ref) in engine.registry:
                found = engine.add_image(ref, engine.registry[_tagged(ref)])
            if found is None:
                raise self.fail(
                    f"pull access denied for {ref}, repository does not exist "
                    "or no registry is reachable"
                )
            self.image, self.program = found, engine.programs[found.id]
        for trigger in found.onbuild:  # the base image's triggers run first, as Docker's
            word, _, argument = trigger.partition(" ")
            self.step(word.upper(), argument.strip())
        self.image = replace(self.image, onbuild=())

    def step(self, instruction: str, argument: str) -> None:
        assert self.image is not None
        if instruction == "RUN":
            argv = _command(argument, shell=True)
            result = self.program.on_exec(
                ExecSpec(
                    argv=argv,
                    environment=dict(e.split("=", 1) for e in self.image.environment if "=" in e),
                    working_dir=self.image.working_dir or None,
                )
            )
            self.log += (result.stdout + result.stderr).decode(errors="replace").splitlines()
            self.spend(result.run_seconds)
            if result.exit_code:
                raise self.fail(
                    f"The command '{' '.join(argv)}' returned a non-zero code: {result.exit_code}"
                )
        elif instruction == "CMD":
            self.image = replace(self.image, cmd=_command(argument, shell=True))
            self.cmd_set = True
        elif instruction == "ENTRYPOINT":
            cmd = self.image.cmd if self.cmd_set else ()  # a new entrypoint resets CMD
            self.image = replace(self.image, entrypoint=_command(argument, shell=True), cmd=cmd)
        elif instruction == "ENV":
            env = dict(e.split("=", 1) for e in self.image.environment if "=" in e)
            env.update(_pairs(argument))
            self.image = replace(self.image, environment=tuple(f"{k}={v}" for k, v in env.items()))
        elif instruction == "LABEL":
            self.image = replace(self.image, labels={**self.image.labels, **_pairs(argument)})
        elif instruction == "WORKDIR":
            workdir = posixpath.join(self.image.working_dir or "/", argument.strip())
            self.image = replace(self.image, working_dir=posixpath.normpath(workdir))
        elif instruction == "ONBUILD":
            self.onbuild.append(argument.strip())

    def spend(self, seconds: float) -> None:
        """A step runs ``seconds``; past the build's deadline it is stopped, as Docker's."""
        if self.deadline is not None and time.monotonic() + seconds > self.deadline:
            time.sleep(max(0.0, self.deadline - time.monotonic()))
            raise ImageBuildFailed(
                f"build image {self.spec.tag}: stopped after {self.spec.timeout_seconds:g} s: "
                "the build ran past its time limit"
            )
        time.sleep(seconds)


def _read_dockerfile(spec: BuildSpec) -> str:
    """The Dockerfile's text from a build context (a tar).

    Raises:
        ImageBuildFailed: the context is no tar, or holds no such Dockerfile.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(spec.context_tar)) as archive:
            members = {_normalized(m.name): m for m in archive.getmembers()}
            member = members.get(_normalized(spec.dockerfile))
            handle = archive.extractfile(member) if member is not None else None
            if handle is None:
                raise ImageBuildFailed(
                    f"build image {spec.tag}: Cannot locate specified Dockerfile: {spec.dockerfile}"
                )
            return handle.read().decode()
    except tarfile.TarError as exc:
        raise ImageBuildFailed(f"build image {spec.tag}: bad context: {exc}") from exc


def _instructions(dockerfile: str) -> Iterator[tuple[int, str, str]]:
    """(line number, INSTRUCTION, argument) per instruction; continuations joined."""
    pending = ""
    start = 0
    for number, line in enumerate(dockerfile.splitlines(), 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        word, _, argument = text.partition(" ")
        yield start, word.upper(), argument.strip()
    if pending.strip():
        word, _, argument = pending.strip().partition(" ")
        yield start, word.upper(), argument.strip()


def _command(argument: str, *, shell: bool) -> tuple[str, ...]:
    """A JSON (exec form) or shell form command line as an argv."""
    if argument.startswith("["):
        try:
            parsed = json.loads(argument)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
            return tuple(parsed)
    return ("/bin/sh", "-c", argument) if shell else tuple(shlex.split(argument))


def _pairs(argument: str) -> dict[str, str]:
    """``k=v k2="v 2"`` (or the legacy ``k v``) as a dict."""
    words = shlex.split(argument)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words if "=" in w)


def _check_reference(ref: str) -> None:
    """Raise DockerError for a reference Docker rejects (e.g. upper case)."""
    if not _REFERENCE.match(ref):
        raise DockerError(f"{ref}: invalid reference format")


def _tagged(ref: str) -> str:
    last = ref.rsplit("/", 1)[-1]
    return ref if (":" in last or "@" in ref) else f"{ref}:latest"


def _labels_match(labels: Mapping[str, str], filters: Iterable[str]) -> bool:
    for wanted in filters:
        key, sep, value = wanted.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _normalized(path: str) -> str:
    """An absolute, normalised container path (``/`` for the root)."""
    return posixpath.normpath("/" + path.strip()).replace("//", "/")


#: File-type bits a tar header carries in its mode, as Docker writes them.
_TAR_TYPE_BITS = {"file": 0o100000, "dir": 0o040000, "symlink": 0o120000}


def _go_file_mode(entry: _Entry) -> int:
    """The mode as Docker's stat header gives it: a Go ``os.FileMode``."""
    mode = entry.mode & 0o777
    if entry.mode & 0o4000:
        mode |= 1 << 23  # ModeSetuid
    if entry.mode & 0o2000:
        mode |= 1 << 22  # ModeSetgid
    if entry.mode & 0o1000:
        mode |= 1 << 20  # ModeSticky
    if entry.kind == "dir":
        mode |= 1 << 31  # ModeDir
    elif entry.kind == "symlink":
        mode |= 1 << 27  # ModeSymlink
    return mode


def _tar_member(name: str, entry: _Entry) -> bytes:
    """One tar member as Docker writes it: the mode field keeps the file-type bits.

    Python's ``tarfile`` masks a mode to ``0o7777`` when writing, so the header is patched.
    """
    info = tarfile.TarInfo(name)
    info.mode = entry.mode & 0o7777
    data = b""
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, entry.link
    else:
        data = entry.data
        info.size = len(data)
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
    start = len(header) - tarfile.BLOCKSIZE
    header[start + 100 : start + 108] = b"%07o\0" % (_TAR_TYPE_BITS[entry.kind] | info.mode)
    header[start + 148 : start + 156] = b" " * 8
    checksum = sum(header[start : start + tarfile.BLOCKSIZE])
    header[start + 148 : start + 156] = b"%06o\0 " % checksum
    padding = b"\0" * (-len(data) % tarfile.BLOCKSIZE)
    return bytes(header) + data + padding
