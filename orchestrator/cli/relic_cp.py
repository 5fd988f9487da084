"""``orchestrator relic cp``: copy files into and out of a relic, in ``docker cp`` style.

    orchestrator relic cp ./src RELIC_ID:/work/src     # a file or a directory, in
    orchestrator relic cp RELIC_ID:/work/out ./out     # a file or a directory, out
    tar -c dir | orchestrator relic cp - RELIC_ID:/work   # a tar stream, in
    orchestrator relic cp RELIC_ID:/work - > work.tar  # a tar stream, out

As with ``docker cp``, a destination that is an existing local directory (or, in the
container, ends with ``/``) receives the source under its own name; otherwise the source
is copied as the destination. Modes are kept; only regular files travel (local symbolic
links are skipped, the container's are reported and never followed). Anything missing,
skipped or cut at the server's caps is said on stderr, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import io
import os
import posixpath
import sys
import tarfile
from pathlib import Path
from typing import Any

from orchestrator.cli.errors import EXIT_FAILED, EXIT_OK, CliError
from orchestrator.client.sync import OrchestratorClient
from orchestrator.models import FileContent, FilesRead

__all__ = ["add_relic_cp"]


def add_relic_cp(relics: Any, leaf: Any) -> None:
    """Add ``relic cp`` to the ``relic`` subcommands (``leaf`` makes a subcommand)."""
    cp = leaf(relics, "cp", _cmd_relic_cp, "copy files between a relic and this machine")
    cp.add_argument("source", metavar="SRC", help="LOCALPATH, RELIC_ID:/path, or - (tar on stdin)")
    cp.add_argument("dest", metavar="DEST", help="LOCALPATH, RELIC_ID:/path, or - (tar on stdout)")


def _remote(spec: str) -> tuple[str, str] | None:
    """``(relic id, path)`` of ``RELIC_ID:/path``; None for a local path."""
    relic_id, colon, path = spec.partition(":")
    if not colon or not path.startswith("/") or "/" in relic_id:
        return None
    return relic_id, path


def _cmd_relic_cp(client: OrchestratorClient, args: argparse.Namespace) -> int:
    source, dest = _remote(args.source), _remote(args.dest)
    if (source is None) == (dest is None):
        raise CliError("relic cp: give exactly one of SRC and DEST as RELIC_ID:/absolute/path")
    timeout = getattr(args, "call_timeout", None)
    if dest is not None:
        items = _local_files(args.source, dest[1])
        written = client.put_files(dest[0], items, timeout=timeout)
        _say(f"copied {len(written.written)} files, {written.bytes} bytes to {args.dest}")
        if args.json:
            print(written.model_dump_json(indent=2))
        return EXIT_OK
    assert source is not None
    read = client.get_files_detailed(source[0], [source[1]], timeout=timeout)
    _write_local(read, source[1], args.dest)
    if args.json:
        print(read.model_dump_json(indent=2, exclude={"files": {"__all__": {"content_base64"}}}))
    return _report(read, args.source)


def _say(line: str) -> None:
    print(line, file=sys.stderr)


# -- into the relic --------------------------------------------------------------------------


def _local_files(source: str, dest: str) -> list[FileContent]:
    if source == "-":
        return _tar_files(sys.stdin.buffer.read(), dest.rstrip("/") or "/")
    path = Path(source)
    if not path.exists():
        raise CliError(f"relic cp: {source}: no such file or directory")
    target = posixpath.join(dest, path.name) if dest.endswith("/") else dest
    if path.is_file():
        return [FileContent.of(target, path.read_bytes(), path.stat().st_mode & 0o7777)]
    items = []
    for root, _, names in os.walk(path):  # os.walk does not follow directory links
        for name in sorted(names):
            local = Path(root) / name
            if local.is_symlink() or not local.is_file():
                _say(f"skipped {local}: not a regular file")
                continue
            inside = posixpath.join(target, local.relative_to(path).as_posix())
            items.append(FileContent.of(inside, local.read_bytes(), local.stat().st_mode & 0o7777))
    return items


def _tar_files(data: bytes, dest: str) -> list[FileContent]:
    items = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                handle = tar.extractfile(member) if member.isreg() else None
                if handle is None:
                    continue
                inside = posixpath.join(dest, member.name.lstrip("/"))
                items.append(FileContent.of(inside, handle.read(), member.mode & 0o7777))
    except tarfile.TarError as exc:
        raise CliError(f"relic cp: stdin is not a tar archive ({exc})") from exc
    return items


# -- out of the relic ------------------------------------------------------------------------


def _write_local(read: FilesRead, asked: str, dest: str) -> None:
    if dest == "-":
        sys.stdout.buffer.write(_tar_of(read, posixpath.dirname(asked)))
        sys.stdout.buffer.flush()
        return
    base = Path(dest)
    if base.is_dir():
        base = base / posixpath.basename(asked)
    for item in read.files:
        relative = posixpath.relpath(item.path, asked)
        local = base if relative == "." else base / relative
        if ".." in Path(relative).parts:  # never outside DEST (the worker sends none such)
            raise CliError(f"relic cp: refusing {item.path}: outside {asked}")
        local.parent.mkdir(parents=True, exist_ok=True)
        if local.is_symlink():
            local.unlink()  # replace a local link, never write through it
        local.write_bytes(item.data())
        local.chmod(item.mode)
    _say(f"copied {len(read.files)} files to {dest}")


def _tar_of(read: FilesRead, parent: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for item in read.files:
            data = item.data()
            info = tarfile.TarInfo(posixpath.relpath(item.path, parent))
            info.size, info.mode = len(data), item.mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _report(read: FilesRead, source: str) -> int:
    problems = [f"missing: {path}" for path in read.missing]
    problems += [f"skipped {s.path}: {s.reason}" for s in read.skipped]
    problems += [
        f"cut {f.path}: {len(f.data())} of {f.size} bytes (server caps)"
        for f in read.files
        if f.truncated
    ]
    for line in problems:
        _say(f"relic cp {source}: {line}")
    return EXIT_FAILED if problems else EXIT_OK
