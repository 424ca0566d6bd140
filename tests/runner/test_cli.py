"""The command line as a new user meets it: help, one-line errors, no litter, the setup."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

from runner.commands import main
from support import ROOT


def _run_args(tmp_path, *extra: str) -> list[str]:
    return [
        "run",
        "--repo",
        str(tmp_path / "no-such-repository"),
        "--head",
        "feature",
        "--base",
        "main",
        "--dataset",
        str(ROOT / "data" / "hsc" / "set1"),
        "--out",
        str(tmp_path / "out"),
        "--cache",
        str(tmp_path / "cache"),
        *extra,
    ]


def test_run_help_explains_every_option_and_its_default(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SCARLET_REGRESSION_CACHE", str(tmp_path / "my-cache"))
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping inside the long path
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    options = re.split(r"\n  (?=-)", capsys.readouterr().out)[1:]
    lines = {option.split()[0]: " ".join(option.split()) for option in options}
    assert "repeat" in lines["--dataset"]
    assert "result.json" in lines["--out"]
    assert f"(default: {os.cpu_count()})" in lines["--workers"]
    assert "(default: 600.0)" in lines["--timeout"]
    assert "(default: 6144)" in lines["--memory-limit"]
    assert f"(default: {tmp_path / 'my-cache'})" in lines["--cache"]
    assert "(default: None)" not in "".join(lines.values())


@pytest.mark.parametrize("shard", ["3/2", "a/b", "1"])
def test_a_bad_shard_is_one_line_and_exit_2(shard, capsys, tmp_path):
    assert main(_run_args(tmp_path, "--shard", shard)) == 2
    err = capsys.readouterr().err
    assert err == f"error: --shard is I/N with 0 <= I < N, got {shard!r}\n"
    assert not (tmp_path / "out").exists()


def test_compare_of_a_missing_result_says_so_in_one_line(capsys, tmp_path):
    missing = tmp_path / "nonexistent.json"
    assert main(["compare", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot read {missing}: No such file or directory\n"


def test_a_run_that_cannot_start_leaves_no_out_folder_it_made(capsys, tmp_path):
    assert main(_run_args(tmp_path)) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: cannot clone")
    assert not (tmp_path / "out").exists()


def test_a_run_that_cannot_start_keeps_an_out_folder_it_did_not_make(capsys, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(_run_args(tmp_path)) == 2
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$PIP_LOG"
"""


def test_setup_installs_again_only_when_pyproject_changes(tmp_path):
    """setup.sh against a fake .venv whose python logs what it is asked to do."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "pip.log"
    env = {**os.environ, "PIP_LOG": str(log), "PYTHON": sys.executable}

    def setup() -> list[str]:
        subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], env=env, check=True)
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return calls

    assert any("install" in call and "-e .[runner,test]" in call for call in setup())
    assert setup() == []
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '2'\n")
    assert any("-e .[runner,test]" in call for call in setup())
    assert setup() == []
