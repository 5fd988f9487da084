"""Pure readers of the engine's inspect JSON into the Engine's own types."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from orchestrator.core.stats import parse_docker_time
from orchestrator.core.types import Container, Image, Network, Volume

__all__ = ["container", "network", "volume", "image", "split_reference", "docker_time"]


def docker_time(value: Any) -> datetime | None:
    """A Docker timestamp as an aware datetime; None when absent, zero or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return parse_docker_time(value)
    except ValueError:
        return None


def container(raw: Mapping[str, Any]) -> Container:
    """A ``GET /containers/{id}/json`` reply."""
    state = raw.get("State") or {}
    config = raw.get("Config") or {}
    settings = raw.get("NetworkSettings") or {}
    host = raw.get("HostConfig") or {}
    networks = {
        str(name): str((endpoint or {}).get("IPAddress") or "")
        for name, endpoint in (settings.get("Networks") or {}).items()
    }
    if config.get("NetworkDisabled") and not networks:
        networks = {"none": ""}  # made without networking: as the engine shows "none"
    ports = {
        str(port): tuple(
            (str(b.get("HostIp", "")), str(b.get("HostPort", ""))) for b in (bindings or [])
        )
        for port, bindings in (settings.get("Ports") or {}).items()
    }
    status = str(state.get("Status") or "")
    exit_code = state.get("ExitCode")
    return Container(
        id=str(raw.get("Id", "")),
        name=str(raw.get("Name", "")).lstrip("/"),
        image=str(config.get("Image", "")),
        labels=dict(config.get("Labels") or {}),
        status=status,
        exit_code=int(exit_code)
        if exit_code is not None and status in ("exited", "dead")
        else None,
        oom_killed=bool(state.get("OOMKilled")),
        created_at=docker_time(raw.get("Created")),
        started_at=docker_time(state.get("StartedAt")),
        finished_at=docker_time(state.get("FinishedAt")),
        networks=networks,
        ports=ports,
        memory_limit_bytes=int(host.get("Memory") or 0),
        image_id=str(raw.get("Image", "")),
        environment=dict(
            str(item).split("=", 1) for item in config.get("Env") or [] if "=" in str(item)
        ),
    )


def network(raw: Mapping[str, Any]) -> Network:
    """A ``GET /networks/{id}`` reply."""
    ipam = raw.get("IPAM") or {}
    return Network(
        id=str(raw.get("Id", "")),
        name=str(raw.get("Name", "")),
        labels=dict(raw.get("Labels") or {}),
        internal=bool(raw.get("Internal")),
        created_at=docker_time(raw.get("Created")),
        subnets=tuple(str(c.get("Subnet")) for c in ipam.get("Config") or [] if c.get("Subnet")),
        containers=tuple(str(k) for k in (raw.get("Containers") or {})),
    )


def volume(raw: Mapping[str, Any]) -> Volume:
    """A ``GET /volumes/{name}`` reply."""
    return Volume(
        name=str(raw.get("Name", "")),
        labels=dict(raw.get("Labels") or {}),
        created_at=docker_time(raw.get("CreatedAt")),
    )


def image(raw: Mapping[str, Any]) -> Image:
    """A ``GET /images/{name}/json`` reply."""
    config = raw.get("Config") or {}
    return Image(
        id=str(raw.get("Id", "")),
        tags=tuple(raw.get("RepoTags") or ()),
        labels=dict(config.get("Labels") or {}),
        entrypoint=tuple(config.get("Entrypoint") or ()),
        cmd=tuple(config.get("Cmd") or ()),
        environment=tuple(config.get("Env") or ()),
        working_dir=str(config.get("WorkingDir") or ""),
        size_bytes=int(raw.get("Size") or 0),
        created_at=docker_time(raw.get("Created")),
        onbuild=tuple(str(t) for t in config.get("OnBuild") or ()),
    )


def split_reference(ref: str) -> tuple[str, str | None]:
    """``repo[:tag][@digest]`` -> (repository, tag or digest); a port is not a tag."""
    if "@" in ref:
        repository, digest = ref.split("@", 1)
        return repository, digest
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = ref.rsplit(":", 1)
        return repository, tag
    return ref, "latest"
