"""What installing the package gives, and what Celery finds: only the ``orchestrator`` package
(typed), a client without Docker or Flower, configuration modules holding nothing but Celery
settings, every import declared, lock files that pin what pyproject.toml allows, and a
warning when celery or kombu is not the release the kombu workarounds were written for.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import runpy
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import celery
import pytest
from celery import Celery
from celery.app.utils import SETTING_KEYS
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from orchestrator.client.config import client_config
from orchestrator.settings import Settings
from orchestrator.worker import compat
from orchestrator.worker.config import worker_options

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
#: The worker's top-level modules: in the repository and the image, never in site-packages.
WORKER_TOP_LEVEL = ("worker.py", "celeryconfig.py", "tasks")
#: What a client-only install must not need.
WORKER_ONLY_LIBRARIES = ("docker", "flower", "tornado", "requests", "urllib3")


def requirements(*extras: str) -> dict[str, Requirement]:
    """The base dependencies plus those of ``extras``, by canonical name."""
    listed = list(PROJECT["dependencies"])
    for extra in extras:
        listed += PROJECT["optional-dependencies"][extra]
    parsed = (Requirement(line) for line in listed)
    return {canonicalize_name(r.name): r for r in parsed if r.name != PROJECT["name"]}


def lock_pins(name: str) -> dict[str, Version]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", (ROOT / name).read_text(), re.M)
    return {canonicalize_name(package): Version(version) for package, version in pins}


def installed_env(tmp_path: Path) -> dict[str, str]:
    """An environment where ``orchestrator`` is importable as if installed, and nothing else
    of the repository (no worker.py, celeryconfig.py or tasks/), with no Celery or
    orchestrator settings of the caller's."""
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "orchestrator").symlink_to(ROOT / "orchestrator", target_is_directory=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ORCHESTRATOR_", "CELERY_", "PYTHON"))
    }
    env["PYTHONPATH"] = str(site)
    env["ORCHESTRATOR_BROKER_URL"] = env["ORCHESTRATOR_RESULT_BACKEND"] = "redis://127.0.0.1:1/0"
    return env


def run_python(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


# -- what gets installed -----------------------------------------------------------------------


def test_only_the_orchestrator_package_is_installed() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]

    assert "py-modules" not in setuptools
    # Found rather than listed, so that a new subpackage is never left out.
    assert setuptools["packages"] == {"find": {"include": ["orchestrator", "orchestrator.*"]}}


def test_every_folder_of_python_in_the_package_is_a_package() -> None:
    folders = {path.parent for path in (ROOT / "orchestrator").rglob("*.py")}

    assert [f for f in folders if not (f / "__init__.py").is_file()] == []


def test_the_package_is_typed_and_licensed() -> None:
    assert (ROOT / "orchestrator" / "py.typed").is_file()
    assert PYPROJECT["tool"]["setuptools"]["package-data"]["orchestrator"] == ["py.typed"]
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=77"]  # SPDX license (PEP 639)


def test_the_image_gets_the_lock_file_license_and_worker_modules() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    sent = (ROOT / ".dockerignore").read_text().split()

    assert "--require-hashes -r requirements.lock" in dockerfile
    assert "cp -R worker.py celeryconfig.py tasks /opt/orchestrator/app/" in dockerfile
    assert "PYTHONPATH=/opt/orchestrator/app" in dockerfile
    for name in ("LICENSE", "requirements.lock", *WORKER_TOP_LEVEL):
        assert f"!{name}" in sent or f"!{name}/" in sent, name


# -- the client, alone ------------------------------------------------------------------------


def test_the_client_imports_neither_docker_nor_flower(tmp_path: Path) -> None:
    code = (
        "import sys, orchestrator, orchestrator.cli, orchestrator.client.celeryconfig\n"
        "orchestrator.OrchestratorClient()\n"
        f"print(sorted(set({WORKER_ONLY_LIBRARIES!r}) & set(sys.modules)))"
    )
    done = run_python(code, tmp_path, installed_env(tmp_path))

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_client_works_in_a_project_with_its_own_celeryconfig(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("celeryconfig.py", "tasks.py", "worker.py"):
        (project / name).write_text(f"raise RuntimeError('the project\\'s own {name} was read')\n")
    code = (
        "import sys\n"
        "from orchestrator import OrchestratorClient\n"
        "client = OrchestratorClient()\n"
        "print(client.app.conf.task_routes['orchestrator.tools.*']['queue'])\n"
        "print(sorted({'celeryconfig', 'tasks', 'worker'} & set(sys.modules)))"
    )
    done = run_python(code, project, installed_env(tmp_path))

    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["tools", "[]"]


# -- configuration modules: nothing but Celery settings ----------------------------------------


@cache
def celery_source() -> str:
    package = Path(celery.__file__).parent
    return "\n".join(path.read_text(errors="replace") for path in package.rglob("*.py"))


def is_celery_setting(name: str) -> bool:
    """A setting Celery declares, or one its code reads by name without declaring it
    (``redis_backend_health_check_interval``, read by celery/backends/redis.py)."""
    return name in SETTING_KEYS or f"'{name}'" in celery_source()


def public(namespace: dict[str, object]) -> dict[str, object]:
    return {name: value for name, value in namespace.items() if not name.startswith("_")}


@pytest.fixture
def orchestrator_env(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("ORCHESTRATOR_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("ORCHESTRATOR_BROKER_URL", "redis://broker.example:6379/3")
    monkeypatch.setenv("ORCHESTRATOR_HOST_NAME", "alpha")
    monkeypatch.setenv("ORCHESTRATOR_WORKER_CONCURRENCY", "7")
    return Settings.from_env()


def test_the_worker_celeryconfig_holds_the_client_and_worker_settings_only(
    orchestrator_env: Settings,
) -> None:
    settings = public(runpy.run_path(str(ROOT / "celeryconfig.py")))

    assert settings == {**client_config(orchestrator_env), **worker_options(orchestrator_env)}
    assert [name for name in settings if not is_celery_setting(name)] == []
    assert settings["broker_url"] == "redis://broker.example:6379/3"
    assert isinstance(settings["task_routes"], dict)


def test_the_client_celeryconfig_holds_the_client_settings_only(
    orchestrator_env: Settings,
) -> None:
    settings = public(runpy.run_module("orchestrator.client.celeryconfig"))

    assert settings == client_config(orchestrator_env)
    assert [name for name in settings if not is_celery_setting(name)] == []


def tools_queue_of(app: Celery) -> str:
    """Where ``celery call orchestrator.tools.execute`` sends the task (Celery's own routing:
    the call that raised ``TypeError: task_routes() got an unexpected keyword argument``)."""
    return str(app.amqp.router.route({}, "orchestrator.tools.execute", (), {})["queue"].name)


def test_celery_without_an_app_reads_the_repository_celeryconfig(
    orchestrator_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CELERY_CONFIG_MODULE", raising=False)
    monkeypatch.delitem(sys.modules, "celeryconfig", raising=False)
    monkeypatch.chdir(ROOT)
    app = Celery(loader="default", set_as_current=False)

    assert app.conf.broker_url == "redis://broker.example:6379/3"
    assert tools_queue_of(app) == "tools"


def test_celery_with_the_client_config_ignores_a_project_celeryconfig(
    orchestrator_env: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "celeryconfig.py").write_text("raise RuntimeError('not this one')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CELERY_CONFIG_MODULE", "orchestrator.client.celeryconfig")  # --config
    monkeypatch.delitem(sys.modules, "orchestrator.client.celeryconfig", raising=False)
    app = Celery(loader="default", set_as_current=False)

    assert app.conf.broker_url == "redis://broker.example:6379/3"
    assert app.conf.result_serializer == "json"
    assert tools_queue_of(app) == "tools"


# -- dependencies ------------------------------------------------------------------------------


def third_party_imports(paths: list[Path]) -> dict[str, set[str]]:
    """Top-level names of the non-stdlib, non-first-party modules each file imports."""
    first_party = {"orchestrator", "tasks", "celeryconfig", "worker"}
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in first_party:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def shipped_sources() -> list[Path]:
    paths = [*(ROOT / "orchestrator").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]
    return paths + [ROOT / "worker.py", ROOT / "celeryconfig.py"]


def test_every_third_party_import_is_declared() -> None:
    declared = requirements("worker")
    imports = third_party_imports(shipped_sources())

    missing = {name: where for name, where in imports.items() if name not in declared}
    assert missing == {}


def test_the_client_side_imports_only_base_dependencies() -> None:
    worker_side = ("orchestrator/engine/", "orchestrator/worker/", "tasks/", "worker.py")
    client_side = [
        path
        for path in shipped_sources()
        if not str(path.relative_to(ROOT)).startswith(worker_side)
    ]
    base = requirements()

    outside = {n: w for n, w in third_party_imports(client_side).items() if n not in base}
    assert outside == {}
    assert not set(WORKER_ONLY_LIBRARIES) & set(base)


@pytest.mark.parametrize(
    ("lock", "extras"), [("requirements.lock", ("worker",)), ("requirements-dev.lock", ("dev",))]
)
def test_the_lock_files_pin_every_dependency_within_its_bounds(
    lock: str, extras: tuple[str, ...]
) -> None:
    pins = lock_pins(lock)
    wanted = requirements(*extras)
    if "dev" in extras:
        wanted |= requirements("worker")

    unpinned = sorted(name for name in wanted if name not in pins)
    outside = {
        name: str(pins[name])
        for name, wanted_by in wanted.items()
        if name in pins and pins[name] not in wanted_by.specifier
    }
    assert (unpinned, outside) == ([], {})


def test_the_dev_lock_keeps_the_worker_lock_pins() -> None:
    worker, dev = lock_pins("requirements.lock"), lock_pins("requirements-dev.lock")

    assert {name: dev.get(name) for name in worker} == worker


# -- celery and kombu: the releases the workarounds were written for ---------------------------


@pytest.mark.parametrize("library", sorted(compat.WRITTEN_FOR))
def test_bounds_and_locks_follow_the_release_the_workarounds_were_written_for(
    library: str,
) -> None:
    major, minor = map(int, compat.WRITTEN_FOR[library].split("."))
    specifier = requirements()[library].specifier

    assert Version(f"{major}.{minor}.0") in specifier
    assert Version(f"{major}.{minor + 1}.0") not in specifier
    for lock in ("requirements.lock", "requirements-dev.lock"):
        assert lock_pins(lock)[library].release[:2] == (major, minor), lock


def test_another_release_is_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    installed = {name: f"{release}.2" for name, release in compat.WRITTEN_FOR.items()}
    installed["kombu"] = "5.8.0"

    with caplog.at_level(logging.WARNING, logger="orchestrator.worker.compat"):
        warnings = compat.check_versions(installed)

    assert len(warnings) == 1
    assert caplog.messages == warnings
    assert "kombu 5.8.0 is installed" in warnings[0]
    assert f"written for kombu {compat.WRITTEN_FOR['kombu']}" in warnings[0]


def test_the_releases_written_for_pass_silently(caplog: pytest.LogCaptureFixture) -> None:
    installed = {name: f"{release}.0rc1" for name, release in compat.WRITTEN_FOR.items()}

    with caplog.at_level(logging.WARNING, logger="orchestrator.worker.compat"):
        assert compat.check_versions(installed) == []
    assert caplog.messages == []


def test_applying_the_workarounds_checks_the_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = []
    monkeypatch.setattr(compat, "check_versions", lambda: checked.append(True) or [])

    compat.apply_all()

    assert checked == [True]
