"""The interface every engine implements: exactly the operations the orchestrator needs.

:class:`~orchestrator.engine.docker_engine.DockerEngine` drives a real Docker engine
through docker-py; :class:`~orchestrator.engine.fake.FakeEngine` is an in-memory double
for unit tests. One contract suite (``tests/contract``) runs against both, so the fake
cannot drift from the real engine without a red test.

Every method takes and returns the project's own types (:mod:`orchestrator.core.types`)
and raises only :mod:`orchestrator.errors` types:

- ``DockerUnavailable``: the engine cannot be reached (transient; tasks retry on it);
- ``ContainerNotFound`` / ``NetworkNotFound`` / ``VolumeNotFound`` / ``ImageNotFound`` /
  ``PathNotFound`` (inside a container):
  the object named does not exist;
- ``ContainerConflict`` (a name in use), ``NetworkInUse`` (endpoints still attached),
  ``VolumeInUse`` (a container still mounts it);
- ``ImageBuildFailed``; ``DockerError`` for anything else the engine refuses.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.core.archive import TarStream
from orchestrator.core.types import (
    ArchiveStat,
    BuildSpec,
    Chunk,
    Container,
    ContainerSpec,
    ExecSpec,
    ExecStream,
    Image,
    Network,
    NetworkSpec,
    Stream,
    Volume,
)

__all__ = ["Engine"]


class Engine(abc.ABC):
    """One Docker engine, as the orchestrator uses it."""

    # -- containers ---------------------------------------------------------------------

    @abc.abstractmethod
    def create_container(self, spec: ContainerSpec) -> Container:
        """Create (not start) a container.

        Its labels are the image's labels overlaid with ``spec.labels``. The network is
        not checked here but when the container starts.

        Raises:
            ImageNotFound: the image is not on this engine (checked before the name).
            ContainerConflict: a container of that name exists already.
            DockerError: the name is invalid, or the engine refused the spec.
        """

    def create_container_id(self, spec: ContainerSpec) -> str:
        """Create (not start) a container and return only its id: one round trip where
        the engine allows it, as its state is known (``created``) without an inspect.

        Raises:
            As :meth:`create_container`.
        """
        return self.create_container(spec).id

    @abc.abstractmethod
    def start_container(self, ref: str) -> None:
        """Start a created container; an exited one runs again (a running one is left).

        Raises:
            ContainerNotFound: no such container.
            NetworkNotFound: a network it joins does not exist (any more).
        """

    @abc.abstractmethod
    def inspect_container(self, ref: str) -> Container:
        """Inspect a container by id or name.

        Raises:
            ContainerNotFound: no such container.
        """

    def find_container(self, ref: str) -> Container | None:
        """The container with this id or name, or None."""
        from orchestrator.errors import ContainerNotFound

        try:
            return self.inspect_container(ref)
        except ContainerNotFound:
            return None

    @abc.abstractmethod
    def list_containers(
        self, label_filters: Iterable[str] = (), *, include_stopped: bool = True
    ) -> list[Container]:
        """Containers carrying every ``key=value`` (or bare ``key``) label given.

        A container that vanishes while the list is being read is left out, never an error.
        """

    def running_container_ids(self, label_filters: Iterable[str] = ()) -> set[str]:
        """Ids of the running containers carrying every label given: what
        ``list_containers(label_filters, include_stopped=False)`` lists, in one call where
        the engine allows it (no inspect of each)."""
        return {c.id for c in self.list_containers(label_filters, include_stopped=False)}

    @abc.abstractmethod
    def wait_container(self, ref: str, timeout_seconds: float) -> int | None:
        """Wait up to ``timeout_seconds`` for the container not to be running.

        As Docker's own wait: a container never started answers at once with 0, and one
        removed while waited on answers 137 (it was killed).

        Returns:
            Its exit code, or None if it was still running when the time was up (the
            time running out is no error).

        Raises:
            ContainerNotFound: no such container.
        """

    @abc.abstractmethod
    def kill_container(self, ref: str, signal: str = "SIGKILL") -> bool:
        """Send ``signal`` (``SIGTERM``, ``TERM`` or ``15``) to the container's main process.

        That process is PID 1 of the container, which ignores every signal it has no
        handler for: only SIGKILL always ends it (exit code 137); another signal ends it
        only through its handler, with whatever exit code that handler chooses.

        Returns:
            True when the signal was sent; False when the container is not running or
            does not exist.

        Raises:
            DockerError: ``signal`` names no signal.
        """

    @abc.abstractmethod
    def stop_container(self, ref: str, grace_seconds: int) -> None:
        """SIGTERM, then SIGKILL after ``grace_seconds``; a stopped one is left as it is.

        A process with a SIGTERM handler ends with its handler's exit code (143 by
        convention); one without (PID 1 then ignores SIGTERM) is killed after the grace,
        with 137.

        Raises:
            ContainerNotFound: no such container.
        """

    @abc.abstractmethod
    def remove_container(self, ref: str) -> bool:
        """Force-remove a container and its anonymous volumes.

        A container another caller is removing at the same moment is waited for: once
        this returns, the container is gone either way.

        Returns:
            True if a container was removed here, False if there was none (or another
            removal took it).
        """

    @abc.abstractmethod
    def container_logs(
        self,
        ref: str,
        *,
        stdout: bool = True,
        stderr: bool = True,
        follow: bool = False,
        tail: int | None = None,
    ) -> Stream[bytes]:
        """The container's output as raw chunks; with ``follow``, until it exits.

        ``tail`` takes the last lines of the whole log first, then ``stdout`` and
        ``stderr`` pick among them (as Docker does): the last line being on stderr,
        ``tail=1`` of stdout alone is empty. The order of stdout and stderr lines written
        at nearly the same moment is not guaranteed.

        Raises:
            ContainerNotFound: no such container.
        """

    @abc.abstractmethod
    def follow_output(self, ref: str) -> Stream[Chunk]:
        """Both output streams of a container (never given a TTY), in one, until it exits.

        As ``container_logs(ref, follow=True)``, from the start of its log, with each chunk
        tagged with its stream: ``(1, data)`` for stdout, ``(2, data)`` for stderr.

        Raises:
            ContainerNotFound: no such container.
        """

    @abc.abstractmethod
    def container_stats(self, ref: str) -> dict[str, Any]:
        """One stats sample, as the engine's ``/stats?stream=false`` returns it.

        A container that is not running gives an empty sample: ``read`` is the zero time
        ``0001-01-01T00:00:00Z`` and ``memory_stats`` is empty.

        Raises:
            ContainerNotFound: no such container.
        """

    @abc.abstractmethod
    def stream_stats(self, ref: str) -> Stream[dict[str, Any]]:
        """Stats samples, the first at once, then about once a second, until closed.

        The stream does not end with the container: once it has stopped, the samples
        are empty ones (``read`` is the zero time ``0001-01-01T00:00:00Z``). Readers stop
        at the first such sample and close the stream.

        Raises:
            ContainerNotFound: no such container.
        """

    @abc.abstractmethod
    def exec_start(self, ref: str, spec: ExecSpec) -> ExecStream:
        """Start a command in a running container and stream its output.

        The stream's ``exit_code()`` is None while the command runs, its exit code once
        the output has ended, and 137 if the container stopped under it.

        Raises:
            ContainerNotFound: no such container.
            DockerError: the container is not running (created or exited).
        """

    @abc.abstractmethod
    def run_attached(self, ref: str, spec: ExecSpec) -> ExecStream:
        """Give a waiting pool agent its command and stream its output.

        The container must run :data:`orchestrator.core.agent.AGENT_ENTRYPOINT` with its
        standard input open (a warm-pool container), and serves one command: the agent
        runs it, then writes an end trailer with its exit code on both streams and exits
        with that code (:mod:`orchestrator.core.agent`). The stream ends with the command
        (what a process it left behind writes later is not its output), stripped of the
        trailers, and ``exit_code()`` is the command's: at once for a clean exit, once
        the container has ended for a failed one, the container's if the stream ended
        without trailers (killed). A container still running shortly after its trailers
        (they were forged) is killed. ``spec.stdin`` is the command's standard input (None:
        none, EOF at once); ``spec.user`` is not supported.

        Raises:
            ContainerNotFound: no such container.
            DockerError: it is not running, not a pool agent, or was given a command
                already; or the command cannot be given (nothing was run).
        """

    @abc.abstractmethod
    def attach_stdin(self, ref: str, data: bytes) -> None:
        """Give ``data`` to the main process's standard input, then close it (EOF).

        The container must have been made with ``stdin_open``; attach before starting it,
        as ``docker run -i`` does. The bytes are written in the background, as fast as the
        process reads them; a process that exits without reading them all ends the writing.

        Raises:
            ContainerNotFound: no such container.
        """

    @abc.abstractmethod
    def put_archive(self, ref: str, path: str, tar_bytes: bytes | TarStream) -> None:
        """Extract a tar archive into directory ``path`` of the container.

        The archive is one buffer, or a :class:`~orchestrator.core.archive.TarStream` whose
        pieces are sent as they are (a file's bytes are not copied into one archive).

        Works on created and stopped containers too. Members keep their modes (a
        directory already there takes the archive's mode); missing parent directories
        are made with mode 0755. A member never replaces a directory with a file or the
        reverse (Docker's ``noOverwriteDirNonDir``): that member fails the call, and the
        members before it stay written.

        Raises:
            ContainerNotFound: no such container.
            PathNotFound: ``path`` does not exist in it.
            DockerError: ``path`` is not a directory, or a member would replace a directory
                with a file or the reverse.
        """

    @abc.abstractmethod
    def get_archive(self, ref: str, path: str) -> tuple[Stream[bytes], ArchiveStat]:
        """A tar archive of ``path`` in the container, and what the engine says of it.

        A directory comes with everything under it. The tar headers' modes keep the
        file-type bits (``0o100644``, ``0o40755``, ``0o120777``); the
        :class:`~orchestrator.core.types.ArchiveStat` describes ``path`` itself (a
        symbolic link is not followed) with a Go ``os.FileMode``.

        Raises:
            ContainerNotFound: no such container.
            PathNotFound: ``path`` does not exist in it.
        """

    # -- networks -----------------------------------------------------------------------

    @abc.abstractmethod
    def create_network(self, spec: NetworkSpec) -> Network:
        """Create a bridge network (without ``spec.subnet``, the engine picks a free one).

        Raises:
            ContainerConflict: a network of that name exists already.
            DockerError: the subnet overlaps another network, or the engine refused.
        """

    @abc.abstractmethod
    def inspect_network(self, name: str) -> Network:
        """Inspect a network by id or exact name.

        Raises:
            NetworkNotFound: no such network.
        """

    def find_network(self, name: str) -> Network | None:
        """The network with this id or exact name, or None."""
        from orchestrator.errors import NetworkNotFound

        try:
            return self.inspect_network(name)
        except NetworkNotFound:
            return None

    @abc.abstractmethod
    def list_networks(self, label_filters: Iterable[str] = ()) -> list[Network]:
        """Networks carrying every ``key=value`` (or bare ``key``) label given.

        A network that vanishes while the list is being read is left out, never an error.
        """

    @abc.abstractmethod
    def remove_network(self, name: str) -> None:
        """Remove a network.

        Only running containers hold it: stopped ones attached to it do not.

        Raises:
            NetworkNotFound: no such network.
            NetworkInUse: running containers are still attached to it.
            DockerError: it is one of the engine's own (``bridge``, ``host``, ``none``).
        """

    @abc.abstractmethod
    def connect_network(self, network: str, container: str, aliases: Iterable[str] = ()) -> None:
        """Attach a container to a network (already attached: nothing happens).

        A running container gets an address there at once, another one when it starts.

        Raises:
            NetworkNotFound / ContainerNotFound: one of them does not exist.
            DockerError: the container runs without networking (``none``) or in the host's.
        """

    @abc.abstractmethod
    def disconnect_network(self, network: str, container: str) -> None:
        """Detach a container from a network (not attached: nothing happens).

        Raises:
            NetworkNotFound: no such network.
        """

    # -- volumes ------------------------------------------------------------------------

    @abc.abstractmethod
    def create_volume(self, name: str, labels: Mapping[str, str]) -> Volume:
        """Create a named volume (an existing one is returned as it is, labels included).

        Raises:
            DockerError: the name is invalid.
        """

    @abc.abstractmethod
    def inspect_volume(self, name: str) -> Volume:
        """Inspect a named volume.

        Raises:
            VolumeNotFound: no such volume.
        """

    @abc.abstractmethod
    def list_volumes(self, label_filters: Iterable[str] = ()) -> list[Volume]:
        """Named volumes carrying every ``key=value`` (or bare ``key``) label given."""

    @abc.abstractmethod
    def remove_volume(self, name: str) -> None:
        """Remove a named volume.

        Raises:
            VolumeNotFound: no such volume.
            VolumeInUse: a container still mounts it (even a created or stopped one).
        """

    # -- images -------------------------------------------------------------------------

    @abc.abstractmethod
    def inspect_image(self, ref: str) -> Image:
        """Inspect a local image.

        Raises:
            ImageNotFound: it is not on this engine.
        """

    @abc.abstractmethod
    def pull_image(self, ref: str) -> Image:
        """Pull an image from its registry (always: a local copy is not enough).

        Raises:
            ImageNotFound: the registry has no such image, or none is reachable.
            DockerError: ``ref`` is not a valid reference.
        """

    @abc.abstractmethod
    def build_image(self, spec: BuildSpec) -> Image:
        """Build an image from a tar context and tag it ``spec.tag``.

        The image keeps its base image's config (command, environment, labels) under
        what the Dockerfile and ``spec.labels`` add; its ``onbuild`` holds its own
        ``ONBUILD`` lines (the base image's triggers ran in this build). Every ``RUN`` step
        gets ``spec.network_mode`` and the memory, CPU and cgroup parent of the spec.

        Raises:
            ImageBuildFailed: a build step failed (the message holds the log's tail), or
                the engine refused the build before any step: no such Dockerfile in the
                context, a parse error, an unknown base image, an invalid tag; or the build
                ran past ``spec.timeout_seconds`` (wall clock): it is stopped, its step's
                container removed, nothing tagged, and the message says "time limit".
        """

    @abc.abstractmethod
    def tag_image(self, ref: str, tag: str) -> None:
        """Give an image one more tag (a tag already on another image moves).

        Raises:
            ImageNotFound: no such image.
            DockerError: ``tag`` is not a valid reference.
        """

    @abc.abstractmethod
    def list_images(self, label_filters: Iterable[str] = ()) -> list[Image]:
        """Local images carrying every ``key=value`` (or bare ``key``) label given."""

    @abc.abstractmethod
    def remove_image(self, ref: str) -> None:
        """Remove one tag of an image, and the image with its last tag.

        A tag goes even while containers use the image, as long as the image keeps
        another tag.

        Raises:
            ImageNotFound: no such image.
            DockerError: the image would go while a container (even a stopped one) uses
                it, or ``ref`` is an id and the image has several tags.
        """

    # -- engine -------------------------------------------------------------------------

    @abc.abstractmethod
    def ping(self) -> None:
        """Check that the engine answers.

        Raises:
            DockerUnavailable: it does not.
        """

    def close(self) -> None:  # noqa: B027 - optional hook: engines holding sockets close them
        """Release connections."""
