"""Validation shared by the configuration dataclasses."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["check_number"]


def check_number(owner: str, name: str, value, ok: Callable[[float], bool], expected: str) -> None:
    """Raise ``ValueError("{owner}.{name} must be {expected}, got {value!r}")`` unless ``value`` is an int or
    float (not a bool) for which ``ok(value)`` holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ValueError(f"{owner}.{name} must be {expected}, got {value!r}")
