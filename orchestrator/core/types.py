"""The Engine's own small types: what goes into and comes out of :class:`Engine` methods.

No docker-py object crosses the Engine's boundary: specs go in as frozen dataclasses,
inspections come back as frozen dataclasses holding only what the orchestrator reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, TypeVar

__all__ = [
    "Mount",
    "ContainerSpec",
    "Container",
    "NetworkSpec",
    "Network",
    "Volume",
    "Image",
    "BuildSpec",
    "ExecSpec",
    "Stream",
    "ExecStream",
    "Chunk",
    "ArchiveStat",
]

T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True)
class Mount:
    """A volume or bind mount: ``source`` is a volume name, or a host path for a bind."""

    source: str
    target: str
    read_only: bool = False
    kind: Literal["volume", "bind"] = "volume"


@dataclass(frozen=True)
class ContainerSpec:
    """Everything the orchestrator decides about a container it creates.

    Built only by :mod:`orchestrator.core.specs` (the one place where sandbox policy,
    names and labels are decided); the Engine translates it, nothing more.
    """

    name: str
    image: str
    labels: Mapping[str, str]
    command: tuple[str, ...] | str | None = None
    entrypoint: tuple[str, ...] | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    #: ``none``, ``bridge``, or the name of a network to join.
    network: str = "none"
    #: DNS aliases in ``network`` (user-defined networks only).
    aliases: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] = ()
    memory_mb: int | None = None
    cpu_limit: float | None = None
    pids_limit: int | None = None
    cap_drop: tuple[str, ...] = ("ALL",)
    cap_add: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ("no-new-privileges:true",)
    read_only: bool = False
    tmpfs: Mapping[str, str] = field(default_factory=dict)
    log_max_size: str | None = None
    #: container port -> host port, published on ``ports_host_ip``.
    ports: Mapping[int, int] = field(default_factory=dict)
    ports_host_ip: str = ""
    working_dir: str | None = None
    user: str | None = None
    #: keep stdin open, so the tool's standard input can be attached.
    stdin_open: bool = False
    runtime: str | None = None


@dataclass(frozen=True)
class Container:
    """One inspection of a container."""

    id: str
    name: str
    #: the image reference the container was created from, as given
    image: str
    labels: Mapping[str, str]
    #: created | running | paused | restarting | removing | exited | dead
    status: str
    exit_code: int | None = None
    oom_killed: bool = False
    created_at: datetime | None = None
    #: the last start (None: never started)
    started_at: datetime | None = None
    #: the last exit (None: never exited). For a process that ends at once, Docker may
    #: record it a moment *before* ``started_at``: never rely on their order.
    finished_at: datetime | None = None
    #: network name -> the container's IPv4 address there ("" when not running: Docker
    #: gives addresses on start and takes them back on exit). ``{"none": ""}`` for a
    #: container without networking.
    networks: Mapping[str, str] = field(default_factory=dict)
    #: "8000/tcp" -> [(host_ip, host_port)]
    ports: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    #: the configured memory limit in bytes (0: none)
    memory_limit_bytes: int = 0
    #: the id of the image it runs (``sha256:...``), whatever its tags became since
    image_id: str = ""
    #: its environment (the image's, then its own), as the engine reports it
    environment: Mapping[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        """True while the container's process runs."""
        return self.status in ("running", "restarting", "paused")

    @property
    def finished(self) -> bool:
        """True once the container's process has ended."""
        return self.status in ("exited", "dead")


@dataclass(frozen=True)
class NetworkSpec:
    """A bridge network the orchestrator creates (a session's private network)."""

    name: str
    labels: Mapping[str, str]
    internal: bool = True
    subnet: str | None = None
    gateway: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Network:
    """One inspection of a network."""

    id: str
    name: str
    labels: Mapping[str, str]
    internal: bool = False
    created_at: datetime | None = None
    subnets: tuple[str, ...] = ()
    #: ids of the containers attached to it
    containers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Volume:
    """One inspection of a named volume."""

    name: str
    labels: Mapping[str, str]
    created_at: datetime | None = None


@dataclass(frozen=True)
class Image:
    """One inspection of an image: the parts of its config a run needs."""

    id: str
    tags: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    environment: tuple[str, ...] = ()
    working_dir: str = ""
    size_bytes: int = 0
    created_at: datetime | None = None
    #: ``ONBUILD`` triggers, as the engine stores them (``"ADD http://x /y"``): they run
    #: in every build ``FROM`` this image
    onbuild: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildSpec:
    """An image build: a tar build context, the Dockerfile path in it, the tag to give.

    ``memory_mb``, ``cpu_limit`` and ``cgroup_parent`` apply to the container of every
    ``RUN`` step; ``network_mode`` is their network (``none``, or ``default`` for the
    engine's bridge); ``timeout_seconds`` is a wall-clock limit of the whole build, past
    which the engine stops it.
    """

    context_tar: bytes
    tag: str
    dockerfile: str = "Dockerfile"
    build_args: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    network_mode: str = "none"
    memory_mb: int | None = None
    cpu_limit: float | None = None
    timeout_seconds: float | None = None
    pull: bool = False
    cgroup_parent: str | None = None


@dataclass(frozen=True)
class ExecSpec:
    """A command run with ``exec`` in a running container."""

    argv: tuple[str, ...]
    environment: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    user: str | None = None
    #: bytes written to the command's standard input, then closed (None: no stdin).
    stdin: bytes | None = None


@dataclass(frozen=True)
class ArchiveStat:
    """What the engine says about a path it archived: name, size, mode, link target."""

    #: the path's last part (``/`` for the root)
    name: str
    #: bytes of a file, length of a link's target, the file system's size of a directory
    size: int
    #: a Go ``os.FileMode``, as Docker sends it: permission bits, plus 1<<31 for a
    #: directory, 1<<27 for a symbolic link, 1<<23 setuid, 1<<22 setgid, 1<<20 sticky
    mode: int
    #: for a symbolic link, its target resolved to an absolute path in the container
    link_target: str = ""


class Stream(Protocol[T_co]):
    """A live stream from the engine (logs, stats): iterate it; ``close`` ends it early."""

    def __iter__(self) -> Iterator[T_co]: ...

    def close(self) -> None: ...


#: A piece of exec output: (1 for stdout or 2 for stderr, bytes).
Chunk = tuple[int, bytes]


class ExecStream(Stream[Chunk], Protocol):
    """A started exec: iterate its output chunks; ``exit_code`` once the stream ended."""

    @property
    def id(self) -> str: ...

    def exit_code(self) -> int | None: ...
