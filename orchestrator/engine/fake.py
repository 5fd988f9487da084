"""An in-memory :class:`~orchestrator.engine.base.Engine` for tests (no Docker needed).

It ships with the library, as dramatiq ships ``StubBroker`` and httpx ``MockTransport``:
unit tests of the orchestrator and of code built on it run against it, and the contract
suite (``tests/contract``) runs the same tests against it and a real engine, so its
behaviour cannot drift from Docker's where the orchestrator depends on it.

What a container "runs" is a :class:`FakeProgram`, chosen by image::

    engine = FakeEngine()
    engine.add_image("tool:1", FakeProgram(stdout=b'{"ok": true}\\n', run_seconds=0.05))

A program writes its output at start, then exits with ``exit_code`` after
``run_seconds`` of real time (``None``: runs until stopped or killed). ``exec`` runs
:attr:`FakeProgram.on_exec` (default: exit 0, no output). Failures are injected with
:meth:`FakeEngine.fail_next`; :attr:`FakeEngine.on_list` runs between listing and
inspecting, to remove objects mid-list as a real engine may.
"""

from __future__ import annotations

import io
import itertools
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from orchestrator.engine.base import Engine
from orchestrator.engine.types import (
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
from orchestrator.errors import (
    ContainerConflict,
    ContainerNotFound,
    DockerError,
    ImageBuildFailed,
    ImageNotFound,
    NetworkInUse,
    NetworkNotFound,
    PathNotFound,
    VolumeInUse,
    VolumeNotFound,
)

__all__ = ["FakeEngine", "FakeProgram", "FakeExec", "SIGNAL_NUMBERS"]

#: Exit status of a process ended by signal N is 128 + N, as Docker reports it.
SIGNAL_NUMBERS = {"SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGKILL": 9, "SIGTERM": 15}
_ids = itertools.count(1)


def _new_id() -> str:
    return f"{next(_ids):012x}".ljust(64, "0")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class FakeExec:
    """What one exec in a fake container does."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    run_seconds: float = 0.0


@dataclass
class FakeProgram:
    """What a fake container of some image does when started."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    #: seconds until it exits by itself; None: it runs until stopped or killed
    run_seconds: float | None = 0.0
    oom_killed: bool = False
    #: a process that ignores SIGTERM (``stop`` then needs its SIGKILL)
    ignores_sigterm: bool = False
    memory_bytes: int = 4 * 1024 * 1024
    #: exec behaviour: given the exec spec, what it prints and how it ends
    on_exec: Callable[[ExecSpec], FakeExec] = field(default=lambda spec: FakeExec())


@dataclass
class _FakeContainer:
    spec: ContainerSpec
    program: FakeProgram
    id: str = field(default_factory=_new_id)
    status: str = "created"
    exit_code: int | None = None
    oom_killed: bool = False
    created_at: datetime = field(default_factory=_now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    ends_at: float | None = None
    networks: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[bytes, int]] = field(default_factory=lambda: {"/tmp/": (b"", 0o1777)})
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


class _FakeExecStream(_ListStream):
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
        self._killed = False

    @property
    def id(self) -> str:
        return self._id

    def __iter__(self) -> Iterator[Chunk]:
        yield from super().__iter__()
        ends = time.monotonic() + self._result.run_seconds
        while time.monotonic() < ends and not self.closed:
            if self._box.status != "running":
                self._killed = True
                return
            time.sleep(0.005)

    def exit_code(self) -> int | None:
        if self._killed or self._box.status != "running":
            return 137
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
        self.images: dict[str, Image] = {}
        self.programs: dict[str, FakeProgram] = {}
        #: images a pull can fetch (a registry); others are not found
        self.registry: dict[str, FakeProgram] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._failures: dict[str, list[BaseException]] = {}
        #: called by every ``list_*`` between reading the list and inspecting its items
        self.on_list: Callable[[], None] | None = None
        self.available = True
        self._execs = itertools.count(1)
        self.add_network("bridge", internal=False)
        self.add_network("none", internal=False)
        for ref, program in (images or {"busybox:latest": None}).items():
            self.add_image(ref, program)

    # -- test controls ------------------------------------------------------------------

    def add_image(self, ref: str, program: FakeProgram | None = None) -> Image:
        """Make ``ref`` present locally; its containers run ``program``."""
        image = Image(id="sha256:" + _new_id(), tags=(_tagged(ref),))
        with self._lock:
            self.images[_tagged(ref)] = image
            self.programs[image.id] = program or FakeProgram()
        return image

    def add_network(self, name: str, *, internal: bool = True, **labels: str) -> Network:
        """Create a network directly (as if someone else made it)."""
        network = Network(id=_new_id(), name=name, labels=dict(labels), internal=internal)
        with self._lock:
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
            from orchestrator.errors import DockerUnavailable

            raise DockerUnavailable(f"{method}: Docker engine unreachable (fake engine down)")
        pending = self._failures.get(method)
        if pending:
            raise pending.pop(0)

    def called(self, method: str) -> list[tuple[Any, ...]]:
        """The arguments of every call of ``method`` so far."""
        return [args for name, args in self.calls if name == method]

    # -- containers ---------------------------------------------------------------------

    def _box(self, ref: str) -> _FakeContainer:
        with self._lock:
            for box in self.containers.values():
                if ref and (box.id.startswith(ref) or box.spec.name == ref.lstrip("/")):
                    self._tick(box)
                    return box
        raise ContainerNotFound(f"No such container: {ref}")

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
            labels=dict(spec.labels),
            status=box.status,
            exit_code=box.exit_code if box.status in ("exited", "dead") else None,
            oom_killed=box.oom_killed,
            created_at=box.created_at,
            started_at=box.started_at,
            finished_at=box.finished_at,
            networks=dict(box.networks),
            ports=ports,
            memory_limit_bytes=(spec.memory_mb or 0) * 1024 * 1024,
        )

    def create_container(self, spec: ContainerSpec) -> Container:
        self._call("create_container", spec)
        with self._lock:
            if any(b.spec.name == spec.name for b in self.containers.values()):
                raise ContainerConflict(f'Conflict. The container name "/{spec.name}" is in use')
            image = self.inspect_image(spec.image)
            if spec.network not in ("none", "bridge") and self.find_network(spec.network) is None:
                raise NetworkNotFound(f"network {spec.network} not found")
            for mount in spec.mounts:
                if mount.kind == "volume" and mount.source not in self.volumes:
                    self.create_volume(mount.source, {})
            box = _FakeContainer(spec=spec, program=self.programs[image.id])
            box.networks = {} if spec.network == "none" else {spec.network: ""}
            self.containers[box.id] = box
            return self._view(box)

    def start_container(self, ref: str) -> None:
        self._call("start_container", ref)
        with self._lock:
            box = self._box(ref)
            if box.status != "created":
                return
            box.status = "running"
            box.started_at = _now()
            box.networks = {n: f"10.0.0.{int(box.id[:8], 16) % 250 + 2}" for n in box.networks}
            run = box.program.run_seconds
            box.ends_at = None if run is None else time.monotonic() + run
            self._tick(box)

    def inspect_container(self, ref: str) -> Container:
        self._call("inspect_container", ref)
        return self._view(self._box(ref))

    def list_containers(
        self, label_filters: Iterable[str] = (), *, include_stopped: bool = True
    ) -> list[Container]:
        self._call("list_containers", tuple(label_filters))
        with self._lock:
            ids = [
                b.id
                for b in self.containers.values()
                if _labels_match(b.spec.labels, label_filters)
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
                if box.id not in self.containers:
                    raise ContainerNotFound(f"No such container: {ref}")
                self._tick(box)
                if box.status in ("exited", "dead"):
                    return box.exit_code
                if box.status == "created":
                    raise ContainerNotFound(f"container {ref} was never started")
            left = ends - time.monotonic()
            if left <= 0:
                return None
            wake = box.ends_at - time.monotonic() if box.ends_at is not None else left
            box.exited.wait(max(0.0, min(left, wake, 0.05)))

    def kill_container(self, ref: str, signal: str = "SIGKILL") -> bool:
        self._call("kill_container", ref, signal)
        try:
            box = self._box(ref)
        except ContainerNotFound:
            return False
        if box.status != "running":
            return False
        if signal == "SIGTERM" and box.program.ignores_sigterm:
            return True
        self._exit(box, 128 + SIGNAL_NUMBERS.get(signal, 9))
        return True

    def stop_container(self, ref: str, grace_seconds: int) -> None:
        self._call("stop_container", ref, grace_seconds)
        box = self._box(ref)
        if box.status != "running":
            return
        if not box.program.ignores_sigterm:
            self._exit(box, 128 + SIGNAL_NUMBERS["SIGTERM"])
            return
        if box.exited.wait(grace_seconds):
            return
        self._exit(box, 128 + SIGNAL_NUMBERS["SIGKILL"])

    def remove_container(self, ref: str) -> bool:
        self._call("remove_container", ref)
        with self._lock:
            try:
                box = self._box(ref)
            except ContainerNotFound:
                return False
            self._exit(box, 137)
            del self.containers[box.id]
            box.exited.set()
        return True

    def _output(self, box: _FakeContainer, stdout: bool, stderr: bool) -> list[bytes]:
        if box.status == "created":
            return []
        return [
            chunk
            for wanted, chunk in ((stdout, box.program.stdout), (stderr, box.program.stderr))
            if wanted and chunk
        ]

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
        chunks = self._output(box, stdout, stderr)
        if tail is not None:
            lines = b"".join(chunks).splitlines(keepends=True)
            chunks = [b"".join(lines[-tail:])] if tail and lines else []
        if follow:
            return _FollowStream(chunks, box, lambda: self._tick(box))
        return _ListStream(chunks)

    def _stats_sample(self, box: _FakeContainer) -> dict[str, Any]:
        if box.status != "running":
            return {"read": "0001-01-01T00:00:00Z", "memory_stats": {}, "cpu_stats": {}}
        memory = box.program.memory_bytes
        return {
            "read": _now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "name": "/" + box.spec.name,
            "id": box.id,
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
            "networks": {"eth0": {"rx_bytes": 0, "tx_bytes": 0}},
            "blkio_stats": {"io_service_bytes_recursive": []},
            "pids_stats": {"current": 1},
        }

    def container_stats(self, ref: str) -> dict[str, Any]:
        self._call("container_stats", ref)
        return self._stats_sample(self._box(ref))

    def stream_stats(self, ref: str) -> Stream[dict[str, Any]]:
        self._call("stream_stats", ref)
        box = self._box(ref)
        samples = [self._stats_sample(box)]
        if box.status == "running":
            return _FollowStream(samples, box, lambda: self._tick(box))
        return _ListStream(samples)

    def exec_start(self, ref: str, spec: ExecSpec) -> _FakeExecStream:
        self._call("exec_start", ref, spec)
        box = self._box(ref)
        if box.status != "running":
            raise DockerError(f"Container {box.id} is not running")
        return _FakeExecStream(f"exec-{next(self._execs)}", box.program.on_exec(spec), box)

    def put_archive(self, ref: str, path: str, tar_bytes: bytes) -> None:
        self._call("put_archive", ref, path)
        box = self._box(ref)
        if path.rstrip("/") not in ("", *_dirs(box.files)) and path != "/":
            raise PathNotFound(f"{path}: no such file or directory in container {ref}")
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
            for member in archive.getmembers():
                target = f"{path.rstrip('/')}/{member.name.lstrip('./')}"
                if member.isdir():
                    box.files.setdefault(target.rstrip("/") + "/", (b"", member.mode))
                    continue
                handle = archive.extractfile(member)
                box.files[target] = (handle.read() if handle else b"", member.mode)

    def get_archive(self, ref: str, path: str) -> tuple[Stream[bytes], ArchiveStat]:
        self._call("get_archive", ref, path)
        box = self._box(ref)
        base = path.rstrip("/")
        name = base.rsplit("/", 1)[-1] or "/"
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            if base in box.files:
                data, mode = box.files[base]
                _add(archive, name, data, mode)
                stat = ArchiveStat(name=name, size=len(data), mode=mode)
            elif base + "/" in box.files or base in _dirs(box.files):
                mode = box.files.get(base + "/", (b"", 0o755))[1]
                stat = ArchiveStat(name=name, size=4096, mode=mode | 0o20000000000)
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, mode
                archive.addfile(info)
                for full, (data, file_mode) in sorted(box.files.items()):
                    if full.startswith(base + "/") and not full.endswith("/"):
                        _add(archive, name + full[len(base) :], data, file_mode)
            else:
                raise PathNotFound(f"{path}: no such file or directory in container {ref}")
        return _ListStream([buffer.getvalue()]), stat

    # -- networks -----------------------------------------------------------------------

    def create_network(self, spec: NetworkSpec) -> Network:
        self._call("create_network", spec)
        with self._lock:
            if any(n.name == spec.name for n in self.networks.values()):
                raise ContainerConflict(f"network with name {spec.name} already exists")
            if spec.subnet and any(spec.subnet in n.subnets for n in self.networks.values()):
                raise DockerError(
                    f"Pool overlaps with other one on this address space: {spec.subnet}"
                )
            network = Network(
                id=_new_id(),
                name=spec.name,
                labels=dict(spec.labels),
                internal=spec.internal,
                created_at=_now(),
                subnets=(spec.subnet,) if spec.subnet else (),
            )
            self.networks[network.id] = network
            return network

    def _network(self, name: str) -> Network:
        with self._lock:
            for network in self.networks.values():
                if name and (network.name == name or network.id.startswith(name)):
                    attached = tuple(
                        b.id
                        for b in self.containers.values()
                        if network.name in b.networks and b.status == "running"
                    )
                    return replace(network, containers=attached)
        raise NetworkNotFound(f"network {name} not found")

    def inspect_network(self, name: str) -> Network:
        self._call("inspect_network", name)
        return self._network(name)

    def list_networks(self, label_filters: Iterable[str] = ()) -> list[Network]:
        self._call("list_networks", tuple(label_filters))
        with self._lock:
            ids = [n.id for n in self.networks.values() if _labels_match(n.labels, label_filters)]
        if self.on_list is not None:
            self.on_list()
        return [found for i in ids if (found := self.find_network(i)) is not None]

    def remove_network(self, name: str) -> None:
        self._call("remove_network", name)
        with self._lock:
            network = self._network(name)
            if network.containers:
                raise NetworkInUse(f"error while removing network: {name} has active endpoints")
            del self.networks[network.id]

    def connect_network(self, network: str, container: str, aliases: Iterable[str] = ()) -> None:
        self._call("connect_network", network, container)
        with self._lock:
            found = self._network(network)
            box = self._box(container)
            if found.name not in box.networks:
                address = f"10.0.1.{int(box.id[:8], 16) % 250 + 2}"
                box.networks[found.name] = address if box.status == "running" else ""

    def disconnect_network(self, network: str, container: str) -> None:
        self._call("disconnect_network", network, container)
        with self._lock:
            found = self._network(network)
            try:
                box = self._box(container)
            except ContainerNotFound:
                return
            box.networks.pop(found.name, None)

    # -- volumes ------------------------------------------------------------------------

    def create_volume(self, name: str, labels: Mapping[str, str]) -> Volume:
        self._call("create_volume", name)
        with self._lock:
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
        self._call("list_volumes", tuple(label_filters))
        with self._lock:
            return [v for v in self.volumes.values() if _labels_match(v.labels, label_filters)]

    def remove_volume(self, name: str) -> None:
        self._call("remove_volume", name)
        with self._lock:
            if name not in self.volumes:
                raise VolumeNotFound(f"get {name}: no such volume")
            if any(
                m.kind == "volume" and m.source == name
                for b in self.containers.values()
                for m in b.spec.mounts
            ):
                raise VolumeInUse(f"remove {name}: volume is in use")
            del self.volumes[name]

    # -- images -------------------------------------------------------------------------

    def inspect_image(self, ref: str) -> Image:
        self._call("inspect_image", ref)
        with self._lock:
            image = self.images.get(_tagged(ref))
            if image is None:
                image = next((i for i in self.images.values() if i.id == ref), None)
        if image is None:
            raise ImageNotFound(f"No such image: {ref}")
        return image

    def pull_image(self, ref: str) -> Image:
        self._call("pull_image", ref)
        if _tagged(ref) not in self.registry:
            raise ImageNotFound(f"pull access denied for {ref}, repository does not exist")
        return self.add_image(ref, self.registry[_tagged(ref)])

    def build_image(self, spec: BuildSpec) -> Image:
        self._call("build_image", spec)
        try:
            with tarfile.open(fileobj=io.BytesIO(spec.context_tar)) as archive:
                names = {m.name.lstrip("./") for m in archive.getmembers()}
        except tarfile.TarError as exc:
            raise ImageBuildFailed(f"build image {spec.tag}: bad context: {exc}") from exc
        if spec.dockerfile.lstrip("./") not in names:
            raise ImageBuildFailed(f"build image {spec.tag}: Cannot locate {spec.dockerfile}")
        image = self.add_image(spec.tag)
        with self._lock:
            self.images[_tagged(spec.tag)] = replace(image, labels=dict(spec.labels))
        return self.images[_tagged(spec.tag)]

    def tag_image(self, ref: str, tag: str) -> None:
        self._call("tag_image", ref, tag)
        image = self.inspect_image(ref)
        with self._lock:
            self.images[_tagged(tag)] = replace(image, tags=(*image.tags, _tagged(tag)))

    def list_images(self, label_filters: Iterable[str] = ()) -> list[Image]:
        self._call("list_images", tuple(label_filters))
        with self._lock:
            unique = {i.id: i for i in self.images.values()}
        return [i for i in unique.values() if _labels_match(i.labels, label_filters)]

    def remove_image(self, ref: str) -> None:
        self._call("remove_image", ref)
        image = self.inspect_image(ref)
        with self._lock:
            if any(
                self.images.get(_tagged(b.spec.image)) == image for b in self.containers.values()
            ):
                raise DockerError(f"conflict: unable to remove {ref}: used by a container")
            self.images.pop(_tagged(ref), None)

    def ping(self) -> None:
        self._call("ping")


def _tagged(ref: str) -> str:
    last = ref.rsplit("/", 1)[-1]
    return ref if (":" in last or "@" in ref) else f"{ref}:latest"


def _labels_match(labels: Mapping[str, str], filters: Iterable[str]) -> bool:
    for wanted in filters:
        key, sep, value = wanted.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _dirs(files: Mapping[str, Any]) -> set[str]:
    found: set[str] = set()
    for path in files:
        parts = path.rstrip("/").split("/")
        for i in range(1, len(parts) + (1 if path.endswith("/") else 0)):
            found.add("/".join(parts[:i]) or "/")
    return found


def _add(archive: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    archive.addfile(info, io.BytesIO(data))
