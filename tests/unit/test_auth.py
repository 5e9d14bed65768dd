"""deployments/transports/auth.py: the API key fails closed, and the per-request check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deployments.transports.auth import (
    API_KEY_ENV,
    API_KEY_FILE_ENV,
    REQUIRE_API_KEY_ENV,
    ApiKeyError,
    authorized,
    describe,
    load_api_key,
    load_management_key,
    require_api_key,
)

KEY = "k-3f9c1a7e"


def _key_file(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "api_key"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def _fails(environ: dict[str, str], *names: str) -> ApiKeyError:
    """load_api_key raises ApiKeyError naming `names` and never echoing the key."""
    with pytest.raises(ApiKeyError) as info:
        load_api_key(environ)
    message = str(info.value)
    for name in names:
        assert name in message
    assert KEY not in message
    assert isinstance(info.value, ValueError)
    return info.value


# --- no variables: auth off ----------------------------------------------------------------------


def test_nothing_set_means_no_key() -> None:
    assert load_api_key({}) is None
    assert load_api_key({"UNRELATED": "x"}) is None
    assert load_api_key({REQUIRE_API_KEY_ENV: "0"}) is None
    assert load_api_key({REQUIRE_API_KEY_ENV: "false"}) is None
    assert load_api_key({REQUIRE_API_KEY_ENV: ""}) is None


# --- where the key comes from --------------------------------------------------------------------


def test_key_from_the_environment_is_stripped() -> None:
    assert load_api_key({API_KEY_ENV: f" {KEY}\n"}) == KEY


def test_key_from_a_file_is_stripped(tmp_path: Path) -> None:
    assert load_api_key({API_KEY_FILE_ENV: _key_file(tmp_path, f"{KEY}\n")}) == KEY


def test_the_environment_wins_over_a_good_file(tmp_path: Path) -> None:
    environ = {API_KEY_ENV: KEY, API_KEY_FILE_ENV: _key_file(tmp_path, "from-file")}
    assert load_api_key(environ) == KEY


def test_required_and_present(tmp_path: Path) -> None:
    for flag in ("1", "true", "TRUE", " yes "):
        assert load_api_key({REQUIRE_API_KEY_ENV: flag, API_KEY_ENV: KEY}) == KEY
        environ = {REQUIRE_API_KEY_ENV: flag, API_KEY_FILE_ENV: _key_file(tmp_path, KEY)}
        assert load_api_key(environ) == KEY


# --- fail closed ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_a_blank_key_variable_is_an_error(value: str) -> None:
    _fails({API_KEY_ENV: value}, API_KEY_ENV, "empty")


@pytest.mark.parametrize("value", ["", "  "])
def test_a_blank_key_file_variable_is_an_error(value: str) -> None:
    _fails({API_KEY_FILE_ENV: value}, API_KEY_FILE_ENV, "empty")


@pytest.mark.parametrize("text", ["", " \n\t\n"])
def test_an_empty_or_whitespace_key_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = _key_file(tmp_path, text)
    _fails({API_KEY_FILE_ENV: path}, API_KEY_FILE_ENV, path, "empty")


def test_a_missing_key_file_is_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "absent")
    _fails({API_KEY_FILE_ENV: path}, API_KEY_FILE_ENV, path, "cannot be read")


def test_a_directory_as_key_file_is_an_error(tmp_path: Path) -> None:
    _fails({API_KEY_FILE_ENV: str(tmp_path)}, API_KEY_FILE_ENV, "cannot be read")


def test_a_key_file_that_is_not_text_is_an_error(tmp_path: Path) -> None:
    path = _key_file(tmp_path, b"\xff\xfe\x00binary")
    _fails({API_KEY_FILE_ENV: path}, API_KEY_FILE_ENV, "UTF-8")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root reads files whatever their mode, so permission denied cannot be produced here",
)
def test_an_unreadable_key_file_is_an_error(tmp_path: Path) -> None:
    path = _key_file(tmp_path, KEY)
    os.chmod(path, 0)
    try:
        error = _fails({API_KEY_FILE_ENV: path}, API_KEY_FILE_ENV, "cannot be read")
        assert "ermission" in str(error)
    finally:
        os.chmod(path, 0o600)


def test_a_bad_key_file_is_an_error_even_when_the_variable_wins(tmp_path: Path) -> None:
    _fails({API_KEY_ENV: KEY, API_KEY_FILE_ENV: str(tmp_path / "absent")}, API_KEY_FILE_ENV)
    _fails({API_KEY_ENV: KEY, API_KEY_FILE_ENV: _key_file(tmp_path, "\n")}, API_KEY_FILE_ENV)


def test_a_blank_variable_is_an_error_even_with_a_good_file(tmp_path: Path) -> None:
    _fails({API_KEY_ENV: " ", API_KEY_FILE_ENV: _key_file(tmp_path, KEY)}, API_KEY_ENV)


@pytest.mark.parametrize("flag", ["1", "true", "True", "yes"])
def test_required_without_a_key_is_an_error(flag: str) -> None:
    _fails({REQUIRE_API_KEY_ENV: flag}, REQUIRE_API_KEY_ENV, API_KEY_ENV, API_KEY_FILE_ENV)


def test_an_unknown_require_value_is_an_error() -> None:
    assert require_api_key({}) is False
    assert require_api_key({REQUIRE_API_KEY_ENV: "1"}) is True
    for value in ("ture", "2", "required"):
        _fails({REQUIRE_API_KEY_ENV: value, API_KEY_ENV: KEY}, REQUIRE_API_KEY_ENV, value)


# --- the log line and the per-request check ------------------------------------------------------


def test_describe_never_shows_the_key() -> None:
    assert describe(KEY) == "required"
    assert describe(None) == "not configured"


def test_authorized_compares_bearer_tokens() -> None:
    assert authorized(f"Bearer {KEY}", KEY) and authorized(f"bearer  {KEY} ", KEY)
    assert not authorized(None, KEY) and not authorized(KEY, KEY) and not authorized("", KEY)
    assert not authorized(f"Bearer {KEY[:-1]}", KEY) and not authorized(f"Basic {KEY}", KEY)
    assert not authorized(f"Bearer {KEY}x", KEY)


def test_an_empty_key_authorizes_nothing() -> None:
    assert not authorized("Bearer ", "") and not authorized("Bearer  ", "")
    assert not authorized(None, "")


def test_the_management_key_is_off_when_unset_and_its_own_when_set(tmp_path: Path) -> None:
    assert load_management_key({}, "api") is None  # off: load and unload answer 403
    assert load_management_key({"VISION_MANAGEMENT_KEY": " m "}, "api") == "m"
    key_file = tmp_path / "m"
    key_file.write_text("from-file\n")
    assert load_management_key({"VISION_MANAGEMENT_KEY_FILE": str(key_file)}, None) == "from-file"
    with pytest.raises(ApiKeyError, match="VISION_MANAGEMENT_KEY is set but empty"):
        load_management_key({"VISION_MANAGEMENT_KEY": " "}, None)
    with pytest.raises(ApiKeyError, match="VISION_MANAGEMENT_KEY_FILE names"):
        load_management_key({"VISION_MANAGEMENT_KEY_FILE": str(tmp_path / "none")}, None)
    with pytest.raises(ApiKeyError, match="a key of its own"):
        load_management_key({"VISION_MANAGEMENT_KEY": "same"}, "same")
