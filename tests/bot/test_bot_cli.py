"""``python -m bot`` as a new user meets it: --help lists the settings, and missing
settings are named all at once in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bot.settings import Settings, SettingsError


def bot(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_help_lists_every_required_setting_and_serves_nothing():
    done = bot("--help", env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    for name in ("GITHUB_APP_ID", "GITHUB_APP_PRIVATE_KEY_FILE", "GITHUB_WEBHOOK_SECRET",
                 "SCARLET_BOT_DATASETS", "PORT", "SCARLET_BOT_DATA"):  # fmt: skip
        assert name in done.stdout


def test_missing_settings_are_named_at_once_in_one_line():
    done = bot(env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: not set: GITHUB_APP_ID, GITHUB_APP_PRIVATE_KEY (or GITHUB_APP_PRIVATE_KEY_FILE),"
        " GITHUB_WEBHOOK_SECRET, SCARLET_BOT_DATASETS (see python -m bot --help)"
    )


def test_a_private_key_file_that_cannot_be_read_is_named(tmp_path):
    environ = {
        "GITHUB_APP_ID": "1",
        "GITHUB_APP_PRIVATE_KEY_FILE": str(tmp_path / "missing.pem"),
        "GITHUB_WEBHOOK_SECRET": "s",
        "SCARLET_BOT_DATASETS": "data/hsc/set1",
    }
    with pytest.raises(SettingsError, match=r"GITHUB_APP_PRIVATE_KEY_FILE: .*No such file"):
        Settings.from_env(environ)
    (tmp_path / "missing.pem").write_text("key")
    assert Settings.from_env(environ).private_key == "key"
