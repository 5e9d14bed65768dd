"""The HTTP API key: where it comes from, when its absence is an error, and the check per request.

Fail closed. A key that was asked for but cannot be used stops the Ingress at start-up instead of
leaving the API open:

- `VISION_API_KEY` set but blank;
- `VISION_API_KEY_FILE` set but blank, unreadable (missing, a directory, no permission, not
  UTF-8) or holding only whitespace; the file is checked even when `VISION_API_KEY` wins;
- `VISION_REQUIRE_API_KEY` true ("1", "true", "yes") and neither variable set.

With none of the three set, auth is off (a laptop's `serve run`). Error messages name the variable
and the fix, never the key.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

API_KEY_ENV = "VISION_API_KEY"
# A mounted Secret. Ray logs runtime_env values, so never put the key itself there.
API_KEY_FILE_ENV = "VISION_API_KEY_FILE"
REQUIRE_API_KEY_ENV = "VISION_REQUIRE_API_KEY"

_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"", "0", "false", "no"})


class ApiKeyError(ValueError):
    """The API key settings cannot be used; the Ingress must not start with them."""


def require_api_key(environ: Mapping[str, str]) -> bool:
    """Whether VISION_REQUIRE_API_KEY asks for a key; a value that is neither yes nor no raises."""
    value = environ.get(REQUIRE_API_KEY_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ApiKeyError(
        f"{REQUIRE_API_KEY_ENV}={environ[REQUIRE_API_KEY_ENV]!r} is not understood: "
        f"use 1/true to require an API key, or 0/false (or unset it) to allow running without one"
    )


def _read_key_file(path: str, variable: str = API_KEY_FILE_ENV) -> str:
    if not path.strip():
        raise ApiKeyError(f"{variable} is set but empty: point it at the key file, or unset it")
    try:
        with open(path, encoding="utf-8") as f:
            key = f.read().strip()
    except UnicodeDecodeError:
        raise ApiKeyError(
            f"{variable} names {path!r}, which is not UTF-8 text: write the key as text"
        ) from None
    except OSError as exc:
        raise ApiKeyError(
            f"{variable} names {path!r}, which cannot be read ({exc.strerror or exc}): "
            f"mount the key file there (readable by the Ingress's user), or unset the variable"
        ) from None
    if not key:
        raise ApiKeyError(
            f"{variable} names {path!r}, which is empty or only whitespace: "
            f"put the key in it, or unset the variable"
        )
    return key


def load_api_key(environ: Mapping[str, str]) -> str | None:
    """The API key from VISION_API_KEY, else from the file VISION_API_KEY_FILE names, else None.

    Raises:
        ApiKeyError: a variable is set but unusable, or VISION_REQUIRE_API_KEY asks for a key and
            none is configured (rules in the module docstring).
    """
    required = require_api_key(environ)
    from_file = _read_key_file(environ[API_KEY_FILE_ENV]) if API_KEY_FILE_ENV in environ else None
    if API_KEY_ENV in environ:
        key = environ[API_KEY_ENV].strip()
        if not key:
            raise ApiKeyError(
                f"{API_KEY_ENV} is set but empty: put the key in it, or unset it "
                f"(and {API_KEY_FILE_ENV}) to run without an API key"
            )
        return key
    if from_file is not None:
        return from_file
    if required:
        raise ApiKeyError(
            f"{REQUIRE_API_KEY_ENV} is set but there is no API key: set {API_KEY_ENV} or "
            f"{API_KEY_FILE_ENV} (on Kubernetes: the Secret vision-api-key, kuberay/README.md)"
        )
    return None


MANAGEMENT_KEY_ENV = "VISION_MANAGEMENT_KEY"
MANAGEMENT_KEY_FILE_ENV = "VISION_MANAGEMENT_KEY_FILE"


def load_management_key(environ: Mapping[str, str], api_key: str | None) -> str | None:
    """The key that loading and unloading models need, from VISION_MANAGEMENT_KEY, else from
    the file VISION_MANAGEMENT_KEY_FILE names; None: management is off (those calls are refused,
    403). Set but blank or unreadable, or the API key itself, raises `ApiKeyError`.
    """
    key: str | None = None
    if MANAGEMENT_KEY_ENV in environ:
        key = environ[MANAGEMENT_KEY_ENV].strip()
        if not key:
            raise ApiKeyError(
                f"{MANAGEMENT_KEY_ENV} is set but empty: put the key in it, or unset it "
                "(model management is then off)"
            )
    elif MANAGEMENT_KEY_FILE_ENV in environ:
        key = _read_key_file(environ[MANAGEMENT_KEY_FILE_ENV], MANAGEMENT_KEY_FILE_ENV)
    if key is not None and key == api_key:
        raise ApiKeyError(
            f"{MANAGEMENT_KEY_ENV} is the API key: give model management a key of its own"
        )
    return key


def describe(api_key: str | None) -> str:
    """The start-up log line's word for the key, never the key: 'required' or 'not configured'."""
    return "required" if api_key else "not configured"


def authorized(header: str | None, api_key: str) -> bool:
    """Constant-time check of `Authorization: Bearer <key>`; an empty key authorizes nothing."""
    if not api_key:
        return False
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), api_key.encode()
    )
