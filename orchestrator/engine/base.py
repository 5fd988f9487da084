"""The interface every engine implements: exactly the operations the orchestrator needs.

:class:`~orchestrator.engine.docker_engine.DockerEngine` drives a real Docker engine
through docker-py; :class:`~orchestrator.engine.fake.FakeEngine` is an in-memory double
for unit tests. One contract suite (``tests/contract``) runs against both, so the fake
cannot drift from the real engine without a red test.

Every method takes and returns the project's own types (:mod:`orchestrator.engine.types`)
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

from orchestrator.engine.types import (
    ArchiveStat,
    BuildSpec,
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

        Raises:
            ContainerConflict: a container of that name exists already.
            ImageNotFound: the image is not on this engine.
        """

    @abc.abstractmethod
    def start_container(self, ref: str) -> None:
        """Start a created container (a running one is left as it is).

        Raises:
            ContainerNotFound: no such container.
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

    @abc.abstractmethod
    def wait_container(self, ref: str, timeout_seconds: float) -> int | None:
        """Wait up to ``timeout_seconds`` for the container to exit.

        Returns:
            Its exit code, or None if it was still running when the time was up.

        Raises:
            ContainerNotFound: no such container (or it was removed while waited on).
        """

    @abc.abstractmethod
    def kill_container(self, ref: str, signal: str = "SIGKILL") -> bool:
        """Send ``signal`` to the container's main process.

        Returns:
            False when the container is not running or does not exist.
        """

    @abc.abstractmethod
    def stop_container(self, ref: str, grace_seconds: int) -> None:
        """SIGTERM, then SIGKILL after ``grace_seconds``; a stopped one is left as it is.

        Raises:
            ContainerNotFound: no such container.
        """

    @abc.abstractmethod
    def remove_container(self, ref: str) -> bool:
        """Force-remove a container and its anonymous volumes.

        Returns:
            True if a container was removed, False if there was none.
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

        Raises:
            ContainerNotFound: no such container.
        """

    @abc.abstractmethod
    def container_stats(self, ref: str) -> dict[str, Any]:
        """One stats sample, as the engine's ``/stats?stream=false`` returns it.

        Raises:
            ContainerNotFound: no such container.
        """

    @abc.abstractmethod
    def stream_stats(self, ref: str) -> Stream[dict[str, Any]]:
        """Stats samples about once a second until the container stops.

        Raises:
            ContainerNotFound: no such container.
        """

    @abc.abstractmethod
    def exec_start(self, ref: str, spec: ExecSpec) -> ExecStream:
        """Start a command in a running container and stream its output.

        Raises:
            ContainerNotFound: no such container.
            DockerError: the container is not running.
        """

    @abc.abstractmethod
    def put_archive(self, ref: str, path: str, tar_bytes: bytes) -> None:
        """Extract a tar archive into directory ``path`` of the container.

        Raises:
            ContainerNotFound: no such container.
            PathNotFound: ``path`` does not exist in it.
        """

    @abc.abstractmethod
    def get_archive(self, ref: str, path: str) -> tuple[Stream[bytes], ArchiveStat]:
        """A tar archive of ``path`` in the container, and what the engine says of it.

        Raises:
            ContainerNotFound: no such container.
            PathNotFound: ``path`` does not exist in it.
        """

    # -- networks -----------------------------------------------------------------------

    @abc.abstractmethod
    def create_network(self, spec: NetworkSpec) -> Network:
        """Create a bridge network.

        Raises:
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
        """Networks carrying every label given; vanishing ones are left out."""

    @abc.abstractmethod
    def remove_network(self, name: str) -> None:
        """Remove a network.

        Raises:
            NetworkNotFound: no such network.
            NetworkInUse: containers are still attached to it.
        """

    @abc.abstractmethod
    def connect_network(self, network: str, container: str, aliases: Iterable[str] = ()) -> None:
        """Attach a container to a network (already attached: nothing happens).

        Raises:
            NetworkNotFound / ContainerNotFound: one of them does not exist.
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
        """Create a named volume (an existing one is returned as it is)."""

    @abc.abstractmethod
    def inspect_volume(self, name: str) -> Volume:
        """Inspect a named volume.

        Raises:
            VolumeNotFound: no such volume.
        """

    @abc.abstractmethod
    def list_volumes(self, label_filters: Iterable[str] = ()) -> list[Volume]:
        """Named volumes carrying every label given."""

    @abc.abstractmethod
    def remove_volume(self, name: str) -> None:
        """Remove a named volume.

        Raises:
            VolumeNotFound: no such volume.
            VolumeInUse: a container still uses it.
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
        """Pull an image from its registry.

        Raises:
            ImageNotFound: the registry has no such image, or none is reachable.
        """

    @abc.abstractmethod
    def build_image(self, spec: BuildSpec) -> Image:
        """Build an image from a tar context and tag it ``spec.tag``.

        Raises:
            ImageBuildFailed: a build step failed (the message holds the log's tail).
        """

    @abc.abstractmethod
    def tag_image(self, ref: str, tag: str) -> None:
        """Give an image one more tag.

        Raises:
            ImageNotFound: no such image.
        """

    @abc.abstractmethod
    def list_images(self, label_filters: Iterable[str] = ()) -> list[Image]:
        """Local images carrying every label given."""

    @abc.abstractmethod
    def remove_image(self, ref: str) -> None:
        """Remove an image (or one tag of it).

        Raises:
            ImageNotFound: no such image.
            DockerError: a container uses it.
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
