"""`kiln serve` limit and key-reload flags over the environment, and their bad values."""

from __future__ import annotations

import pytest

from kiln.cli import _serve_settings, build_parser

ENV = ("KILN_TEXT_OVERFLOW", "KILN_MAX_TEXT_CHARS", "KILN_API_KEYS_RELOAD_S", "KILN_MAX_IMAGE_PIXELS")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def settings(*flags: str):  # type: ignore[no-untyped-def]
    return _serve_settings(build_parser().parse_args(["serve", "bundle", *flags]))


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = settings()
    assert (s.text_overflow, s.max_text_chars, s.api_keys_reload_s) == ("truncate", 100_000, 2.0)


def test_flags_override_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("KILN_TEXT_OVERFLOW", "reject")
    clean_env.setenv("KILN_API_KEYS_RELOAD_S", "9")
    assert (settings().text_overflow, settings().api_keys_reload_s) == ("reject", 9.0)
    s = settings("--text-overflow", "truncate", "--max-text-chars", "500", "--api-keys-reload", "0")
    assert (s.text_overflow, s.max_text_chars, s.api_keys_reload_s) == ("truncate", 500, 0.0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--text-overflow", "cut"], "invalid choice: 'cut' (choose from 'truncate', 'reject')"),
        (["--max-text-chars", "0"], "0 is not at least 1"),
        (["--max-text-chars", "lots"], "'lots' is not a whole number"),
        (["--max-image-pixels", "0"], "0 is not at least 1"),
        (["--api-keys-reload", "-1"], "-1 is not a number of seconds >= 0"),
        (["--api-keys-reload", "soon"], "'soon' is not a number of seconds"),
    ],
)
def test_bad_values_are_refused_with_the_reason(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "bundle", *flags])
    assert message in capsys.readouterr().err


def test_the_image_pixel_limit_from_the_environment_or_the_flag(clean_env: pytest.MonkeyPatch) -> None:
    from kiln.serve.dataplane import Limits

    assert settings().max_image_pixels == 25_000_000
    clean_env.setenv("KILN_MAX_IMAGE_PIXELS", "1000000")
    assert settings().max_image_pixels == 1_000_000
    s = settings("--max-image-pixels", "4000")
    assert s.max_image_pixels == 4000 and Limits.from_settings(s).max_image_pixels == 4000
