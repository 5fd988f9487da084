"""The ``/etc/hosts`` of containers made with networking disabled.

The engine writes no ``/etc/hosts`` for a container with ``NetworkDisabled`` (it makes no
network sandbox for it), so its ``localhost`` would not resolve. The file the engine writes
for ``network_mode="none"`` (:data:`LOOPBACK_HOSTS`) is kept once per engine in a small
named volume (:data:`VOLUME`) and bind-mounted read-only at ``/etc/hosts`` of each such
container: a mount costs its start next to nothing, where uploading the file into every
container (an archive upload: on Docker 20.10 the daemon runs its own binary again for it)
costs about 60 ms of CPU. A worker process uses the volume it finds, or makes it; it
writes the file again when the engine refuses to mount it (the volume was pruned). Where
the file cannot be had (a volume driver without a mountpoint on the engine's host, a
container that could not write it), the file is uploaded into the container instead; a
container with a read-only root, which takes no upload, then gets the engine's network
sandbox (and its ``/etc/hosts``).
"""

from __future__ import annotations

import functools
import io
import logging
import tarfile
import threading
import time
from typing import Any

from orchestrator.engine.translate import docker_errors
from orchestrator.errors import DockerError, ImageNotFound, OrchestratorError, VolumeNotFound

__all__ = ["LOOPBACK_HOSTS", "VOLUME", "LoopbackHosts", "hosts_tar"]

log = logging.getLogger(__name__)

#: What the engine writes for ``network_mode="none"``: the loopback answers to ``localhost``.
LOOPBACK_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)
#: The named volume holding :data:`LOOPBACK_HOSTS` as its file ``hosts`` (one per engine,
#: shared by every worker of it; no container mounts it as a volume).
VOLUME = "orchestrator-loopback-hosts"
#: Its label: not ``orchestrator.managed`` (no session owns it, no cleanup removes it).
LABEL = "orchestrator.loopback-hosts"
#: Where the volume is mounted in the one container that writes its file (never started).
_SEED_TARGET = "/orchestrator-loopback-hosts"
#: How long after a failed attempt to have the file the next container tries again.
_RETRY_SECONDS = 60.0


@functools.lru_cache(maxsize=4)
def hosts_tar(name: str) -> bytes:
    """An archive holding :data:`LOOPBACK_HOSTS` as ``name`` (mode 0644)."""
    data = LOOPBACK_HOSTS.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        entry = tarfile.TarInfo(name)
        entry.size, entry.mode = len(data), 0o644
        tar.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


class LoopbackHosts:
    """The engine host's path of the shared :data:`LOOPBACK_HOSTS` file, made on first use.

    Args:
        api: docker-py's low-level client of the engine.
        upload: ``upload(container_id, path, tar_bytes)``, the engine's archive upload.
    """

    def __init__(self, api: Any, upload: Any) -> None:
        self.api = api
        self.upload = upload
        self._source: str | None = None
        self._failed_at: float | None = None
        self._rewrite = False
        self._lock = threading.Lock()

    def source(self, image: str) -> str | None:
        """The file's path on the engine's host, or None where it cannot be had now.

        The first call of a process finds the volume (another worker of the engine, or an
        earlier process, wrote it) or makes it, writing the file through a container of
        ``image`` that is created, never started, and removed; so does the first call after
        :meth:`forget`.
        """
        with self._lock:
            if self._source is not None:
                return self._source
            if self._failed_at is not None and time.monotonic() - self._failed_at < _RETRY_SECONDS:
                return None
            try:
                self._source = self._find_or_write(image)
            except ImageNotFound:
                pass  # not pulled yet: neither can the container be made; tried again after
            except OrchestratorError as exc:
                self._failed_at = time.monotonic()
                log.warning("no shared /etc/hosts for containers without a network: %s", exc)
            return self._source

    def forget(self, source: str) -> None:
        """The engine refused to mount ``source`` (its volume was pruned, or never got its
        file): the next call writes it again."""
        with self._lock:
            if self._source == source:
                self._source = None
                self._rewrite = True

    def _find_or_write(self, image: str) -> str:
        if not self._rewrite:
            try:
                with docker_errors(f"inspect volume {VOLUME}", not_found=VolumeNotFound):
                    return _hosts_path(self.api.inspect_volume(VOLUME))
            except VolumeNotFound:
                pass
        self._rewrite = True  # until the file is written: the volume alone has none
        with docker_errors(f"create volume {VOLUME}"):
            volume = self.api.create_volume(VOLUME, labels={LABEL: "true"})
        path = _hosts_path(volume)
        config = {
            "Image": image,
            "Labels": {LABEL: "true"},
            "NetworkDisabled": True,
            "HostConfig": {
                "NetworkMode": "none",
                # NoCopy: nothing of the image at that path is copied into the volume.
                "Mounts": [
                    {
                        "Type": "volume",
                        "Source": VOLUME,
                        "Target": _SEED_TARGET,
                        "VolumeOptions": {"NoCopy": True},
                    }
                ],
            },
        }
        with docker_errors(f"create a container to write {VOLUME}", not_found=ImageNotFound):
            seed = str(self.api.create_container_from_config(config, name=None)["Id"])
        try:
            self.upload(seed, _SEED_TARGET, hosts_tar("hosts"))
        finally:
            with docker_errors(f"remove container {seed}"):
                # v: the anonymous volumes its image declares go too (never the named one).
                self.api.remove_container(seed, v=True, force=True)
        self._rewrite = False
        return path


def _hosts_path(volume: dict[str, Any]) -> str:
    mountpoint = str(volume.get("Mountpoint") or "")
    if not mountpoint.startswith("/"):
        raise DockerError(f"volume {VOLUME} has no mountpoint on the engine's host")
    return f"{mountpoint}/hosts"
