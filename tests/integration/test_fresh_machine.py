"""The README's Quickstart on a fresh Debian 12, for real.

The machine: a Debian 12 root file system from debootstrap (scripts/base-image.sh's
`local/debian:bookworm`, imported with `docker import`) plus only what a cloud image adds:
python3, git and ca-certificates, and the dynamically linked busybox that initramfs-tools
pulls in (the `FROM scratch` test image cannot use it). So: no make, no pip, no venv module,
no Docker engine, no Redis, empty apt lists. It runs as a container with its own Docker
engine inside (the flags below; `--privileged` is refused on this machine), the repository
is cloned into it from a read-only copy of this checkout, and the README's first command runs
there verbatim, read from README.md. apt reaches Debian's mirror; pip gets this machine's CA
bundle (`PIP_CERT`) and nothing else. The demo's sample tool must succeed, a second run must
install nothing, the README's stop command must stop what the demo started, and the system
Python must be left as it was.

The copy is this checkout as it is now, uncommitted changes included (committed in the
copy): on a fresh CI clone that is exactly HEAD.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, have, require

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

DEBIAN_IMAGE = "local/debian:bookworm"  # scripts/base-image.sh debian
#: What a Debian cloud image has beyond debootstrap's minbase, as far as the Quickstart goes.
CLOUD_PACKAGES = ("python3", "git", "ca-certificates", "busybox")
#: Its own Docker engine inside the container, without --privileged.
NESTED_ENGINE = (
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/var/lib/docker",
)  # fmt: skip
LABEL = "orchestrator-test=fresh-machine"
CLONE = "/root/orchestrator"
CONTAINER_CA = "/run/host-ca/pip-ca.crt"
#: How long the first command may take there: apt, pip, dockerd, the demo (about 3 minutes).
FIRST_RUN_SECONDS = 1200


def docker(
    *args: str, timeout: float = 600, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The docker CLI (the flags above are the CLI's), output captured, stderr in stdout."""
    result = subprocess.run(
        ["docker", *args],
        input=input,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args[:3])}... failed:\n{result.stdout[-4000:]}")
    return result


def git(*args: str | Path) -> str:
    return subprocess.run(
        ["git", *map(str, args)], capture_output=True, text=True, check=True, timeout=120
    ).stdout


def quickstart() -> str:
    """The README's Quickstart section."""
    text = (ROOT / "README.md").read_text()
    return text.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]


def readme_commands() -> tuple[str, str]:
    """The Quickstart's first command (verbatim, comment and all) and its stop command."""
    block = quickstart().split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip()[:1] not in ("", "#")]
    stop = re.search(r"`([^`]+)` stops them", quickstart())
    assert commands and stop, "the README's Quickstart has no command block or stop command"
    return commands[0], stop.group(1)


def pip_environment() -> tuple[Path | None, dict[str, str]]:
    """This machine's CA bundle for pip (`$PIP_CERT`, else pip's configuration) and pip's
    index when it is not PyPI and reachable from a container (http or https)."""
    env: dict[str, str] = {}
    configured = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    settings = {
        key.rsplit(".", 1)[-1]: value.strip().strip("'\"")
        for key, _, value in (line.partition("=") for line in configured.splitlines())
    }
    index = os.environ.get("PIP_INDEX_URL") or settings.get("index-url", "")
    if index.startswith(("http://", "https://")):
        env["PIP_INDEX_URL"] = index
    cert = os.environ.get("PIP_CERT") or settings.get("cert", "")
    return (Path(cert) if cert and Path(cert).is_file() else None), env


def snapshot(directory: Path) -> Path:
    """A git repository holding this checkout as it is: tracked files as in the working tree,
    new files that are not ignored, deletions; committed, so `git clone` gets all of it."""
    repo = directory / "repo"
    git("clone", "-q", "--no-hardlinks", ROOT, repo)
    listed = git("-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for relative in sorted(set(filter(None, listed.split("\0")))):
        source, target = ROOT / relative, repo / relative
        if target.is_symlink() or target.is_file():
            target.unlink()
        if source.is_symlink() or source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
    git("-C", repo, "add", "-A")
    git(
        "-C", repo, "-c", "user.name=test", "-c", "user.email=test@localhost",
        "commit", "-q", "--allow-empty", "--no-verify", "-m", "the checkout under test",
    )  # fmt: skip
    return repo


@dataclass
class Machine:
    """The fresh Debian machine: a container running its own Docker engine."""

    name: str
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def run(
        self, script: str, timeout: float = 300, workdir: str = "/root"
    ) -> subprocess.CompletedProcess[str]:
        """`bash -c script` as root on the machine, with the run's environment."""
        env = [arg for key, value in self.env.items() for arg in ("-e", f"{key}={value}")]
        return docker(
            "exec", "-w", workdir, *env, self.name, "bash", "-c", script,
            timeout=timeout, check=False,
        )  # fmt: skip

    def ok(self, script: str, timeout: float = 300) -> str:
        result = self.run(script, timeout)
        assert result.returncode == 0, f"{script!r} failed:\n{result.stdout[-4000:]}"
        return result.stdout

    def remove(self) -> None:
        # Its engine's containers first, so their cgroups (in this machine's cgroup tree,
        # mounted in) go with them.
        self.run("command -v docker >/dev/null && docker ps -aq | xargs -r docker rm -f", 120)
        docker("rm", "-f", "-v", self.name, timeout=120, check=False)


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    require(os.geteuid() == 0, "root (to run a Docker engine in a container)")
    require(have("docker") and have("git"), "the docker and git commands")
    require(docker("info", timeout=30, check=False).returncode == 0, "the Docker engine")
    started = step = time.monotonic()
    timings: dict[str, float] = {}

    def lap(what: str) -> None:
        nonlocal step
        timings[what], step = time.monotonic() - step, time.monotonic()

    created: list[str] = []
    tag = f"orchestrator-test/fresh-debian:{uuid.uuid4().hex[:10]}"
    name = f"orch-fresh-{uuid.uuid4().hex[:10]}"
    directory = tmp_path_factory.mktemp("fresh")
    try:
        if docker("image", "inspect", DEBIAN_IMAGE, check=False).returncode != 0:
            require(have("debootstrap"), "debootstrap (for scripts/base-image.sh)")
            subprocess.run(
                ["bash", str(ROOT / "scripts/base-image.sh"), "debian"], check=True, timeout=900
            )
            created.append(DEBIAN_IMAGE)
        lap("debootstrap")
        packages = " ".join(CLOUD_PACKAGES)
        docker(
            "build", "-q", "--network", "host", "-t", tag, "-",
            input=f"FROM {DEBIAN_IMAGE}\n"
            "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq"
            f" --no-install-recommends {packages} >/dev/null && rm -rf /var/lib/apt/lists/*\n"
            'CMD ["bash"]\n',
        )  # fmt: skip
        created.append(tag)
        lap("cloud_image")
        repo = snapshot(directory)
        ca, env = pip_environment()
        mounts = ["-v", f"{repo}:/src:ro"]
        if ca is not None:
            mounts += ["-v", f"{ca}:{CONTAINER_CA}:ro"]
            env["PIP_CERT"] = CONTAINER_CA
        # --init: a machine's pid 1 reaps orphans (the daemons setup.sh starts); sleep would not.
        docker(
            "run", "-d", "--init", "--name", name, "--label", LABEL, *NESTED_ENGINE, *mounts,
            tag, "sleep", "infinity",
        )  # fmt: skip
        fresh = Machine(name, env, timings)
        fresh.ok(f"git clone -q /src {CLONE}")
        lap("container_and_clone")
        yield fresh
    finally:
        step = time.monotonic()
        if docker("container", "inspect", name, check=False).returncode == 0:
            Machine(name, {}).remove()
        for image in reversed(created):
            docker("rmi", image, check=False)
        shutil.rmtree(directory, ignore_errors=True)
        lap("teardown")
        timings["total"] = time.monotonic() - started
        print(f"fresh machine timings (s): { {k: round(v) for k, v in timings.items()} }")


def test_the_machine_is_as_bare_as_a_cloud_image(machine: Machine) -> None:
    """The premise: none of what the Quickstart used to take for granted is there."""
    for command in ("make", "pip", "pip3", "python", "docker", "dockerd", "redis-server", "file"):
        assert machine.run(f"command -v {command}").returncode != 0, f"{command} is installed"
    assert machine.run("python3 -m pip --version").returncode != 0, "pip is installed"
    assert machine.run("python3 -c 'import ensurepip'").returncode != 0, "python3-venv is"
    # PEP 668: pip would refuse to install into the system Python.
    assert "[externally-managed]" in machine.ok("cat /usr/lib/python3*/EXTERNALLY-MANAGED")
    assert machine.run("ldd /bin/busybox").returncode == 0, "busybox is statically linked"


def test_the_readmes_first_command_runs_the_demo(machine: Machine) -> None:
    first, _ = readme_commands()
    started = time.monotonic()
    result = machine.run(first, timeout=FIRST_RUN_SECONDS, workdir=CLONE)
    machine.timings["first_command"] = time.monotonic() - started
    print(result.stdout)
    assert result.returncode == 0, f"{first!r} failed:\n{result.stdout[-6000:]}"
    assert re.search(r"^status:\s+succeeded$", result.stdout, re.M), result.stdout[-3000:]
    assert re.search(r"^hello world from \S+$", result.stdout, re.M), result.stdout[-3000:]
    assert '{"greeting": "hello world"}' in result.stdout
    assert "[setup] creating the virtual environment" in result.stdout
    assert "unpacking the busybox-static package" in result.stdout


def test_the_package_is_in_the_venv_and_the_system_is_untouched(machine: Machine) -> None:
    assert "usage" in machine.ok(f"{CLONE}/.venv/bin/orchestrator --help").lower()
    found = machine.ok(f"source {CLONE}/scripts/env.sh && command -v orchestrator celery pytest")
    assert found.split() == [f"{CLONE}/.venv/bin/{c}" for c in ("orchestrator", "celery", "pytest")]
    assert machine.run("python3 -c 'import celery'").returncode != 0, "celery is in the system"
    assert machine.run("command -v orchestrator").returncode != 0, "orchestrator on root's PATH"
    # The static busybox came from the package's archive, unpacked elsewhere, not installed.
    assert machine.run("dpkg -s busybox-static >/dev/null 2>&1").returncode != 0
    assert machine.run("ldd /bin/busybox").returncode == 0, "/bin/busybox was replaced"


def test_the_first_command_again_changes_nothing(machine: Machine) -> None:
    first, _ = readme_commands()
    started = time.monotonic()
    output = machine.ok(f"cd {CLONE} && {first}", timeout=300)
    machine.timings["second_run"] = time.monotonic() - started
    assert re.search(r"^status:\s+succeeded$", output, re.M), output[-3000:]
    for line in output.splitlines():
        assert not re.search(r"\[setup\] (installing|creating|starting)", line), output[-3000:]
    assert "already running" in output, output[-3000:]


def test_the_readmes_stop_command_stops_the_demo(machine: Machine) -> None:
    _, stop = readme_commands()
    output = machine.ok(f"cd {CLONE} && {stop}")
    assert "stopped" in output
    processes = machine.ok("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; echo")
    assert "celery -A worker" not in processes, processes
