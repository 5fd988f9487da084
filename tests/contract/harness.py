"""One test, two engines: what a contract test needs from the engine under test.

:class:`FakeHarness` and :class:`DockerHarness` hand a test the engine, unique names, and
the few things that must be arranged differently on each engine (a container's
behaviour, a command's behaviour, an object vanishing mid-list, an unreachable engine).
The Docker one also removes everything a test made, and checks that nothing is left.
"""

from __future__ import annotations

import abc
import io
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

import docker
import pytest

from orchestrator.core.types import ContainerSpec, ExecSpec, ExecStream, Stream
from orchestrator.engine.base import Engine
from orchestrator.engine.docker_engine import DockerEngine
from orchestrator.engine.fake import FakeEngine, FakeExec, FakeProgram
from tests.contract.scenarios import (
    TEST_IMAGE,
    TEST_IMAGE_CMD,
    TEST_IMAGE_ENV,
    Behaviour,
    Command,
)

#: Label on everything a contract test creates: its run's prefix.
RUN_LABEL = "orchestrator.contract.run"


class Vanished:
    """Whether an object was really removed between listing and inspecting it."""

    def __init__(self) -> None:
        self.fired = False


class Harness(abc.ABC):
    """The engine under test and what a test arranges on it."""

    kind: str
    engine: Engine

    def __init__(self) -> None:
        self.prefix = f"contract-{uuid.uuid4().hex[:8]}"

    def name(self, what: str) -> str:
        """A unique name for a container, network or volume of this test."""
        return f"{self.prefix}-{what}"

    def tag(self, what: str, version: str = "1") -> str:
        """A unique image tag of this test."""
        return f"{self.prefix}/{what}:{version}"

    def labels(self, **extra: str) -> dict[str, str]:
        """Labels for an object of this test (its run label, plus ``extra``)."""
        return {RUN_LABEL: self.prefix, **extra}

    def spec(self, behaviour: Behaviour, what: str = "c", **overrides: Any) -> ContainerSpec:
        """A container of this test that behaves as ``behaviour`` says.

        An ``image`` override takes that image as it is (then the behaviour only
        matters for the real engine): use it for containers whose process is irrelevant.
        """
        fields: dict[str, Any] = {
            "name": self.name(what),
            "image": self.image_for(behaviour),
            "labels": self.labels(),
            "command": ("sh", "-c", behaviour.script),
        }
        fields.update(overrides)
        return ContainerSpec(**fields)

    def run(self, behaviour: Behaviour, what: str = "c", **overrides: Any) -> str:
        """Create and start a container; its id."""
        created = self.engine.create_container(self.spec(behaviour, what, **overrides))
        self.engine.start_container(created.id)
        return created.id

    @abc.abstractmethod
    def image_for(self, behaviour: Behaviour) -> str:
        """The image a container of ``behaviour`` runs."""

    def exec_spec(self, command: Command, **fields: Any) -> ExecSpec:
        """An exec of ``command`` (the fake learns what it does)."""
        self.learn(command)
        return ExecSpec(argv=command.argv, **fields)

    @abc.abstractmethod
    def learn(self, command: Command) -> None:
        """Make ``command`` known (to the fake: what it prints and how it ends)."""

    @abc.abstractmethod
    def vanish_during_list(self, kind: Literal["container", "network"], ref: str) -> Vanished:
        """Have ``ref`` removed after the next list read it, before it is inspected."""

    @abc.abstractmethod
    def unreachable_engine(self) -> Engine:
        """An engine of the same kind that cannot reach its Docker engine."""

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Remove what the test left, and check that nothing is left."""


class FakeHarness(Harness):
    """The in-memory engine."""

    kind = "fake"

    def __init__(self) -> None:
        super().__init__()
        self._commands: dict[tuple[str, ...], Callable[[ExecSpec], FakeExec]] = {}
        self.engine = self.fake = FakeEngine(images={})
        self.fake.stats_interval_seconds = 0.2
        self.fake.add_image(
            TEST_IMAGE,
            self._program(FakeProgram()),
            cmd=TEST_IMAGE_CMD,
            environment=TEST_IMAGE_ENV,
        )
        self._images: dict[str, str] = {}

    def _program(self, program: FakeProgram) -> FakeProgram:
        return replace(program, on_exec=self._on_exec)

    def _on_exec(self, spec: ExecSpec) -> FakeExec:
        answer = self._commands.get(spec.argv)
        if answer is None:
            raise AssertionError(f"the contract test did not say what {spec.argv} does")
        return answer(spec)

    def image_for(self, behaviour: Behaviour) -> str:
        if behaviour.name not in self._images:
            ref = f"{self.prefix}/behaviour-{behaviour.name}:latest"
            self.fake.add_image(
                ref,
                self._program(behaviour.program),
                cmd=TEST_IMAGE_CMD,
                environment=TEST_IMAGE_ENV,
            )
            self._images[behaviour.name] = ref
        return self._images[behaviour.name]

    def learn(self, command: Command) -> None:
        self._commands[command.argv] = command.fake

    def vanish_during_list(self, kind: Literal["container", "network"], ref: str) -> Vanished:
        vanished = Vanished()

        def remove() -> None:
            self.fake.on_list = None
            if kind == "container":
                self.fake.remove_container(ref)
            else:
                self.fake.remove_network(ref)
            vanished.fired = True

        self.fake.on_list = remove
        return vanished

    def unreachable_engine(self) -> Engine:
        down = FakeEngine()
        down.available = False
        return down

    def cleanup(self) -> None:
        """Nothing to do: the engine lives in memory, for this test only."""


class DockerHarness(Harness):
    """The real engine: everything made is named with the prefix and removed afterwards."""

    kind = "docker"

    def __init__(self, engine: DockerEngine, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.engine = self.docker = engine
        self.api = engine.api
        self._monkeypatch = monkeypatch

    def image_for(self, behaviour: Behaviour) -> str:
        return TEST_IMAGE

    def learn(self, command: Command) -> None:
        """Nothing to learn: the real engine runs the command."""

    def vanish_during_list(self, kind: Literal["container", "network"], ref: str) -> Vanished:
        # The engine lists, then inspects each item by id: remove the victim for real
        # just before its inspection, so the engine meets the real 404.
        vanished = Vanished()
        method = "inspect_container" if kind == "container" else "inspect_network"
        remove = self.api.remove_container if kind == "container" else self.api.remove_network
        original = getattr(self.api, method)

        def inspect(target: str, *args: Any, **kwargs: Any) -> Any:
            if target == ref and not vanished.fired:
                vanished.fired = True
                if kind == "container":
                    remove(ref, force=True)
                else:
                    remove(ref)
            return original(target, *args, **kwargs)

        self._monkeypatch.setattr(self.api, method, inspect)
        return vanished

    def unreachable_engine(self) -> Engine:
        client = docker.DockerClient(
            base_url="unix:///nonexistent/contract-docker.sock", version="1.41", timeout=2
        )
        return DockerEngine(client)

    def cleanup(self) -> None:
        self._monkeypatch.undo()
        self._sweep()
        left = self._leftovers()
        if left:
            self._sweep()  # one more pass (e.g. a container still being removed)
            left = self._leftovers()
        assert not left, f"the contract test left objects behind: {left}"

    def _containers(self) -> set[str]:
        found = self.api.containers(all=True, filters={"label": f"{RUN_LABEL}={self.prefix}"})
        found += self.api.containers(all=True, filters={"name": self.prefix})
        return {c["Id"] for c in found}

    def _networks(self) -> set[str]:
        return {n["Id"] for n in self.api.networks(filters={"name": self.prefix})}

    def _volumes(self) -> set[str]:
        listed = self.api.volumes(filters={"name": self.prefix}) or {}
        return {v["Name"] for v in listed.get("Volumes") or []}

    def _images(self) -> tuple[set[str], set[str]]:
        """(tags of this test, ids of images labelled with its run)."""
        tags = {
            tag
            for image in self.api.images()
            for tag in image.get("RepoTags") or []
            if tag.startswith(self.prefix + "/")
        }
        labelled = self.api.images(filters={"label": f"{RUN_LABEL}={self.prefix}"})
        return tags, {image["Id"] for image in labelled}

    def _leftovers(self) -> list[str]:
        tags, ids = self._images()
        return sorted([*self._containers(), *self._networks(), *self._volumes(), *tags, *ids])

    def _sweep(self) -> None:
        for container in self._containers():
            _quietly(self.api.remove_container, container, force=True, v=True)
        for network in self._networks():
            _quietly(self.api.remove_network, network)
        for volume in self._volumes():
            _quietly(self.api.remove_volume, volume, force=True)
        tags, ids = self._images()
        for tag in tags:  # untags only, when the image (e.g. the test image) has others
            _quietly(self.api.remove_image, tag)
        for image_id in ids:
            _quietly(self.api.remove_image, image_id, force=True)


def _quietly(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except docker.errors.NotFound:
        pass


# -- small helpers the tests share --------------------------------------------------------


@dataclass(frozen=True)
class TarEntry:
    """One member of a tar archive a test writes into a container."""

    name: str
    data: bytes = b""
    mode: int = 0o644
    kind: Literal["file", "dir", "symlink"] = "file"
    link: str = ""


def make_tar(*entries: TarEntry) -> bytes:
    """A tar archive holding ``entries``, in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mode = entry.mode
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.link
                archive.addfile(info)
            else:
                info.size = len(entry.data)
                archive.addfile(info, io.BytesIO(entry.data))
    return buffer.getvalue()


@dataclass(frozen=True)
class Member:
    """What a tar archive read from a container says of one member."""

    mode: int
    kind: Literal["file", "dir", "symlink", "other"]
    data: bytes = b""
    link: str = ""


def read_tar(chunks: Iterable[bytes]) -> dict[str, Member]:
    """The members of a tar archive streamed in ``chunks``, by name."""
    members: dict[str, Member] = {}
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
        for info in archive.getmembers():
            kind: Literal["file", "dir", "symlink", "other"] = "other"
            data = b""
            if info.isdir():
                kind = "dir"
            elif info.issym():
                kind = "symlink"
            elif info.isfile():
                kind = "file"
                handle = archive.extractfile(info)
                data = handle.read() if handle else b""
            members[info.name] = Member(mode=info.mode, kind=kind, data=data, link=info.linkname)
    return members


def drain(stream: ExecStream) -> tuple[bytes, bytes]:
    """All of an exec's output: (stdout, stderr)."""
    out: dict[int, bytes] = {1: b"", 2: b""}
    try:
        for kind, data in stream:
            out[kind] += data
    finally:
        stream.close()
    return out[1], out[2]


def assert_ends_when_killed(engine: Engine, ref: str, stream: ExecStream) -> None:
    """Kill container ``ref`` under a running command: its stream ends soon, exit 137."""
    time.sleep(0.2)
    killer = threading.Timer(0.2, engine.kill_container, args=(ref,))
    killer.start()
    started = time.monotonic()
    assert drain(stream) == (b"", b"")
    killer.join()
    assert time.monotonic() - started < 5
    assert stream.exit_code() == 137


def read_all(stream: Stream[bytes]) -> bytes:
    """Everything a byte stream yields, then close it."""
    try:
        return b"".join(stream)
    finally:
        stream.close()
