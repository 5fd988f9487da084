"""The real engine: docker-py behind :class:`~orchestrator.engine.base.Engine`.

This module and :mod:`orchestrator.engine.translate` are the only ones that import
docker. Every method translates engine errors itself (through
:func:`~orchestrator.engine.translate.docker_errors`), so no docker-py type escapes.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import shlex
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import docker
import docker.errors
import docker.transport
import docker.types
import docker.utils.socket

from orchestrator.core.agent import AGENT_TOOK, EndScanner, agent_input, new_nonce
from orchestrator.core.archive import TarStream
from orchestrator.core.types import (
    ArchiveStat,
    BuildSpec,
    Chunk,
    Container,
    ContainerSpec,
    ExecSpec,
    Image,
    Mount,
    Network,
    NetworkSpec,
    Stream,
    Volume,
)
from orchestrator.engine import parse
from orchestrator.engine.base import Engine
from orchestrator.engine.hosts_file import LoopbackHosts, hosts_tar
from orchestrator.engine.translate import docker_errors, is_read_timeout
from orchestrator.errors import (
    ContainerConflict,
    ContainerNotFound,
    DockerError,
    ImageBuildFailed,
    ImageNotFound,
    NetworkInUse,
    NetworkNotFound,
    OrchestratorError,
    PathNotFound,
    VolumeInUse,
    VolumeNotFound,
)

__all__ = [
    "DockerEngine",
    "build_params",
    "create_kwargs",
    "network_disabled",
]

log = logging.getLogger(__name__)

#: Go's zero time: what the engine sends as the ``read`` time of a stopped container.
STOPPED_SAMPLE_TIME = "0001-01-01T00:00:00Z"

#: How long a drained exec may take to have its exit code recorded.
_EXIT_RECORD_SECONDS = 2.0
#: The key of the one connection pool a local engine socket's calls share.
_ONE_POOL_URL = "http+docker://localhost"
#: How long a removal waits for another removal of the same container to end.
_REMOVAL_WAIT_SECONDS = 30.0
#: How long a pool container may take to end after its agent's end trailers.
_TRAILER_EXIT_SECONDS = 2.0
#: How long, of that, a container whose agent waits for its standard input after a clean
#: end is left to its caller (the pool removes it sooner) before that input is closed.
_AGENT_LINGER_SECONDS = 1.5
#: How long a pool agent may take to acknowledge its command (it reads one line).
_AGENT_TAKES_SECONDS = 10.0
#: Output held while waiting for that acknowledgement (the command's first output can
#: overtake it); a container writing more first is no agent.
_AGENT_HELD_MAX_BYTES = 1 << 20


def _host_config(spec: ContainerSpec) -> dict[str, Any]:
    host: dict[str, Any] = {
        "CapDrop": list(spec.cap_drop) or None,
        "CapAdd": list(spec.cap_add) or None,
        "SecurityOpt": list(spec.security_opt) or None,
        "Privileged": False,
        "ReadonlyRootfs": spec.read_only,
        "NetworkMode": spec.network,
        "Tmpfs": dict(spec.tmpfs) or None,
        "Runtime": spec.runtime,
    }
    if spec.memory_mb is not None:
        host["Memory"] = host["MemorySwap"] = spec.memory_mb * 1024 * 1024  # no swap
    if spec.cpu_limit is not None:
        host["NanoCpus"] = int(round(spec.cpu_limit * 1_000_000_000))
    if spec.pids_limit is not None:
        host["PidsLimit"] = spec.pids_limit
    if spec.log_max_size:
        host["LogConfig"] = {
            "Type": "json-file",
            "Config": {"max-size": spec.log_max_size, "max-file": "1"},
        }
    if spec.mounts:
        host["Mounts"] = [_mount(m) for m in spec.mounts]
    if spec.ports:
        host["PortBindings"] = {
            f"{int(c)}/tcp": [{"HostIp": spec.ports_host_ip, "HostPort": str(int(h))}]
            for c, h in spec.ports.items()
        }
    return {k: v for k, v in host.items() if v is not None}


def _mount(mount: Mount) -> dict[str, Any]:
    # A bind mount through ``Mounts`` (unlike ``Binds``) fails on a missing source instead
    # of creating it as root.
    entry: dict[str, Any] = {
        "Type": mount.kind,
        "Source": mount.source,
        "Target": mount.target,
        "ReadOnly": mount.read_only,
    }
    return entry


def network_disabled(spec: ContainerSpec) -> bool:
    """Whether a container without a network gets it as ``NetworkDisabled`` (pure).

    A ``network_mode="none"`` container has the engine make a network sandbox for it: a
    namespace through libnetwork and, on Docker 20.10, a prestart hook that runs the
    daemon's binary again; about 110 ms of a 200 ms start on a 2-core host. With
    ``NetworkDisabled`` the runtime (runc) makes the container's own empty network namespace
    itself, with only its loopback up: the same isolation without the sandbox. The engine
    then writes no ``/etc/hosts``; :meth:`DockerEngine.create_container_id` gives it one
    (:mod:`orchestrator.engine.hosts_file`).
    """
    return spec.network == "none"


def _with_hosts_mount(config: dict[str, Any], source: str) -> dict[str, Any]:
    """``config`` with ``source`` (a file on the engine's host) mounted read-only at
    ``/etc/hosts``."""
    host = dict(config["HostConfig"])
    bind = {"Type": "bind", "Source": source, "Target": "/etc/hosts", "ReadOnly": True}
    host["Mounts"] = [*host.get("Mounts", ()), bind]
    return {**config, "HostConfig": host}


def create_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    """The engine's ``POST /containers/create`` body for a spec (pure).

    Returns:
        ``{"config": ..., "networking_config": ...}``; the config holds ``HostConfig``.
    """
    config: dict[str, Any] = {
        "Image": spec.image,
        "Labels": dict(spec.labels),
        "Env": [f"{k}={v}" for k, v in spec.environment.items()],
        "OpenStdin": spec.stdin_open,
        # Closed for good when the one attached writer closes it: the tool sees EOF.
        "StdinOnce": spec.stdin_open,
        "Tty": False,
        "HostConfig": _host_config(spec),
    }
    if isinstance(spec.command, str):  # as docker-py and the docker CLI split it
        config["Cmd"] = shlex.split(spec.command)
    elif spec.command is not None:
        config["Cmd"] = list(spec.command)
    if spec.entrypoint is not None:
        config["Entrypoint"] = list(spec.entrypoint)
    if spec.ports:
        config["ExposedPorts"] = {f"{int(c)}/tcp": {} for c in spec.ports}
    if spec.working_dir:
        config["WorkingDir"] = spec.working_dir
    if spec.user:
        config["User"] = spec.user
    if network_disabled(spec):
        config["NetworkDisabled"] = True
    networking = None
    if spec.aliases and spec.network not in ("none", "bridge", "host", "default"):
        networking = {"EndpointsConfig": {spec.network: {"Aliases": list(spec.aliases)}}}
    return {"config": config, "networking_config": networking}


def _response_frames(response: Any) -> Iterator[Chunk]:
    """The frames of a multiplexed (no TTY) stream reply: (stream, data), stream 1 or 2."""
    reader = response.raw
    while True:
        header = reader.read(8)
        if len(header) < 8:
            return
        stream, length = struct.unpack(">BxxxL", header)
        if not length:
            continue
        data = reader.read(length)
        if not data:
            return
        yield stream, data


def _one_connection_pool(adapter: Any) -> None:
    """Make docker-py's unix-socket adapter keep one connection pool for every URL.

    It keeps one per URL, and a URL names its container: every call about a new container
    opened a new connection to the engine and dropped another URL's pool (and its idle
    connections) from its 25. All its pools connect to the same socket, so one serves all.
    """
    get_connection = adapter.get_connection

    def shared(url: str, proxies: Any = None) -> Any:
        return get_connection(_ONE_POOL_URL, proxies)

    adapter.get_connection = shared


class _ClosingStream:
    """Wrap a docker-py generator (and the response behind it) as a closable stream."""

    def __init__(self, items: Iterable[Any], closers: Iterable[Any] = ()) -> None:
        self._items = items
        self._closers = list(closers)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def close(self) -> None:
        for closer in [self._items, *self._closers]:
            close = getattr(closer, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001, S110 - closing a finished stream may fail
                    pass


class _DockerExec:
    """A started exec: demultiplexed output chunks, then its exit code."""

    def __init__(self, api: Any, exec_id: str, frames: Iterable[tuple[int, bytes]], sock: Any):
        self._api = api
        self._id = exec_id
        self._frames = frames
        self._sock = sock
        self._drained = False

    @property
    def id(self) -> str:
        return self._id

    def __iter__(self) -> Iterator[Chunk]:
        with docker_errors(f"read output of exec {self._id[:12]}"):
            for stream, data in self._frames:
                if data and stream in (1, 2):
                    yield stream, data
        self._drained = True

    def close(self) -> None:
        for target in (self._frames, self._sock):
            close = getattr(target, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001, S110 - already closed
                    pass

    def exit_code(self) -> int | None:
        # The output can end a moment before the engine records the exit: once the
        # stream is drained, give it that moment.
        deadline = time.monotonic() + (_EXIT_RECORD_SECONDS if self._drained else 0)
        while True:
            with docker_errors(f"inspect exec {self._id[:12]}"):
                code = self._api.exec_inspect(self._id).get("ExitCode")
            if code is not None or time.monotonic() >= deadline:
                return None if code is None else int(code)
            time.sleep(0.01)


class _DockerAttached(_DockerExec):
    """A pool agent's command: its output up to the agent's end trailers, then its exit
    code (see :mod:`orchestrator.core.agent`).

    Once both streams brought their trailer the command has ended: a clean exit is
    reported at once, and the container is made sure to end in the background. Its agent
    waits for the end of its standard input (a run given none) or exits at once: the
    attach socket is kept open, so that the caller may end (remove) the container when it
    suits it, for :data:`_AGENT_LINGER_SECONDS`; then the socket is closed, and a container
    still running at :data:`_TRAILER_EXIT_SECONDS` is killed (a tool that forged the
    trailers ends its run early and is killed). A failed exit waits for the container's own
    exit code, so that what the engine knows about it (an OOM kill) is recorded by then. A
    stream that ended without its trailers (killed, cut short) falls back to the
    container's exit code.
    """

    def __init__(
        self,
        engine: DockerEngine,
        ref: str,
        frames: Iterable[tuple[int, bytes]],
        sock: Any,
        nonce: str,
        raw: Any,
    ):
        super().__init__(None, ref, frames, sock)
        self._raw = raw  # the socket itself (the wrapper lets go of it when it is collected)
        self._engine = engine
        self._scanners = {1: EndScanner(nonce), 2: EndScanner(nonce)}
        self._reaping = False

    @property
    def _ended(self) -> bool:
        return all(scanner.ended for scanner in self._scanners.values())

    def __iter__(self) -> Iterator[Chunk]:
        with docker_errors(f"read output of {self._id[:12]}"):
            for stream, data in self._frames:
                scanner = self._scanners.get(stream)
                if scanner is None or not data:
                    continue
                if output := scanner.feed(data):
                    yield stream, output
                if self._ended:
                    if self._clean:  # its agent waits for the socket: end it in any case
                        self._reap()
                    break
        if not self._ended:
            for stream, scanner in self._scanners.items():
                if held := scanner.flush():
                    yield stream, held
        self._drained = True

    @property
    def _clean(self) -> bool:
        return all(scanner.exit_code == 0 for scanner in self._scanners.values())

    def exit_code(self) -> int | None:
        if self._clean:
            self._reap()
            return 0
        wait = self._engine.wait_container
        if self._ended:  # a failure (or two trailers that disagree): the container's code
            code = wait(self._id, _TRAILER_EXIT_SECONDS)
            if code is None:
                self._engine.kill_container(self._id)
                code = wait(self._id, _EXIT_RECORD_SECONDS)
            return code
        # No trailers: output ends when the container does, and the engine records the
        # exit a moment later. Before the output ended: None, unless it has just stopped.
        return wait(self._id, _EXIT_RECORD_SECONDS if self._drained else 0.05)

    def close(self) -> None:
        if self._reaping:  # the socket is the reaper's to close
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()
            return
        super().close()

    def _reap(self) -> None:
        """Make sure the container ends, in the background (once); the attach socket goes
        with it."""
        if self._reaping:
            return
        self._reaping = True
        threading.Thread(
            target=_end_container,
            args=(self._engine, self._id, self._sock, self._raw),
            name="agent-reap",
            daemon=True,
        ).start()


def _end_container(engine: DockerEngine, ref: str, sock: Any, raw: Any) -> None:
    """Close the attach socket of ``ref`` (``sock``, the wrapper of ``raw``) once it ended
    or after :data:`_AGENT_LINGER_SECONDS` (its agent may be waiting for that), and kill it
    unless it ended within :data:`_TRAILER_EXIT_SECONDS` (errors: it is gone)."""
    rest = _TRAILER_EXIT_SECONDS - _AGENT_LINGER_SECONDS
    try:
        if engine.wait_container(ref, _AGENT_LINGER_SECONDS) is None:
            _shut(raw)  # EOF: an agent waiting for it exits
            if engine.wait_container(ref, rest) is None:
                engine.kill_container(ref)
    except OrchestratorError:  # removed already
        pass
    finally:
        _shut(raw)
        try:
            sock.close()
        except Exception:  # noqa: BLE001, S110 - already closed
            pass


def _label_filter(label_filters: Iterable[str]) -> dict[str, Any]:
    labels = list(label_filters)
    return {"label": labels} if labels else {}


class DockerEngine(Engine):
    """A Docker engine reached through docker-py.

    Args:
        client: a ``docker.DockerClient`` (its low-level ``api`` is what is used).
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.api = client.api
        self.loopback_hosts = LoopbackHosts(self.api, self.put_archive)
        if not str(self.api.base_url).startswith(("http://", "https://")):
            # A local socket (or ssh): no HTTP proxy applies, so requests' reading of the
            # proxy variables (a quarter of a millisecond per call) is skipped.
            self.api.trust_env = False
        adapter = getattr(self.api, "_custom_adapter", None)
        if isinstance(adapter, docker.transport.UnixHTTPAdapter):
            _one_connection_pool(adapter)

    @classmethod
    def from_env(
        cls,
        *,
        timeout_seconds: float = 60,
        max_pool_size: int = 16,
        environ: Mapping[str, str] | None = None,
    ) -> DockerEngine:
        """Connect through ``DOCKER_HOST`` & co (docker-py's own variables).

        Raises:
            DockerUnavailable: the engine does not answer.
        """
        with docker_errors("connect to the Docker engine"):
            kwargs: dict[str, Any] = {"timeout": timeout_seconds, "max_pool_size": max_pool_size}
            if environ is not None:
                kwargs["environment"] = dict(environ)
            return cls(docker.from_env(**kwargs))

    # -- containers ---------------------------------------------------------------------

    def create_container(self, spec: ContainerSpec) -> Container:
        return self.inspect_container(self.create_container_id(spec))

    def create_container_id(self, spec: ContainerSpec) -> str:
        kwargs = create_kwargs(spec)
        config = {**kwargs["config"], "NetworkingConfig": kwargs["networking_config"]}
        brings_its_own = any(m.target.rstrip("/") == "/etc/hosts" for m in spec.mounts)
        if not config.get("NetworkDisabled") or brings_its_own:
            return self._create(spec, config)
        hosts = self.loopback_hosts.source(spec.image)
        if hosts is not None:
            mounted = _with_hosts_mount(config, hosts)
            try:
                return self._create(spec, mounted)
            except DockerError as exc:
                if hosts not in str(exc):
                    raise
                self.loopback_hosts.forget(hosts)  # removed since: uploaded this time
        if spec.read_only:  # no upload into a read-only root: the engine's sandbox writes it
            return self._create(spec, {k: v for k, v in config.items() if k != "NetworkDisabled"})
        container_id = self._create(spec, config)
        self._upload_loopback_hosts(container_id)
        return container_id

    def _create(self, spec: ContainerSpec, config: dict[str, Any]) -> str:
        with docker_errors(f"create container {spec.name}", not_found=ImageNotFound):
            created = self.api.create_container_from_config(config, name=spec.name)
        return str(created["Id"])

    def _upload_loopback_hosts(self, container_id: str) -> None:
        """Upload the ``/etc/hosts`` of a container without a network into it (where the
        shared file cannot be mounted)."""
        try:
            self.put_archive(container_id, "/", hosts_tar("etc/hosts"))
        except OrchestratorError as exc:  # an image whose /etc takes no file: its loss only
            log.warning("container %s has no /etc/hosts: %s", container_id, exc)

    def start_container(self, ref: str) -> None:
        with docker_errors(f"start container {ref}"):
            try:
                self.api.start(ref)
            except docker.errors.NotFound as exc:
                if self.find_container(ref) is None:
                    raise
                # The container is there: what is missing is a network it joins.
                raise NetworkNotFound(f"start container {ref}: {exc.explanation}") from exc

    def inspect_container(self, ref: str) -> Container:
        with docker_errors(f"inspect container {ref}"):
            return parse.container(self.api.inspect_container(ref))

    def list_containers(
        self, label_filters: Iterable[str] = (), *, include_stopped: bool = True
    ) -> list[Container]:
        with docker_errors("list containers"):
            listed = self.api.containers(all=include_stopped, filters=_label_filter(label_filters))
        found = []
        for summary in listed:
            item = self.find_container(summary["Id"])
            if item is not None:  # vanished while the list was read
                found.append(item)
        return found

    def running_container_ids(self, label_filters: Iterable[str] = ()) -> set[str]:
        filters = {**_label_filter(label_filters), "status": ["running"]}
        with docker_errors("list running containers"):
            listed = self.api.containers(filters=filters)
        return {summary["Id"] for summary in listed}

    def wait_container(self, ref: str, timeout_seconds: float) -> int | None:
        with docker_errors(f"wait for container {ref}"):
            try:
                outcome = self.api.wait(ref, timeout=timeout_seconds)
            except Exception as exc:
                if is_read_timeout(exc):
                    return None
                raise
        return int(outcome.get("StatusCode", -1))

    def kill_container(self, ref: str, signal: str = "SIGKILL") -> bool:
        with docker_errors(f"kill container {ref}"):
            try:
                self.api.kill(ref, signal=signal)
            except docker.errors.APIError as exc:
                if exc.status_code in (404, 409):  # gone, or not running
                    return False
                raise
        return True

    def stop_container(self, ref: str, grace_seconds: int) -> None:
        with docker_errors(f"stop container {ref}"):
            self.api.stop(ref, timeout=grace_seconds)

    def remove_container(self, ref: str) -> bool:
        try:
            with docker_errors(f"remove container {ref}"):
                self.api.remove_container(ref, force=True, v=True)
            return True
        except ContainerNotFound:
            return False
        except ContainerConflict as exc:
            if "already in progress" not in str(exc):
                raise
        # Another caller removes it (a worker's remover, a cleanup, the janitor): gone
        # once that removal is done, as for the caller that asked first.
        deadline = time.monotonic() + _REMOVAL_WAIT_SECONDS
        while self.find_container(ref) is not None:
            if time.monotonic() > deadline:
                raise DockerError(f"remove container {ref}: another removal of it never ended")
            time.sleep(0.05)
        return False

    def container_logs(
        self,
        ref: str,
        *,
        stdout: bool = True,
        stderr: bool = True,
        follow: bool = False,
        tail: int | None = None,
    ) -> Stream[bytes]:
        with docker_errors(f"read logs of {ref}"):
            stream = self.api.logs(
                ref,
                stdout=stdout,
                stderr=stderr,
                stream=True,
                follow=follow,
                tail="all" if tail is None else tail,
            )
        return _ClosingStream(_translated(stream, f"read logs of {ref}"), [stream])

    def follow_output(self, ref: str) -> Stream[Chunk]:
        # docker-py's logs() inspects the container first (for its TTY) and merges the
        # two streams: one request here, its frames read with their stream kept.
        params = {"stdout": 1, "stderr": 1, "follow": 1, "timestamps": 0, "tail": "all"}
        response = self._open_stream("logs", ref, params, f"follow output of {ref}")
        self.api._disable_socket_timeout(response)  # a silent tool is no read timeout
        # Closing it shuts the socket, which ends a read blocked in another thread.
        frames = docker.types.CancellableStream(_response_frames(response), response)
        return _ClosingStream(_translated(frames, f"follow output of {ref}"), [frames])

    def container_stats(self, ref: str) -> dict[str, Any]:
        with docker_errors(f"read stats of {ref}"):
            try:
                return dict(self.api.stats(ref, stream=False, decode=False))
            except ValueError:
                # The engine answers 200 with an empty body when the container stops or is
                # removed while it samples: gone -> not found, stopped -> an empty sample.
                if self.find_container(ref) is None:
                    raise ContainerNotFound(f"read stats of {ref}: no such container") from None
                return {"read": STOPPED_SAMPLE_TIME, "memory_stats": {}, "cpu_stats": {}}

    def stream_stats(self, ref: str) -> Stream[dict[str, Any]]:
        # docker-py's stats() raises for a missing container only once iterated: the
        # reply's status is checked here instead (no inspect first, a round trip saved).
        response = self._open_stream("stats", ref, {"stream": True}, f"follow stats of {ref}")
        items = self.api._stream_helper(response, decode=True)
        return _ClosingStream(_translated(items, f"follow stats of {ref}"), [items])

    def _open_stream(self, endpoint: str, ref: str, params: dict[str, Any], action: str) -> Any:
        """GET ``/containers/{ref}/{endpoint}`` as a stream, its status checked at once
        (a missing container raises here, not while the stream is read)."""
        api = self.api
        with docker_errors(action):
            url = api._url("/containers/{0}/" + endpoint, ref)
            response = api._get(url, params=params, stream=True)
            api._raise_for_status(response)
        return response

    def exec_start(self, ref: str, spec: ExecSpec) -> _DockerExec:
        with docker_errors(f"exec in {ref}", conflict=DockerError):
            exec_id = self.api.exec_create(
                ref,
                list(spec.argv),
                stdout=True,
                stderr=True,
                stdin=spec.stdin is not None,
                environment=dict(spec.environment) or None,
                workdir=spec.working_dir,
                user=spec.user or "",
            )["Id"]
            sock = self.api.exec_start(exec_id, socket=True)
        raw = getattr(sock, "_sock", sock)
        # Our own wait loop enforces the deadline; a silent command is no read timeout.
        raw.settimeout(None)
        if spec.stdin is not None:
            threading.Thread(
                target=_feed_stdin, args=(raw, spec.stdin), name="exec-stdin", daemon=True
            ).start()
        frames = docker.utils.socket.frames_iter(sock, tty=False)
        return _DockerExec(self.api, exec_id, frames, sock)

    def run_attached(self, ref: str, spec: ExecSpec) -> _DockerAttached:
        nonce = new_nonce()
        line = agent_input(ref, spec, nonce)
        with docker_errors(f"attach to {ref}", conflict=DockerError):
            sock = self.api.attach_socket(
                ref, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
        raw = getattr(sock, "_sock", sock)
        raw.settimeout(None)  # our own wait loop enforces the deadline
        if spec.stdin:
            threading.Thread(
                target=_feed_stdin, args=(raw, line + spec.stdin), name="agent-stdin", daemon=True
            ).start()
        else:  # one short line: no thread; the input stays open (the agent waits for its end)
            _send_line(raw, line)
        frames = docker.utils.socket.frames_iter(sock, tty=False)
        # docker-py's reads poll without a timeout: a timer shuts the socket instead, which
        # ends the stream, if the agent has not answered in time.
        watchdog = threading.Timer(_AGENT_TAKES_SECONDS, _shut, args=(raw,))
        watchdog.start()
        try:
            with docker_errors(f"give {ref} its command"):
                first = _agent_took(frames, ref)
        except BaseException:
            _shut(raw)  # closing the wrapper alone leaves the engine writing to a full socket
            sock.close()
            raise
        finally:
            watchdog.cancel()
        return _DockerAttached(self, ref, itertools.chain(first, frames), sock, nonce, raw)

    def attach_stdin(self, ref: str, data: bytes) -> None:
        with docker_errors(f"attach to the standard input of {ref}"):
            sock = self.api.attach_socket(ref, params={"stdin": 1, "stream": 1})
        raw = getattr(sock, "_sock", sock)
        raw.settimeout(None)
        threading.Thread(
            target=_feed_and_close, args=(raw, sock, data), name="stdin", daemon=True
        ).start()

    def put_archive(self, ref: str, path: str, tar_bytes: bytes | TarStream) -> None:
        with docker_errors(f"write files into {ref}:{path}"):
            try:
                # docker-py's put_archive has no noOverwriteDirNonDir: the same call, with it.
                # A TarStream has a len(): requests sends its pieces with a Content-Length.
                reply = self.api._put(
                    self.api._url("/containers/{0}/archive", ref),
                    params={"path": path, "noOverwriteDirNonDir": "true"},
                    data=tar_bytes,
                )
                self.api._raise_for_status(reply)
            except docker.errors.NotFound as exc:
                raise self._path_or_container(ref, path, exc) from exc

    def get_archive(self, ref: str, path: str) -> tuple[Stream[bytes], ArchiveStat]:
        with docker_errors(f"read {ref}:{path}"):
            try:
                chunks, stat = self.api.get_archive(ref, path)
            except docker.errors.NotFound as exc:
                raise self._path_or_container(ref, path, exc) from exc
        return _ClosingStream(_translated(chunks, f"read {ref}:{path}")), ArchiveStat(
            name=str(stat.get("name", "")),
            size=int(stat.get("size", 0)),
            mode=int(stat.get("mode", 0)),
            link_target=str(stat.get("linkTarget", "")),
        )

    def _path_or_container(self, ref: str, path: str, exc: Any) -> Exception:
        """A 404 from the archive API: the container, or only the path, is missing."""
        if self.find_container(ref) is None:
            return ContainerNotFound(f"container {ref}: {exc.explanation}")
        return PathNotFound(f"{path}: no such file or directory in container {ref}")

    # -- networks -----------------------------------------------------------------------

    def create_network(self, spec: NetworkSpec) -> Network:
        ipam = None
        if spec.subnet:
            ipam = docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=spec.subnet, gateway=spec.gateway)]
            )
        with docker_errors(f"create network {spec.name}"):
            created = self.api.create_network(
                spec.name,
                driver="bridge",
                internal=spec.internal,
                labels=dict(spec.labels),
                ipam=ipam,
                options=dict(spec.options) or None,
                check_duplicate=True,
            )
        return self.inspect_network(created["Id"])

    def inspect_network(self, name: str) -> Network:
        with docker_errors(f"inspect network {name}", not_found=NetworkNotFound):
            raw = self.api.inspect_network(name)
        if name not in (raw.get("Name"), raw.get("Id")) and not raw.get("Id", "").startswith(name):
            raise NetworkNotFound(f"inspect network {name}: no network of that exact name")
        return parse.network(raw)

    def list_networks(self, label_filters: Iterable[str] = ()) -> list[Network]:
        with docker_errors("list networks", not_found=NetworkNotFound):
            listed = self.api.networks(filters=_label_filter(label_filters))
        found = []
        for summary in listed:
            item = self.find_network(summary["Id"])
            if item is not None:
                found.append(item)
        return found

    def remove_network(self, name: str) -> None:
        with docker_errors(f"remove network {name}", not_found=NetworkNotFound):
            try:
                self.api.remove_network(name)
            except docker.errors.APIError as exc:
                explanation = str(exc.explanation or exc)
                if exc.status_code not in (403, 409):
                    raise
                if "pre-defined" in explanation:  # bridge, host, none
                    raise DockerError(f"remove network {name}: {explanation}") from exc
                # "network x id y has active endpoints"
                raise NetworkInUse(f"remove network {name}: {explanation}") from exc

    def connect_network(self, network: str, container: str, aliases: Iterable[str] = ()) -> None:
        target = self.find_container(container)
        if self._attached_to(network, target):
            return
        if target is not None and "none" in target.networks:
            # Refused here for one made with networking disabled too: the engine would
            # record an endpoint it never gets, which keeps the network from being removed.
            raise DockerError(
                f"connect {container} to {network}: the container has no networking, so "
                "it cannot join a network"
            )
        with docker_errors(f"connect {container} to {network}", not_found=NetworkNotFound):
            try:
                self.api.connect_container_to_network(
                    container, network, aliases=list(aliases) or None
                )
            except docker.errors.APIError as exc:
                if exc.status_code == 404:
                    raise self._missing_of_two(network, container, exc) from exc
                if exc.status_code == 403 and self._attached(network, container):
                    return  # a concurrent connect won the race
                raise

    def disconnect_network(self, network: str, container: str) -> None:
        if not self._attached(network, container):
            return
        with docker_errors(f"disconnect {container} from {network}", not_found=NetworkNotFound):
            try:
                self.api.disconnect_container_from_network(container, network, force=True)
            except docker.errors.APIError as exc:
                if exc.status_code != 404 and not self._attached(network, container):
                    return  # a concurrent disconnect won the race
                raise

    def _missing_of_two(self, network: str, container: str, exc: Any) -> Exception:
        """A 404 while connecting: say which of the two is missing."""
        action = f"connect {container} to {network}"
        if self.find_network(network) is None:
            return NetworkNotFound(f"{action}: {exc.explanation}")
        return ContainerNotFound(f"{action}: {exc.explanation}")

    def _attached(self, network: str, container: str) -> bool:
        """True when ``container`` (id or name) is attached to ``network``.

        The container's own list is what counts: the network lists only the containers
        running in it, while a created or stopped one stays attached too.
        """
        return self._attached_to(network, self.find_container(container))

    def _attached_to(self, network: str, target: Container | None) -> bool:
        """:meth:`_attached` for a container already inspected (None: not there)."""
        return target is not None and self.inspect_network(network).name in target.networks

    # -- volumes ------------------------------------------------------------------------

    def create_volume(self, name: str, labels: Mapping[str, str]) -> Volume:
        with docker_errors(f"create volume {name}", not_found=VolumeNotFound):
            return parse.volume(self.api.create_volume(name, labels=dict(labels)))

    def inspect_volume(self, name: str) -> Volume:
        with docker_errors(f"inspect volume {name}", not_found=VolumeNotFound):
            return parse.volume(self.api.inspect_volume(name))

    def list_volumes(self, label_filters: Iterable[str] = ()) -> list[Volume]:
        with docker_errors("list volumes", not_found=VolumeNotFound):
            listed = self.api.volumes(filters=_label_filter(label_filters)) or {}
        return [parse.volume(raw) for raw in listed.get("Volumes") or []]

    def remove_volume(self, name: str) -> None:
        with docker_errors(f"remove volume {name}", not_found=VolumeNotFound):
            try:
                self.api.remove_volume(name)
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    raise VolumeInUse(f"remove volume {name}: {exc.explanation}") from exc
                raise

    # -- images -------------------------------------------------------------------------

    def inspect_image(self, ref: str) -> Image:
        with docker_errors(f"inspect image {ref}", not_found=ImageNotFound):
            return parse.image(self.api.inspect_image(ref))

    def pull_image(self, ref: str) -> Image:
        repository, tag = parse.split_reference(ref)
        with docker_errors(f"pull image {ref}", not_found=ImageNotFound):
            try:
                for event in self.api.pull(repository, tag=tag, stream=True, decode=True):
                    if isinstance(event, dict) and event.get("error"):
                        raise ImageNotFound(_pull_failed(ref, str(event["error"])))
            except docker.errors.APIError as exc:
                if exc.status_code == 400:  # an invalid reference: no pull was tried
                    raise
                # The engine answers 500 when no registry is reachable, 404 or 401/403
                # when the registry has no such repository (or will not say).
                raise ImageNotFound(_pull_failed(ref, str(exc.explanation or exc))) from exc
        return self.inspect_image(ref)

    def build_image(self, spec: BuildSpec) -> Image:
        with docker_errors(f"build image {spec.tag}", not_found=ImageNotFound):
            try:
                image_id = self._build(spec)
            except docker.errors.APIError as exc:
                # 500 "Cannot locate specified Dockerfile", 400 "dockerfile parse error",
                # 400 "invalid reference format": refused before any step ran.
                explanation = exc.explanation or exc
                raise ImageBuildFailed(f"build image {spec.tag}: {explanation}") from exc
        return self.inspect_image(image_id or spec.tag)

    def _build(self, spec: BuildSpec) -> str | None:
        """Run a build to its end (or its deadline); the id of the image it reports.

        ``POST /build`` is called directly: docker-py's ``build`` refuses the CPU quota
        and cgroup parent, and would add the worker's proxy settings to the build args.

        Raises:
            ImageBuildFailed: a step failed (the message holds the log's tail), or the
                build ran past ``spec.timeout_seconds`` and was stopped.
        """
        api = self.api
        headers = {"Content-Type": "application/x-tar"}
        api._set_auth_headers(headers)  # private registries of FROM images, as docker-py
        response = api._post(
            api._url("/build"),
            data=spec.context_tar,
            params=build_params(spec),
            headers=headers,
            stream=True,
            # A read timeout only as a backstop: the watchdog ends the build on time.
            timeout=None if spec.timeout_seconds is None else spec.timeout_seconds + 60,
        )
        api._raise_for_status(response)
        watchdog = _BuildWatchdog(api, response, spec.timeout_seconds)
        steps = _StepImages()
        image_id = None
        try:
            image_id = _read_build(api, response, spec.tag, watchdog, steps)
        except Exception as exc:
            if watchdog.fired or is_read_timeout(exc):
                raise ImageBuildFailed(
                    f"build image {spec.tag}: stopped after {spec.timeout_seconds:g} s: the "
                    "build ran past its time limit"
                ) from exc
            raise
        finally:
            watchdog.cancel()
            response.close()
            self._remove_step_images(steps.made, keep=image_id)
        return image_id

    def _remove_step_images(self, made: list[str], keep: str | None) -> None:
        """Remove the images this build's steps made that no image needs: all of them
        after a failure, the leaves of earlier stages after a success.

        The classic builder keeps each step's image (its cache); a failed or multi-stage
        build would leave them on the host, untagged and unlabelled, for ever. The newest
        go first (removing one removes its parents nothing else needs); an image that
        still has a child or a container (the final image's ancestors, a concurrent
        build's step) is refused by the engine and stays.
        """
        kept = (keep or "").removeprefix("sha256:")
        for image_id in reversed(made):
            if kept.startswith(image_id):
                continue
            try:
                self.api.remove_image(image_id)
            except Exception:  # noqa: BLE001 - gone with a child, still needed, engine away
                continue  # never hides the build's own outcome

    def tag_image(self, ref: str, tag: str) -> None:
        repository, version = parse.split_reference(tag)
        with docker_errors(f"tag image {ref} as {tag}", not_found=ImageNotFound):
            self.api.tag(ref, repository, version)

    def list_images(self, label_filters: Iterable[str] = ()) -> list[Image]:
        with docker_errors("list images", not_found=ImageNotFound):
            listed = self.api.images(filters=_label_filter(label_filters))
        found = []
        for summary in listed:
            try:
                found.append(self.inspect_image(summary["Id"]))
            except ImageNotFound:
                continue
        return found

    def remove_image(self, ref: str) -> None:
        with docker_errors(f"remove image {ref}", not_found=ImageNotFound, conflict=DockerError):
            self.api.remove_image(ref)

    # -- engine -------------------------------------------------------------------------

    def ping(self) -> None:
        with docker_errors("ping the Docker engine"):
            self.api.ping()

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001, S110 - closing twice is harmless
            pass


def build_params(spec: BuildSpec) -> dict[str, Any]:
    """The query of ``POST /build`` for a spec (pure): limits of every ``RUN`` step included.

    Returns:
        The parameters, without the ones the spec leaves unset.
    """
    params: dict[str, Any] = {
        "t": spec.tag,
        "dockerfile": spec.dockerfile,
        "networkmode": spec.network_mode,
        "rm": "1",
        "forcerm": "1",
        "pull": "1" if spec.pull else "",
        "buildargs": json.dumps(dict(spec.build_args)) if spec.build_args else None,
        "labels": json.dumps(dict(spec.labels)) if spec.labels else None,
        "cgroupparent": spec.cgroup_parent or None,
    }
    if spec.memory_mb is not None:
        params["memory"] = params["memswap"] = spec.memory_mb * 1024 * 1024  # no swap
    if spec.cpu_limit is not None:
        params["cpuperiod"] = 100_000
        params["cpuquota"] = max(1000, int(spec.cpu_limit * 100_000))
    return {k: v for k, v in params.items() if v not in (None, "")}


class _BuildWatchdog:
    """Cuts a build's connection at its deadline: the engine then stops the build.

    The engine cancels a build whose client went away: it kills the running step's
    container and removes it (``forcerm``). A socket read timeout would not do: a step
    that prints something every few seconds never lets one expire.
    """

    def __init__(self, api: Any, response: Any, timeout_seconds: float | None) -> None:
        self.fired = False
        self._api = api
        self._response = response
        self._timer: threading.Timer | None = None
        if timeout_seconds is not None:
            self._timer = threading.Timer(timeout_seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        try:
            raw = self._api._get_raw_response_socket(self._response)
            getattr(raw, "_sock", raw).shutdown(socket.SHUT_RDWR)
        except Exception:  # noqa: BLE001 - no socket to shut: close the response instead
            self._response.close()

    def cancel(self) -> None:
        """The build ended: no cut."""
        if self._timer is not None:
            self._timer.cancel()


class _StepImages:
    """The images a classic build's steps make, read from its log.

    ``Step 2/3 : RUN x`` starts a step; `` ---> Using cache`` means its image was there
    before (not ours to remove); `` ---> <short id>`` ends it with its image. The image
    after a ``FROM`` step is the base image: never ours.
    """

    _STEP = re.compile(r"^Step \d+/\d+ : (\S+)")
    _IMAGE = re.compile(r"^ ---> ([0-9a-f]{12,64})$")

    def __init__(self) -> None:
        self.made: list[str] = []
        self._keyword = ""
        self._cached = False

    def read(self, text: str) -> None:
        """Take in a piece of the build's log."""
        for line in text.splitlines():
            step = self._STEP.match(line)
            if step:
                self._keyword, self._cached = step.group(1).upper(), False
            elif line.strip() == "---> Using cache":
                self._cached = True
            else:
                image = self._IMAGE.match(line.rstrip())
                if image and self._keyword not in ("", "FROM") and not self._cached:
                    self.made.append(image.group(1))


def _read_build(
    api: Any, response: Any, tag: str, watchdog: _BuildWatchdog, steps: _StepImages
) -> str | None:
    """Read a build's progress to its end; the id of the image it reports, if any.

    Raises:
        ImageBuildFailed: a step failed (the message holds the log's tail).
    """
    tail: list[str] = []
    image_id = None
    for event in api._stream_helper(response, decode=True):
        if "stream" in event:
            tail = (tail + str(event["stream"]).splitlines())[-20:]
            steps.read(str(event["stream"]))
        if "error" in event:
            detail = "\n".join(tail[-10:])
            raise ImageBuildFailed(f"build image {tag}: {event['error']}\n{detail}")
        aux = event.get("aux")
        if isinstance(aux, dict) and aux.get("ID"):
            image_id = str(aux["ID"])
    if watchdog.fired:  # the stream may end quietly once its socket is shut
        raise ImageBuildFailed(f"build image {tag}: cut at its deadline")
    return image_id


def _translated(items: Iterable[Any], action: str) -> Iterator[Any]:
    """Iterate a docker-py stream, translating the errors raised while reading it."""
    with docker_errors(action):
        yield from items


def _pull_failed(ref: str, detail: str) -> str:
    """The message of a pull that found no image: what failed, then the engine's reason."""
    return (
        f"pull image {ref}: cannot be pulled (its registry has no such image, or no "
        f"registry is reachable): {detail}"
    )


def _agent_took(frames: Iterator[tuple[int, bytes]], ref: str) -> list[tuple[int, bytes]]:
    """Read a pool agent's acknowledgement off the front of its standard error.

    The engine copies stdout and stderr apart, so the command's first output may come
    before it: what came before it, or after it in the same frame, is given back, to be
    read first.

    Raises:
        DockerError: the stream ended first, or stderr began with something else: the
            agent did not take the command (the container is not running, or is no agent
            waiting for one).
    """
    held: list[tuple[int, bytes]] = []
    held_bytes = 0
    seen = b""
    for stream, data in frames:
        if stream != 2:
            held.append((stream, data))
            held_bytes += len(data)
            if held_bytes > _AGENT_HELD_MAX_BYTES:  # no agent answers so late: not one
                break
            continue
        seen += data
        if not (seen.startswith(AGENT_TOOK) or AGENT_TOOK.startswith(seen)):
            break
        if len(seen) >= len(AGENT_TOOK):
            rest = seen[len(AGENT_TOOK) :]
            return held + ([(2, rest)] if rest else [])
    raise DockerError(
        f"{ref} did not take its command: it is not running, or it is not a pool agent "
        f"waiting for one (nothing within {_AGENT_TAKES_SECONDS:.0f} s)"
    )


def _shut(raw: Any) -> None:
    try:
        raw.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _feed_and_close(raw: Any, sock: Any, data: bytes) -> None:
    """Write a container's standard input, close it, and wait for the engine to hang up
    (when the container ends): closing at once could cut the stdin before it is copied."""
    _feed_stdin(raw, data)
    try:
        while raw.recv(65536):
            pass
    except OSError:
        pass
    finally:
        sock.close()


def _send_line(raw: Any, line: bytes) -> None:
    """Write an agent's line and leave its standard input open (errors: the agent is gone,
    which reading its acknowledgement tells)."""
    try:
        raw.sendall(line)
    except OSError:
        pass


def _feed_stdin(raw: Any, data: bytes) -> None:
    """Write an exec's standard input, then close our writing half (EOF for the command)."""
    try:
        view = memoryview(data)
        while view:
            sent = raw.send(view[:65536])
            view = view[sent:]
    except OSError:
        pass  # the command ended without reading all of it
    finally:
        try:
            raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass
