"""Request-log settings: the environment (KILN_MONITOR_*) and `kiln serve` flags over it."""

from __future__ import annotations

import pytest

from kiln.cli import _serve_settings, build_parser
from kiln.settings import Settings

MONITOR_ENV = (
    "KILN_MONITOR",
    "KILN_MONITOR_DB",
    "KILN_MONITOR_SAMPLE",
    "KILN_MONITOR_KEEP_TEXT",
    "KILN_MONITOR_RETENTION_DAYS",
    "KILN_MONITOR_QUEUE",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in MONITOR_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_kiln_serve_logs_by_default_but_code_built_settings_do_not(clean_env: pytest.MonkeyPatch) -> None:
    env = Settings.from_env()
    assert env.monitor is True and env.monitor_db is None
    assert (env.monitor_sample, env.monitor_keep_text, env.monitor_retention_days) == (0.1, False, 30)
    assert Settings().monitor is False


def test_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("KILN_MONITOR", "off")
    clean_env.setenv("KILN_MONITOR_DB", "postgresql+psycopg://u@h/db")
    clean_env.setenv("KILN_MONITOR_SAMPLE", "0.5")
    clean_env.setenv("KILN_MONITOR_KEEP_TEXT", "yes")
    clean_env.setenv("KILN_MONITOR_RETENTION_DAYS", "7")
    clean_env.setenv("KILN_MONITOR_QUEUE", "100")
    s = Settings.from_env()
    assert (s.monitor, s.monitor_db, s.monitor_sample) == (False, "postgresql+psycopg://u@h/db", 0.5)
    assert (s.monitor_keep_text, s.monitor_retention_days, s.monitor_queue) == (True, 7, 100)
    clean_env.setenv("KILN_MONITOR", "maybe")
    with pytest.raises(ValueError, match="KILN_MONITOR='maybe'"):
        Settings.from_env()


def test_serve_flags_override_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("KILN_MONITOR_SAMPLE", "0.5")
    args = build_parser().parse_args(
        ["serve", "b", "--monitor-db", "sqlite:////tmp/x.db", "--monitor-sample", "1", "--keep-text"]
    )
    s = _serve_settings(args)
    assert (s.monitor, s.monitor_db, s.monitor_sample, s.monitor_keep_text) == (
        True,
        "sqlite:////tmp/x.db",
        1.0,
        True,
    )
    off = _serve_settings(build_parser().parse_args(["serve", "b", "--no-monitor"]))
    assert off.monitor is False and off.monitor_sample == 0.5


def test_sample_flag_must_be_a_fraction(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "b", "--monitor-sample", "2"])
    assert "not between 0 and 1" in capsys.readouterr().err
