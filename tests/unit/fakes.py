"""Hand-written stand-ins for the docker-py client, in the spirit of docker-py's own
``make_fake_client``: no engine, only the calls orchestrator makes, with the same
shapes (``attrs`` as ``docker inspect`` returns them, Docker's time format, docker-py
exceptions carrying an HTTP status).

A :class:`FakeContainer` has a small state machine: ``created`` → ``running`` (on
``start()``) → ``exited`` (after ``run_seconds`` of real time, or at once on ``kill()``
/ ``stop()``). ``wait(timeout=)`` sleeps for real (tests use slices of 0.05 s) and
raises ``requests.exceptions.ReadTimeout`` when the timeout elapses first, as
docker-py does when its HTTP read times out. Follow streams (``logs(follow=True)``,
``stats(stream=True)``) end when the container exits, as the engine's do.

Every object records the calls it received in ``calls`` for assertions.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker.errors
import requests.exceptions

__all__ = [
    "ZERO_TIME",
    "docker_time",
    "api_error",
    "not_found",
    "image_not_found",
    "conflict",
    "server_error",
    "stats_fixture",
    "labels_match",
    "FakeContainer",
    "FakeContainers",
    "FakeImages",
    "FakeNetwork",
    "FakeNetworks",
    "FakeVolume",
    "FakeVolumes",
    "FakeAPI",
    "FakeDocker",
]

ZERO_TIME = "0001-01-01T00:00:00Z"
FIXTURES = Path(__file__).parent / "fixtures" / "stats"
_ids = itertools.count(1)


def _new_id() -> str:
    return f"{next(_ids):012x}".ljust(64, "f")


def docker_time(moment: float | None = None) -> str:
    """A unix time in Docker's format: RFC 3339, nine fractional digits, ``Z``."""
    if moment is None:
        return ZERO_TIME
    stamp = datetime.fromtimestamp(moment, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond:06d}123Z"


# -- docker-py errors ---------------------------------------------------------------------


class _Response:
    """What docker-py's APIError reads from a requests Response."""

    def __init__(self, status_code: int, reason: str) -> None:
        self.status_code = status_code
        self.reason = reason
        self.url = "http+docker://localhost/v1.45/fake"


def api_error(
    status: int, explanation: str, cls: type[docker.errors.APIError] = docker.errors.APIError
) -> docker.errors.APIError:
    """A docker-py APIError (or subclass) with an HTTP status, as the engine would send."""
    reasons = {404: "Not Found", 409: "Conflict", 500: "Internal Server Error"}
    return cls(
        explanation,
        response=_Response(status, reasons.get(status, "Error")),
        explanation=explanation,
    )


def not_found(what: str) -> docker.errors.NotFound:
    return api_error(404, f"No such container: {what}", docker.errors.NotFound)


def image_not_found(image: str) -> docker.errors.ImageNotFound:
    return api_error(404, f"No such image: {image}", docker.errors.ImageNotFound)


def conflict(explanation: str) -> docker.errors.APIError:
    return api_error(409, explanation)


def server_error(explanation: str) -> docker.errors.APIError:
    return api_error(500, explanation)


def stats_fixture(name: str) -> dict[str, Any]:
    """One captured stats payload of ``tests/unit/fixtures/stats``."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def labels_match(labels: dict[str, str], filters: dict[str, Any] | None) -> bool:
    """Docker's ``label`` filter: every ``key`` or ``key=value`` entry must match."""
    wanted = (filters or {}).get("label") or []
    if isinstance(wanted, str):
        wanted = [wanted]
    for entry in wanted:
        key, sep, value = entry.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


# -- streams ------------------------------------------------------------------------------


class _Stream:
    """An iterator like docker-py's streaming responses: ``close()`` ends it.

    Yields ``items``; then, when ``until`` is given, blocks until that event is set
    (the container exited) and yields ``tail``. ``fail_after`` raises a
    ConnectionError after that many items, like a broken HTTP stream.
    """

    def __init__(
        self,
        items: Iterable[Any],
        until: threading.Event | None = None,
        poll: Callable[[], None] = lambda: None,
        tail: Iterable[Any] = (),
        fail_after: int | None = None,
    ) -> None:
        self._items = deque(items)
        self._until = until
        self._poll = poll
        self._tail = deque(tail)
        self._fail_after = fail_after
        self._given = 0
        self.closed = False

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> Any:
        if self._fail_after is not None and self._given >= self._fail_after:
            raise requests.exceptions.ConnectionError("Connection broken: IncompleteRead")
        if self.closed:
            raise StopIteration
        if self._items:
            self._given += 1
            return self._items.popleft()
        if self._until is not None:
            while not self.closed and not self._until.wait(0.01):
                self._poll()
        if self._tail and not self.closed:
            return self._tail.popleft()
        raise StopIteration

    def close(self) -> None:
        self.closed = True


# -- containers ---------------------------------------------------------------------------


class FakeContainer:
    """A container with a scripted life.

    Args:
        name: its name (without the leading slash).
        status: ``created``, ``running`` or ``exited`` at construction.
        exit_code: the code it exits with by itself.
        run_seconds: real seconds from start to exit; None never exits by itself.
        started_ago: for a container built ``running``/``exited``: how long ago it started.
        oom_killed: the engine's ``OOMKilled`` flag once exited.
        stdout / stderr: byte chunks of its output.
        stats: payloads streamed by ``stats()`` before the stopped (zero-time) payload.
        networks: ``{network name: IP address}``.
        wait_script: results ``wait()`` gives first, one per call: a dict is returned,
            an exception raised.
        follow_fails_after: the follow stream breaks after this many chunks.
        start_error / kill_error / stop_error / remove_error: raised by that call.
    """

    def __init__(
        self,
        name: str,
        *,
        image: str = "busybox:latest",
        labels: dict[str, str] | None = None,
        status: str = "created",
        exit_code: int = 0,
        run_seconds: float | None = 0.05,
        started_ago: float = 0.0,
        oom_killed: bool = False,
        stdout: Iterable[bytes] = (),
        stderr: Iterable[bytes] = (),
        stats: Iterable[dict[str, Any]] | None = None,
        networks: dict[str, str] | None = None,
        wait_script: Iterable[Any] = (),
        follow_fails_after: int | None = None,
        start_error: BaseException | None = None,
        kill_error: BaseException | None = None,
        stop_error: BaseException | None = None,
        remove_error: BaseException | None = None,
        client: FakeDocker | None = None,
    ) -> None:
        self.name = name
        self.id = _new_id()
        self.image = image
        self._labels = dict(labels or {})
        self.exit_code_when_done = exit_code
        self.run_seconds = run_seconds
        self.oom_killed = oom_killed
        self.stdout_chunks = list(stdout)
        self.stderr_chunks = list(stderr)
        self.stats_payloads = (
            [stats_fixture("v1_memory")] if stats is None else [dict(s) for s in stats]
        )
        self.networks = dict(networks or {})
        self.wait_script = deque(wait_script)
        self.follow_fails_after = follow_fails_after
        self.start_error = start_error
        self.kill_error = kill_error
        self.stop_error = stop_error
        self.remove_error = remove_error
        self.client = client
        self.config: dict[str, Any] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.removed = False
        self._lock = threading.RLock()
        self._exited = threading.Event()
        self._status = "created"
        self._exit_code = 0
        self._oom = False
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._exit_at: float | None = None
        now_wall, now_mono = time.time(), time.monotonic()
        if status in ("running", "exited"):
            self._status = "running"
            self._started_at = now_wall - started_ago
            if run_seconds is not None:
                self._exit_at = now_mono - started_ago + run_seconds
            if status == "exited":
                elapsed = run_seconds if run_seconds is not None else started_ago
                self._exit(exit_code, oom_killed, finished=self._started_at + elapsed)
            self._tick()
        elif status != "created":
            self._status = status
        self.attrs = self._inspect()

    # -- state ------------------------------------------------------------------

    def _exit(self, code: int, oom: bool = False, finished: float | None = None) -> None:
        with self._lock:
            if self._status == "exited":
                return
            self._status = "exited"
            self._exit_code = code
            self._oom = oom
            self._finished_at = time.time() if finished is None else finished
        self._exited.set()

    def _tick(self) -> None:
        """Exit by itself once ``run_seconds`` have passed since the start."""
        with self._lock:
            due = self._exit_at is not None and time.monotonic() >= self._exit_at
            if self._status == "running" and due:
                self._exit(self.exit_code_when_done, self.oom_killed)

    def _inspect(self) -> dict[str, Any]:
        with self._lock:
            status = self._status
            return {
                "Id": self.id,
                "Name": "/" + self.name,
                "Image": "sha256:" + "0" * 64,
                "Config": {"Image": self.image, "Labels": dict(self._labels)},
                "State": {
                    "Status": status,
                    "Running": status == "running",
                    "Paused": False,
                    "Restarting": False,
                    "OOMKilled": self._oom,
                    "Dead": False,
                    "Pid": 4242 if status == "running" else 0,
                    "ExitCode": self._exit_code,
                    "Error": "",
                    "StartedAt": docker_time(self._started_at),
                    "FinishedAt": docker_time(self._finished_at),
                },
                "NetworkSettings": {
                    "Networks": {
                        net: {"IPAddress": ip if status == "running" else ""}
                        for net, ip in self.networks.items()
                    },
                    "Ports": {},
                },
            }

    @property
    def labels(self) -> dict[str, str]:
        return self.attrs["Config"].get("Labels") or {}

    @property
    def status(self) -> str:
        return self.attrs["State"]["Status"]

    @property
    def exited(self) -> bool:
        self._tick()
        return self._exited.is_set()

    def _present(self) -> None:
        if self.removed:
            raise not_found(self.name)

    # -- docker-py methods --------------------------------------------------------

    def reload(self) -> None:
        self.calls.append(("reload",))
        self._present()
        self._tick()
        self.attrs = self._inspect()

    def start(self) -> None:
        self.calls.append(("start",))
        self._present()
        if self.start_error is not None:
            raise self.start_error
        with self._lock:
            if self._status == "running":
                return
            self._status = "running"
            self._exited.clear()
            self._started_at = time.time()
            self._finished_at = None
            if self.run_seconds is not None:
                self._exit_at = time.monotonic() + self.run_seconds

    def wait(self, timeout: float | None = None, condition: str | None = None) -> dict[str, Any]:
        self.calls.append(("wait", timeout))
        if self.wait_script:
            item = self.wait_script.popleft()
            if isinstance(item, BaseException):
                raise item
            return item
        self._present()
        end = float("inf") if timeout is None else time.monotonic() + timeout
        while True:
            self._tick()
            if self._exited.is_set():
                return {"Error": None, "StatusCode": self._exit_code}
            now = time.monotonic()
            if now >= end:
                raise requests.exceptions.ReadTimeout(
                    "UnixHTTPConnectionPool(host='localhost', port=None): "
                    f"Read timed out. (read timeout={timeout})"
                )
            target = end if self._exit_at is None else min(end, self._exit_at)
            self._exited.wait(min(max(0.0, target - now) + 0.001, 1.0))

    def kill(self, signal: str | int | None = None) -> None:
        self.calls.append(("kill", signal))
        self._present()
        if self.kill_error is not None:
            raise self.kill_error
        self._tick()
        if self._status != "running":
            raise conflict(
                f"Cannot kill container: {self.name}: Container {self.id} is not running"
            )
        self._exit(137)

    def stop(self, timeout: int | None = None) -> None:
        self.calls.append(("stop", timeout))
        self._present()
        if self.stop_error is not None:
            raise self.stop_error
        self._tick()
        if self._status == "running":
            self._exit(143)

    def remove(self, force: bool = False, v: bool = False) -> None:
        self.calls.append(("remove", force, v))
        if self.remove_error is not None:
            raise self.remove_error
        self._present()
        self._tick()
        if self._status == "running" and not force:
            raise conflict(f"You cannot remove a running container {self.id}")
        self._drop()

    def _drop(self) -> None:
        self.removed = True
        self._exit(137)
        if self.client is not None:
            self.client.containers.forget(self)

    def logs(
        self,
        stdout: bool = True,
        stderr: bool = True,
        stream: bool = False,
        follow: bool | None = None,
        tail: str | int = "all",
        timestamps: bool = False,
    ) -> Any:
        follow = bool(follow)
        self.calls.append(("logs", stdout, stderr, stream, follow, tail))
        self._present()
        chunks = (self.stdout_chunks if stdout else []) + (self.stderr_chunks if stderr else [])
        if stream:
            return _Stream(
                chunks,
                until=self._exited if follow else None,
                poll=self._tick,
                fail_after=self.follow_fails_after if follow else None,
            )
        data = b"".join(chunks)
        if tail != "all":
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(tail) :]) if int(tail) else b""
        return data

    def stats(self, decode: bool | None = None, stream: bool = True, **kwargs: Any) -> Any:
        self.calls.append(("stats", stream, decode))
        self._present()
        stopped = stats_fixture("v1_stopped")
        if not stream:
            self._tick()
            return stopped if self._exited.is_set() else self.stats_payloads[0]
        return _Stream(self.stats_payloads, until=self._exited, poll=self._tick, tail=[stopped])

    def __repr__(self) -> str:
        return f"<FakeContainer {self.name} {self._status}>"


class FakeContainers:
    """``client.containers``: get, create, list (with label filters).

    ``created`` has the keyword arguments of every ``create`` call, ``made`` every
    container the engine had (removed ones included).

    Args:
        spawn: keyword arguments of :class:`FakeContainer` given to every created one
            (its scripted behaviour: output, exit code, run time...).
    """

    def __init__(self, client: FakeDocker) -> None:
        self.client = client
        self.spawn: dict[str, Any] = {}
        self.created: list[dict[str, Any]] = []
        self.made: list[FakeContainer] = []
        self.create_error: BaseException | None = None
        self.list_error: BaseException | None = None
        self.before_create: Callable[[dict[str, Any]], None] | None = None
        self._all: dict[str, FakeContainer] = {}
        self._lock = threading.Lock()

    def add(self, container: FakeContainer) -> FakeContainer:
        """Put a container on the engine (one made by an earlier worker, say)."""
        container.client = self.client
        with self._lock:
            self._all[container.name] = container
            self.made.append(container)
        return container

    def made_named(self, name: str) -> FakeContainer:
        """The last container of that name the engine had, even if removed since."""
        with self._lock:
            for container in reversed(self.made):
                if container.name == name:
                    return container
        raise AssertionError(f"the fake engine never had a container named {name}")

    def forget(self, container: FakeContainer) -> None:
        with self._lock:
            self._all.pop(container.name, None)

    def _lookup(self, name_or_id: str) -> FakeContainer:
        with self._lock:
            if name_or_id in self._all:
                return self._all[name_or_id]
            for container in self._all.values():
                if container.id.startswith(name_or_id):
                    return container
        raise not_found(name_or_id)

    def get(self, name_or_id: str) -> FakeContainer:
        container = self._lookup(name_or_id)
        container.reload()
        return container

    def create(self, **config: Any) -> FakeContainer:
        self.created.append(config)
        if self.before_create is not None:
            self.before_create(config)
        if self.create_error is not None:
            raise self.create_error
        image = config["image"]
        if image not in self.client.images.names:
            raise image_not_found(image)
        name = config.get("name") or f"fake_{len(self.created)}"
        with self._lock:
            if name in self._all:
                raise conflict(
                    f'Conflict. The container name "/{name}" is already in use by container '
                    f'"{self._all[name].id}". You have to remove (or rename) that container '
                    "to be able to reuse that name."
                )
        container = FakeContainer(
            name, image=image, labels=config.get("labels"), client=self.client, **self.spawn
        )
        container.config = config
        return self.add(container)

    def list(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[Any]:  # noqa: A002
        if self.list_error is not None:
            raise self.list_error
        with self._lock:
            found = list(self._all.values())
        result = []
        for container in found:
            container.reload()
            if not all and container.status != "running":
                continue
            if labels_match(container.labels, filters):
                result.append(container)
        return result

    @property
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._all)


# -- images, networks, volumes ------------------------------------------------------------


class FakeImages:
    """``client.images``: get raises ImageNotFound for unknown names; pull adds one."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = set(names)
        self.pulls: list[tuple[str, str | None]] = []
        self.pull_error: BaseException | None = None

    def get(self, name: str) -> Any:
        if name not in self.names:
            raise image_not_found(name)
        return type("FakeImage", (), {"id": "sha256:" + "1" * 64, "tags": [name]})()

    def pull(self, repository: str, tag: str | None = None, **kwargs: Any) -> Any:
        self.pulls.append((repository, tag))
        if self.pull_error is not None:
            raise self.pull_error
        name = f"{repository}:{tag}" if tag else repository
        self.names.add(name)
        return self.get(name)


class FakeNetwork:
    """A network: ``attrs`` has Name, Created, Labels and Containers."""

    def __init__(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        created: float | None = None,
        containers: dict[str, Any] | None = None,
        remove_error: BaseException | None = None,
        owner: FakeNetworks | None = None,
    ) -> None:
        self.name = name
        self.id = _new_id()
        self.owner = owner
        self.remove_error = remove_error
        self.removed = False
        self.calls: list[tuple[Any, ...]] = []
        self.attrs: dict[str, Any] = {
            "Name": name,
            "Id": self.id,
            "Created": docker_time(time.time() if created is None else created),
            "Labels": dict(labels or {}),
            "Containers": dict(containers or {}),
        }

    def reload(self) -> None:
        self.calls.append(("reload",))
        if self.removed:
            raise api_error(404, f"network {self.name} not found", docker.errors.NotFound)

    def remove(self) -> None:
        self.calls.append(("remove",))
        if self.remove_error is not None:
            raise self.remove_error
        if self.removed:
            raise api_error(404, f"network {self.name} not found", docker.errors.NotFound)
        self.removed = True
        if self.owner is not None:
            self.owner.forget(self)

    def connect(self, container: Any, **kwargs: Any) -> None:
        container_id = getattr(container, "id", container)
        self.calls.append(("connect", container_id))
        self.attrs["Containers"][container_id] = {"Name": getattr(container, "name", "")}

    def disconnect(self, container: Any, force: bool = False) -> None:
        container_id = getattr(container, "id", container)
        self.calls.append(("disconnect", container_id, force))
        if self.attrs["Containers"].pop(container_id, None) is None:
            raise api_error(
                403, f"container {container_id} is not connected to network {self.name}"
            )


class FakeNetworks:
    """``client.networks``: list by names or label filters, get, create."""

    def __init__(self) -> None:
        self._all: dict[str, FakeNetwork] = {}
        self.created: list[dict[str, Any]] = []

    def add(self, network: FakeNetwork) -> FakeNetwork:
        network.owner = self
        self._all[network.name] = network
        return network

    def forget(self, network: FakeNetwork) -> None:
        self._all.pop(network.name, None)

    def list(
        self, names: list[str] | None = None, filters: dict[str, Any] | None = None, **kw: Any
    ) -> list[FakeNetwork]:
        found = list(self._all.values())
        if names:
            found = [n for n in found if n.name in names]
        return [n for n in found if labels_match(n.attrs["Labels"], filters)]

    def get(self, name: str) -> FakeNetwork:
        if name not in self._all:
            raise api_error(404, f"network {name} not found", docker.errors.NotFound)
        return self._all[name]

    def create(self, name: str, **kwargs: Any) -> FakeNetwork:
        self.created.append({"name": name, **kwargs})
        return self.add(FakeNetwork(name, labels=kwargs.get("labels")))

    @property
    def names(self) -> list[str]:
        return sorted(self._all)


class FakeVolume:
    """A named volume: ``attrs`` has Name and Labels."""

    def __init__(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        remove_error: BaseException | None = None,
        owner: FakeVolumes | None = None,
    ) -> None:
        self.name = name
        self.id = name
        self.owner = owner
        self.remove_error = remove_error
        self.calls: list[tuple[Any, ...]] = []
        self.attrs: dict[str, Any] = {"Name": name, "Labels": dict(labels or {})}

    def remove(self, force: bool = False) -> None:
        self.calls.append(("remove", force))
        if self.remove_error is not None:
            raise self.remove_error
        if self.owner is not None:
            self.owner.forget(self)


class FakeVolumes:
    """``client.volumes``: list with label filters, get, create."""

    def __init__(self) -> None:
        self._all: dict[str, FakeVolume] = {}

    def add(self, volume: FakeVolume) -> FakeVolume:
        volume.owner = self
        self._all[volume.name] = volume
        return volume

    def forget(self, volume: FakeVolume) -> None:
        self._all.pop(volume.name, None)

    def list(self, filters: dict[str, Any] | None = None) -> list[FakeVolume]:
        return [v for v in self._all.values() if labels_match(v.attrs["Labels"], filters)]

    def get(self, name: str) -> FakeVolume:
        if name not in self._all:
            raise api_error(404, f"get {name}: no such volume", docker.errors.NotFound)
        return self._all[name]

    def create(self, name: str, labels: dict[str, str] | None = None, **kw: Any) -> FakeVolume:
        return self.add(FakeVolume(name, labels=labels))

    @property
    def names(self) -> list[str]:
        return sorted(self._all)


class FakeAPI:
    """``client.api``: the low-level calls orchestrator makes."""

    def __init__(self, client: FakeDocker) -> None:
        self.client = client
        self.removed: list[tuple[str, bool, bool]] = []
        self.remove_error: BaseException | None = None

    def remove_container(self, container: str, force: bool = False, v: bool = False) -> None:
        self.removed.append((container, force, v))
        if self.remove_error is not None:
            raise self.remove_error
        found = self.client.containers._lookup(container)
        found._tick()
        if found._status == "running" and not force:
            raise conflict(f"You cannot remove a running container {found.id}")
        found._drop()

    def create_endpoint_config(self, **kwargs: Any) -> dict[str, Any]:
        return dict(kwargs)


class FakeDocker:
    """A docker-py ``DockerClient`` stand-in.

    Args:
        images: image names present on the fake engine.
    """

    def __init__(self, images: Iterable[str] = ("busybox:latest",)) -> None:
        self.containers = FakeContainers(self)
        self.images = FakeImages(images)
        self.networks = FakeNetworks()
        self.volumes = FakeVolumes()
        self.api = FakeAPI(self)
