"""Files in and out of relics and tool runs, on the real engine, Redis and a real worker.

The worker here has small file caps of its own (so over-size cases stay small) and takes
work only from its host queue: the relic is started there by name, and everything of its
session follows it there.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator import AsyncOrchestratorClient, OrchestratorClient
from orchestrator.errors import InvalidRequest, LimitExceeded, PathNotFound
from orchestrator.models import FileContent, ToolExecutionResult
from orchestrator.state import blobs
from tests.integration.conftest import USED_HOSTS, make_client
from tests.integration.harness import (
    ROOT,
    TEST_IMAGE,
    WorkerProcess,
    force_remove_managed,
    gone,
    listed,
    settings_env,
)

MIB = 1024 * 1024
MAX_FILE = 2 * MIB
MAX_REQUEST = 6 * MIB
#: every byte value, 1 MiB: not UTF-8
BINARY = bytes(range(256)) * 4096
HTTPD = "mkdir -p /www /work && echo ok > /www/health && exec httpd -f -p 8000 -h /www"


@pytest.fixture(scope="module")
def files_host(
    services: None, docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A worker with small file caps, fed through its host queue (no tools or relics queue)."""
    name = f"it-files-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(name)
    env = settings_env(
        name,
        ORCHESTRATOR_FILES_MAX_FILE_BYTES=str(MAX_FILE),
        ORCHESTRATOR_FILES_MAX_REQUEST_BYTES=str(MAX_REQUEST),
    )
    logs = tmp_path_factory.mktemp("files-worker")
    # its host queue, and Celery's default one for the merge steps of a session cleanup
    process = WorkerProcess(name, logs, env=env, args=("-Q", f"host.{name},celery")).start()
    try:
        yield name
    finally:
        process.stop()
        force_remove_managed(docker_client, name)


@pytest.fixture(scope="module")
def fclient(files_host: str) -> Iterator[OrchestratorClient]:
    c = make_client(files_host)
    yield c
    c.close()


@pytest.fixture(scope="module")
def workspace(fclient: OrchestratorClient, files_host: str) -> Iterator[tuple[str, str, str]]:
    """A relic (busybox httpd, a plain workspace) on the files host: (relic id, session, name)."""
    session = f"it-files-{uuid.uuid4().hex[:8]}"
    request = {
        "relic_name": "ws",
        "session_id": session,
        "image": TEST_IMAGE,
        "command": ["sh", "-c", HTTPD],
        "health_timeout_seconds": 20,
    }
    sent = fclient.app.send_task(
        "orchestrator.relics.start", args=[request], queue=f"host.{files_host}"
    )
    info = sent.get(timeout=60)
    try:
        yield info["relic_id"], session, info["container_name"]
    finally:  # by name on the host queue: this worker consumes no other queue
        fclient.app.send_task(
            "orchestrator.cleanup.session", args=[session, True], queue=f"host.{files_host}"
        ).get(timeout=120)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A host file holding a token that must never come out of a container."""
    secret = tmp_path / "victim" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text(f"HOST-SECRET-{uuid.uuid4().hex}\n")
    return secret


def sh(docker_client: docker.DockerClient, container: str, script: str) -> str:
    """Run ``script`` in the container (planting state as an attacker inside would)."""
    code, out = docker_client.containers.get(container).exec_run(["sh", "-c", script])
    assert code == 0, out
    return str(out.decode())


def test_files_round_trip_byte_for_byte_with_modes_and_nested_directories(
    fclient: OrchestratorClient, workspace: tuple[str, str, str], docker_client: Any
) -> None:
    relic_id, _, container = workspace
    files = {
        "/work/rt/bin/run.sh": "#!/bin/sh\necho hi\n",
        "/work/rt/data/blob.bin": BINARY,
        "/work/rt/data/deep/er/latin1.txt": "café".encode("latin-1"),
        "/work/rt/empty": b"",
    }
    written = fclient.put_files(relic_id, files)
    fclient.put_files(relic_id, {"/work/rt/bin/run.sh": files["/work/rt/bin/run.sh"]}, mode=0o750)

    assert written.written == list(files) and written.bytes == 18 + MIB + 4
    # what is on disk, seen from inside the container
    assert sh(docker_client, container, "md5sum /work/rt/data/blob.bin").split()[0] == (
        hashlib.md5(BINARY).hexdigest()
    )
    assert sh(docker_client, container, "stat -c %a /work/rt/bin/run.sh").strip() == "750"
    assert sh(docker_client, container, "/work/rt/bin/run.sh") == "hi\n"

    back = fclient.get_files_detailed(relic_id, ["/work/rt"])
    got = {f.path: (f.data(), f.mode) for f in back.files}
    assert got == {
        "/work/rt/bin/run.sh": (b"#!/bin/sh\necho hi\n", 0o750),
        "/work/rt/data/blob.bin": (BINARY, 0o644),
        "/work/rt/data/deep/er/latin1.txt": ("café".encode("latin-1"), 0o644),
        "/work/rt/empty": (b"", 0o644),
    }
    assert not back.missing and not back.skipped
    assert fclient.get_files(relic_id, ["/work/rt/data/blob.bin"]) == {
        "/work/rt/data/blob.bin": BINARY
    }


def blob_keys(client: OrchestratorClient) -> list[bytes]:
    """Blobs left in Redis (by any test of this module: they run one at a time)."""
    return list(client.redis.scan_iter("orch:blob:*"))


def test_large_files_stream_in_chunks_both_ways_and_leave_no_blob(
    fclient: OrchestratorClient, workspace: tuple[str, str, str], docker_client: Any
) -> None:
    relic_id, _, container = workspace
    big = os.urandom(MAX_FILE)  # two chunks of the blob list
    files = {"/work/stream/a.bin": big, "/work/stream/b.bin": BINARY[::-1] + b"tail"}

    fclient.put_files(relic_id, files)

    assert sh(docker_client, container, "md5sum < /work/stream/a.bin").split()[0] == (
        hashlib.md5(big).hexdigest()
    )
    # two large files on one stream, in order, each byte for byte
    assert fclient.get_files(relic_id, ["/work/stream"]) == files
    assert blob_keys(fclient) == []


def test_a_refused_put_writes_nothing_and_leaves_no_blob(
    fclient: OrchestratorClient, workspace: tuple[str, str, str]
) -> None:
    relic_id, _, _ = workspace
    too_much = {f"/work/refused/{i}": os.urandom(MAX_FILE - 1) for i in range(4)}

    with pytest.raises(LimitExceeded, match="ORCHESTRATOR_FILES_MAX_REQUEST_BYTES"):
        fclient.put_files(relic_id, {"/work/refused/ok": BINARY, **too_much})

    assert fclient.get_files_detailed(relic_id, ["/work/refused"]).missing == ["/work/refused"]
    assert blob_keys(fclient) == []


def test_hostile_refs_by_task_name_write_nothing(
    fclient: OrchestratorClient, workspace: tuple[str, str, str]
) -> None:
    """A plain Celery message naming a blob with a false size, one over the cap, one that
    does not exist: each refused clearly, nothing written, the blobs deleted."""
    relic_id, _, _ = workspace
    queue = f"host.{fclient.settings.host_name}"
    lying = blobs.put(fclient.redis, BINARY)
    huge = blobs.put(fclient.redis, os.urandom(MAX_FILE + 1))
    cases = [
        ({"path": "/work/hostile/a", "ref": lying, "size": 10}, "its size says 10"),
        ({"path": "/work/hostile/b", "ref": huge}, "ORCHESTRATOR_FILES_MAX_FILE_BYTES"),
        ({"path": "/work/hostile/c", "ref": blobs.new_ref()}, "expired or was used already"),
        ({"path": "/work/hostile/d", "ref": "orch:lease:x"}, "not a file reference"),
    ]
    for wire, rule in cases:
        sent = fclient.app.send_task(
            "orchestrator.relics.put_files",
            args=[relic_id, [{"path": "/work/hostile/ok", "text": "ok"}, wire]],
            queue=queue,
        )
        with pytest.raises(Exception, match=rule):
            sent.get(timeout=30)

    assert fclient.get_files_detailed(relic_id, ["/work/hostile"]).missing == ["/work/hostile"]
    assert blob_keys(fclient) == []


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("/work/../etc/passwd", "'..'"),
        ("work/x", "absolute"),
        ("/work/a\x00b", "NUL"),
        ("/", "root"),
    ],
)
def test_hostile_paths_are_refused_by_the_client_and_by_the_worker(
    fclient: OrchestratorClient, workspace: tuple[str, str, str], path: str, rule: str
) -> None:
    relic_id, _, _ = workspace
    with pytest.raises(InvalidRequest, match=rule):
        fclient.put_files(relic_id, {path: b"x"})
    with pytest.raises(InvalidRequest, match=rule):
        fclient.get_files(relic_id, [path])
    # a plain Celery client, past the client's checks: the worker refuses just the same
    wire = {"path": path, "text": "x"}
    queue = f"host.{fclient.settings.host_name}"
    sent = fclient.app.send_task(
        "orchestrator.relics.put_files", args=[relic_id, [wire]], queue=queue
    )
    with pytest.raises(Exception, match=rule):
        sent.get(timeout=30)
    got = fclient.app.send_task(
        "orchestrator.relics.get_files", args=[relic_id, [path]], queue=queue
    )
    with pytest.raises(Exception, match=rule):
        got.get(timeout=30)


def test_a_symlink_to_root_never_reads_the_host(
    fclient: OrchestratorClient,
    workspace: tuple[str, str, str],
    docker_client: Any,
    victim: Path,
) -> None:
    relic_id, _, container = workspace
    token = victim.read_text()
    sh(
        docker_client,
        container,
        f"mkdir -p /work/ln && ln -sfn / /work/ln/root && ln -sfn {victim} /work/ln/vlink"
        f" && ln -sfn {victim.parent} /work/ln/vdir",
    )
    own_hostname = sh(docker_client, container, "cat /etc/hostname").encode()

    back = fclient.get_files_detailed(
        relic_id,
        [
            "/work/ln/root",
            "/work/ln/vlink",
            f"/work/ln/root{victim}",
            f"/work/ln/vdir/{victim.name}",
            "/work/ln/root/etc/hostname",
            "/work/ln",
        ],
    )

    # a link named as the path is never followed; through a link the engine resolves the
    # rest inside the container's own root, where the host's file does not exist
    assert {f.path: f.data() for f in back.files} == {"/work/ln/root/etc/hostname": own_hostname}
    assert sorted(back.missing) == sorted(
        [f"/work/ln/root{victim}", f"/work/ln/vdir/{victim.name}"]
    )
    skipped = {(s.path, s.reason.split(" to ")[0]) for s in back.skipped}
    assert skipped == {
        ("/work/ln/root", "symbolic link"),
        ("/work/ln/vlink", "symbolic link"),
        ("/work/ln/vdir", "symbolic link"),
    }
    assert token not in repr(back.model_dump())
    with pytest.raises(InvalidRequest, match="symbolic link"):
        fclient.get_files(relic_id, ["/work/ln/vlink"])


def test_writing_through_symlinks_stays_inside_the_container(
    fclient: OrchestratorClient,
    workspace: tuple[str, str, str],
    docker_client: Any,
    victim: Path,
) -> None:
    relic_id, _, container = workspace
    token = victim.read_text()
    sh(
        docker_client,
        container,
        f"mkdir -p /work/w {victim.parent} && ln -sfn {victim.parent} /work/w/vdir"
        f" && ln -sfn / /work/w/root && ln -sfn {victim} /work/w/vlink"
        " && ln -sfn /not/in/the/container /work/w/gone",
    )
    with pytest.raises(InvalidRequest, match="no such file or directory"):
        fclient.put_files(relic_id, {"/work/w/gone/x.txt": "a link to a host-only directory"})

    fclient.put_files(
        relic_id,
        {
            "/work/w/vdir/pwned.txt": "through a link to a host directory",
            "/work/w/root/escaped.txt": "through a link to /",
            "/work/w/vlink": "over a link to a host file",
        },
    )

    assert sorted(p.name for p in victim.parent.iterdir()) == ["secret.txt"]
    assert victim.read_text() == token
    assert not Path("/escaped.txt").exists()
    inside = sh(
        docker_client,
        container,
        f"cat {victim.parent}/pwned.txt /escaped.txt"
        " && test -f /work/w/vlink && ! test -L /work/w/vlink",
    )
    assert inside == "through a link to a host directory" + "through a link to /"


def test_device_files_and_pipes_are_never_read_and_never_hang(
    fclient: OrchestratorClient, workspace: tuple[str, str, str], docker_client: Any
) -> None:
    relic_id, _, container = workspace
    sh(docker_client, container, "mkdir -p /work/dev && mkfifo /work/dev/fifo")
    node = tarfile.TarInfo("zero")  # a character device (1, 5), as /dev/zero
    node.type, node.devmajor, node.devminor, node.mode = tarfile.CHRTYPE, 1, 5, 0o666
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(node)
    docker_client.api.put_archive(container, "/work/dev", buffer.getvalue())

    started = time.monotonic()
    back = fclient.get_files_detailed(
        relic_id, ["/dev/zero", "/dev/urandom", "/work/dev/zero", "/work/dev/fifo", "/work/dev"]
    )

    assert time.monotonic() - started < 20
    assert back.files == []
    assert sorted(back.missing) == ["/dev/urandom", "/dev/zero"]  # the runtime's /dev: unseen
    reasons = {(s.path, s.reason) for s in back.skipped}
    assert reasons == {
        ("/work/dev/zero", "device file, not read"),
        ("/work/dev/fifo", "named pipe, not read"),
    }


def test_over_size_files_are_refused_on_put_and_truncated_on_get(
    fclient: OrchestratorClient, workspace: tuple[str, str, str], docker_client: Any
) -> None:
    relic_id, _, container = workspace
    with pytest.raises(LimitExceeded, match="ORCHESTRATOR_FILES_MAX_FILE_BYTES"):
        fclient.put_files(relic_id, {"/work/big/one": b"x" * (MAX_FILE + 1)})
    with pytest.raises(LimitExceeded, match="ORCHESTRATOR_FILES_MAX_REQUEST_BYTES"):
        fclient.put_files(relic_id, {f"/work/big/{i}": b"y" * (MAX_FILE - 1) for i in range(4)})
    assert fclient.get_files_detailed(relic_id, ["/work/big"]).missing == ["/work/big"]

    sh(docker_client, container, f"head -c {3 * MIB} /dev/urandom > /work/huge")
    head_md5 = sh(docker_client, container, f"head -c {MAX_FILE} /work/huge | md5sum").split()[0]

    (item,) = fclient.get_files_detailed(relic_id, ["/work/huge"]).files
    assert (item.size, item.truncated, len(item.data())) == (3 * MIB, True, MAX_FILE)
    assert hashlib.md5(item.data()).hexdigest() == head_md5
    with pytest.raises(LimitExceeded, match="ORCHESTRATOR_FILES_MAX_FILE_BYTES"):
        fclient.get_files(relic_id, ["/work/huge"])


def test_a_file_where_a_directory_is_is_refused_and_changes_nothing(
    fclient: OrchestratorClient, workspace: tuple[str, str, str], docker_client: Any
) -> None:
    relic_id, _, container = workspace
    fclient.put_files(relic_id, {"/work/keep/a.txt": "a"})

    with pytest.raises(InvalidRequest, match="/work/keep is a directory"):
        fclient.put_files(relic_id, {"/work/keep": "would replace the whole tree"})
    with pytest.raises(InvalidRequest, match="refused"):
        fclient.put_files(relic_id, {"/work/keep/a.txt/under": "a file is not a directory"})

    assert sh(docker_client, container, "cat /work/keep/a.txt") == "a"


def test_missing_paths_are_reported(
    fclient: OrchestratorClient, workspace: tuple[str, str, str]
) -> None:
    relic_id, _, _ = workspace
    fclient.put_files(relic_id, {"/work/here.txt": "here"})

    back = fclient.get_files_detailed(relic_id, ["/work/here.txt", "/work/nope", "/nowhere/x"])

    assert [f.path for f in back.files] == ["/work/here.txt"]
    assert back.missing == ["/work/nope", "/nowhere/x"]
    with pytest.raises(PathNotFound, match="/work/nope"):
        fclient.get_files(relic_id, ["/work/here.txt", "/work/nope"])


def test_put_and_get_by_task_name_from_a_plain_celery_client(
    fclient: OrchestratorClient, workspace: tuple[str, str, str]
) -> None:
    relic_id, _, _ = workspace
    app = fclient.app  # any Celery app on the broker; the relics queue would forward
    queue = f"host.{fclient.settings.host_name}"
    wire = [
        FileContent.of("/work/raw/a.bin", BINARY[:1000], 0o600).model_dump(exclude_none=True),
        {"path": "/work/raw/b.txt", "text": "bé"},
    ]

    put = app.send_task("orchestrator.relics.put_files", args=[relic_id, wire], queue=queue)
    assert put.get(timeout=30) == {
        "relic_id": relic_id,
        "written": ["/work/raw/a.bin", "/work/raw/b.txt"],
        "bytes": 1003,
    }
    got = app.send_task(
        "orchestrator.relics.get_files", args=[relic_id, ["/work/raw"]], queue=queue
    )
    reply = got.get(timeout=30)
    files = {f["path"]: FileContent.model_validate(f) for f in reply["files"]}
    assert (
        files["/work/raw/a.bin"].data() == BINARY[:1000] and files["/work/raw/a.bin"].mode == 0o600
    )
    assert files["/work/raw/b.txt"].data() == "bé".encode()
    assert reply["missing"] == [] and reply["relic_id"] == relic_id


# -- tool runs ------------------------------------------------------------------------------

STDIN = "".join(f"line {i:07d} ü\n" for i in range(80_000))  # ~1 MiB of text
TOOL_SCRIPT = (
    "md5sum /in/data.bin; md5sum; mkdir -p /out/sub"
    " && head -c 1048576 /dev/urandom > /out/big.bin && md5sum /out/big.bin"
    " && echo small > /out/sub/small.txt && ln -s / /out/root"
)


def tool_request(session: str) -> dict[str, Any]:
    return {
        "tool_name": "files",
        "session_id": session,
        "image": TEST_IMAGE,
        "command": ["sh", "-c", TOOL_SCRIPT],
        "network_mode": "session",  # goes to the session's host, the files worker
        "files": [FileContent.of("/in/data.bin", BINARY, 0o600).model_dump(exclude_none=True)],
        "stdin": STDIN,
        "collect": ["/out", "/in/data.bin", "/out/none"],
    }


def check_tool_result(result: ToolExecutionResult, fetch: Any) -> None:
    assert result.status == "succeeded", result
    sums = [line.split()[0] for line in result.stdout.splitlines()]
    assert sums[0] == hashlib.md5(BINARY).hexdigest()  # the input file, byte for byte
    assert sums[1] == hashlib.md5(STDIN.encode()).hexdigest()  # all of stdin, then EOF
    files = {f.path: f for f in result.files}
    assert set(files) == {"/out/big.bin", "/out/sub/small.txt", "/in/data.bin"}
    small = files["/out/sub/small.txt"]
    assert (small.data(), small.ref) == (b"small\n", None)  # inline: small
    big = files["/out/big.bin"]
    assert big.content_base64 is None and big.ref and big.size == MIB  # kept beside the result
    assert hashlib.md5(fetch(result.execution_id, "/out/big.bin")).hexdigest() == sums[2]
    assert fetch(result.execution_id, "/in/data.bin") == BINARY
    assert result.missing_files == ["/out/none"]
    assert [(s.path, s.reason.split(" to ")[0]) for s in result.skipped_files] == [
        ("/out/root", "symbolic link")
    ]


def test_a_tool_run_gets_files_and_stdin_and_its_outputs_are_collected(
    fclient: OrchestratorClient, workspace: tuple[str, str, str]
) -> None:
    _, session, _ = workspace
    result = fclient.run_tool(tool_request(session), timeout=120)
    check_tool_result(result, fclient.get_collected_file)
    assert blob_keys(fclient) == []  # its input file came beside the message, then went


def test_the_async_client_sends_and_reads_the_same_bytes_beside_its_messages(
    fclient: OrchestratorClient, workspace: tuple[str, str, str]
) -> None:
    relic_id, session, _ = workspace
    big = os.urandom(MAX_FILE)

    async def scenario() -> tuple[ToolExecutionResult, bytes, dict[str, bytes]]:
        async with AsyncOrchestratorClient(fclient.settings) as client:
            result = await client.run_tool(tool_request(session), timeout=120)
            collected = await client.get_collected_file(result.execution_id, "/in/data.bin")
            await client.put_files(relic_id, {"/work/async/big.bin": big})
            back = await client.get_files(relic_id, ["/work/async/big.bin"])
            return result, collected, back

    result, collected, back = asyncio.run(scenario())

    assert result.status == "succeeded", result
    assert result.stdout.split()[0] == hashlib.md5(BINARY).hexdigest()
    assert collected == BINARY
    assert back == {"/work/async/big.bin": big}
    assert blob_keys(fclient) == []


def test_the_same_run_by_task_name_from_a_plain_celery_client(
    fclient: OrchestratorClient, workspace: tuple[str, str, str]
) -> None:
    _, session, _ = workspace
    queue = f"host.{fclient.settings.host_name}"
    app = fclient.app
    sent = app.send_task("orchestrator.tools.execute", args=[tool_request(session)], queue=queue)
    result = ToolExecutionResult.model_validate(sent.get(timeout=120))

    def fetch(execution_id: str, path: str) -> bytes:
        reply = app.send_task(
            "orchestrator.tools.collected_file", args=[execution_id, path], queue=queue
        ).get(timeout=30)
        return FileContent.model_validate(reply).data()

    check_tool_result(result, fetch)


def test_tool_files_over_the_caps_are_refused_before_anything_runs(
    fclient: OrchestratorClient, workspace: tuple[str, str, str], docker_client: Any
) -> None:
    _, session, _ = workspace
    request = tool_request(session)
    request["files"] = [{"path": "/in/x", "text": "z" * (MAX_FILE + 1)}]
    with pytest.raises(LimitExceeded, match="ORCHESTRATOR_FILES_MAX_FILE_BYTES"):
        fclient.run_tool(request, timeout=60)
    request["files"], request["stdin"] = [], "s" * (MAX_REQUEST + 1)
    with pytest.raises(LimitExceeded, match="ORCHESTRATOR_FILES_MAX_REQUEST_BYTES"):
        fclient.run_tool(request, timeout=60)
    label = {"label": [f"orchestrator.session={session}", "orchestrator.kind=tool"]}
    assert gone(lambda: listed(docker_client, label)) == []


# -- the command line -------------------------------------------------------------------------


def cp(host: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """``orchestrator relic cp ...`` as a subprocess (binary output)."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "relic", "cp", *args],
        cwd=ROOT,
        env={**os.environ, **settings_env(host)},
        input=stdin,
        capture_output=True,
        timeout=120,
    )


def test_relic_cp_copies_directories_both_ways_and_tar_streams(
    workspace: tuple[str, str, str], files_host: str, tmp_path: Path, docker_client: Any
) -> None:
    relic_id, _, container = workspace
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "run.sh").write_bytes(b"#!/bin/sh\necho cp\n")
    (src / "run.sh").chmod(0o755)
    (src / "sub" / "blob.bin").write_bytes(BINARY)
    (src / "link").symlink_to("/etc/passwd")  # a local link: skipped, never followed

    up = cp(files_host, str(src), f"{relic_id}:/work/cp/src")
    assert up.returncode == 0, up.stderr
    assert b"skipped" in up.stderr and b"copied 2 files" in up.stderr
    assert sh(docker_client, container, "/work/cp/src/run.sh") == "cp\n"

    down = cp(files_host, f"{relic_id}:/work/cp/src", str(tmp_path / "back"))
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "back" / "sub" / "blob.bin").read_bytes() == BINARY
    assert (tmp_path / "back" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert not (tmp_path / "back" / "link").exists()

    into = cp(files_host, f"{relic_id}:/work/cp/src/run.sh", str(tmp_path / "back"))
    assert into.returncode == 0 and (tmp_path / "back" / "run.sh").exists()  # into the dir

    tar_out = cp(files_host, f"{relic_id}:/work/cp/src", "-")
    assert tar_out.returncode == 0, tar_out.stderr
    with tarfile.open(fileobj=io.BytesIO(tar_out.stdout)) as tar:
        assert sorted(tar.getnames()) == ["src/run.sh", "src/sub/blob.bin"]
    tar_in = cp(files_host, "-", f"{relic_id}:/work/cp/again", stdin=tar_out.stdout)
    assert tar_in.returncode == 0, tar_in.stderr
    assert sh(docker_client, container, "md5sum < /work/cp/again/src/sub/blob.bin").split()[0] == (
        hashlib.md5(BINARY).hexdigest()
    )

    missing = cp(files_host, f"{relic_id}:/work/cp/none", str(tmp_path / "none"))
    assert missing.returncode == 1 and b"missing: /work/cp/none" in missing.stderr
