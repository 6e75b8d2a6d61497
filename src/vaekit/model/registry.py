"""Looking a part up by name: one place for the error every registry of parts gives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from vaekit.errors import ConfigError

T = TypeVar("T")


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """The entry of ``table`` registered under ``name``; a ConfigError listing the valid names otherwise."""
    if name not in table:
        raise ConfigError(f"unknown {what} {name!r}; valid {what}s: {', '.join(table)}")
    return table[name]
