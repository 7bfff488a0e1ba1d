"""The one error type bpexp raises for bad input.

Every message names the setting (config key) or file, the value given and what is allowed,
so that a user can fix the command line without reading code.
"""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """Bad input: raised before any training and before any tracking run is created."""


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or used; raised before training starts."""


def bad_value(key: str, value: object, allowed: str | Iterable[str]) -> ConfigError:
    """Build the standard message: ``<key>=<value> is not allowed; allowed: <allowed>``."""
    if not isinstance(allowed, str):
        allowed = ", ".join(sorted(str(a) for a in allowed))
    return ConfigError(f"{key}={value!r} is not allowed; allowed: {allowed}")
