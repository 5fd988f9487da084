"""The settings reference: generated from Settings, and docs/configuration.md's copy of it
kept in sync."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydantic import Field

from orchestrator import config_reference as ref
from orchestrator.models import PoolSpec
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / ref.REFERENCE_PAGE


def rows(table: str) -> dict[str, tuple[str, str]]:
    """Variable -> (default, meaning) of a generated table."""
    found = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == 3, line
        found[cells[0].strip("`")] = (cells[1], cells[2])
    return found


def test_the_configuration_page_holds_the_generated_table():
    text = PAGE.read_text(encoding="utf-8")
    assert ref.START_MARKER in text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    assert ref.reference_block(text) == ref.markdown_table(), (
        f"{ref.REFERENCE_PAGE}'s settings table is out of date: run `make config-reference`"
    )


def test_the_readme_links_to_the_reference_and_holds_no_copy():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"]({ref.REFERENCE_PAGE})" in readme
    assert ref.START_MARKER not in readme


def test_every_field_has_a_row_with_a_meaning():
    table = rows(ref.markdown_table())
    assert list(table) == [ref.env_name(name) for name in Settings.model_fields]
    for variable, (default, meaning) in table.items():
        assert default, variable
        assert meaning and meaning != "-", variable


def test_every_setting_says_what_it_does():
    """The fallback below is for subclasses: every field of Settings itself has a description
    of its own, so no row of the reference only repeats the variable's name."""
    undocumented = [
        n for n, f in Settings.model_fields.items() if not (f.description or "").strip()
    ]
    assert undocumented == [], "add a description= to these Settings fields"


def test_a_field_without_description_falls_back_to_its_name_in_words():
    class Undocumented(Settings):
        relic_grace_period_seconds: int = 5

    table = rows(ref.markdown_table(Undocumented))
    assert table["ORCHESTRATOR_RELIC_GRACE_PERIOD_SECONDS"] == (
        "`5`",
        "Relic grace period seconds.",
    )
    field = Settings.model_fields["broker_url"]
    assert ref.description("broker_url", field) == field.description


def test_defaults_are_written_as_the_environment_takes_them():
    table = rows(ref.markdown_table())
    assert table["ORCHESTRATOR_BROKER_URL"][0] == "`redis://localhost:6379/0`"
    assert table["ORCHESTRATOR_HOST_NAME"][0] == "(hostname)"
    assert table["ORCHESTRATOR_REDIS_URL"][0] == "(none)"
    assert table["ORCHESTRATOR_ALLOWED_VOLUME_ROOTS"][0] == "(none)"
    assert table["ORCHESTRATOR_POOL"][0] == "(none)"
    assert table["ORCHESTRATOR_SESSION_EGRESS"][0] == "`false`"
    assert table["ORCHESTRATOR_MAX_CPU_LIMIT"][0] == "`4.0`"
    assert table["ORCHESTRATOR_ALLOWED_NETWORK_MODES"][0] == "`none,session`"
    assert table["ORCHESTRATOR_FLOWER_ALLOWED_HOSTS"][0] == "`localhost,127.0.0.1,::1`"
    assert socket.gethostname() not in ref.markdown_table()


def test_a_computed_default_is_named_not_run():
    calls = []

    def cpu_count_guess() -> int:
        calls.append(1)
        return 7

    class Computed(Settings):
        guessed: int = Field(default_factory=cpu_count_guess, description="guess")

    calls.clear()  # pydantic may not call it when the class is made, but be sure
    assert rows(ref.markdown_table(Computed))["ORCHESTRATOR_GUESSED"] == (
        "(cpu_count_guess)",
        "guess",
    )
    assert calls == []


def test_every_written_default_reads_back_as_the_default():
    defaults = Settings(host_name="h")
    environ = {}
    for variable, (default, _) in rows(ref.markdown_table()).items():
        if default.startswith("`"):
            environ[variable] = default.strip("`")
    assert len(environ) > 25
    assert Settings.from_env(environ, host_name="h") == defaults


def test_lists_are_comma_joined_and_pools_are_json():
    class Lists(Settings):
        allowed_volume_roots: list[str] = Field(["/srv/a", "/srv/b"], description="roots")

    assert rows(ref.markdown_table(Lists))["ORCHESTRATOR_ALLOWED_VOLUME_ROOTS"] == (
        "`/srv/a,/srv/b`",
        "roots",
    )
    pool = [PoolSpec(image="my/tool:1", size=2, memory_mb=512, cpu_limit=1.0)]
    written = ref.env_value(pool)
    assert written.startswith('[{"image": "my/tool:1"')
    assert Settings.from_env({"ORCHESTRATOR_POOL": written}).pool == pool
    assert ref.env_value(["a", "b"]) == "a,b"
    assert (ref.env_value(True), ref.env_value(None), ref.env_value(3)) == ("true", "", "3")


def test_cells_are_markdown_safe():
    class Awkward(Settings):
        odd_one: str = Field("x", description="a | b for <name>\nnext line")

    line = ref.markdown_table(Awkward).splitlines()[-1]
    assert line == "| `ORCHESTRATOR_ODD_ONE` | `x` | a \\| b for &lt;name&gt; next line |"


def test_replace_block_rewrites_only_between_the_markers(tmp_path: Path):
    path = tmp_path / "configuration.md"
    path.write_text(f"# t\n\nbefore\n\n{ref.START_MARKER}\nold\n{ref.END_MARKER}\n\nafter\n")
    assert ref.main([str(path)]) == 0
    text = path.read_text()
    assert text.startswith("# t\n\nbefore\n\n" + ref.START_MARKER + "\n| variable |")
    assert text.endswith(ref.END_MARKER + "\n\nafter\n")
    assert ref.reference_block(text) == ref.markdown_table()
    assert ref.replace_reference_block(text, ref.markdown_table()) == text  # idempotent
    with pytest.raises(ValueError, match="settings:start"):
        ref.reference_block("no markers here")


def test_main_rewrites_the_reference_page_by_default_and_prints_for_a_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    page = tmp_path / ref.REFERENCE_PAGE
    page.parent.mkdir()
    page.write_text(f"# c\n\n{ref.START_MARKER}\n{ref.END_MARKER}\n")
    monkeypatch.chdir(tmp_path)
    assert ref.main([]) == 0
    assert ref.reference_block(page.read_text()) == ref.markdown_table()
    assert "updated" in capsys.readouterr().out
    assert ref.main([]) == 0
    assert "already up to date" in capsys.readouterr().out
    assert ref.main(["-"]) == 0
    assert capsys.readouterr().out == ref.markdown_table()
