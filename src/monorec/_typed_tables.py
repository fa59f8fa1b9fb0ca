"""Typed parsing of TOML tables into frozen dataclasses, collecting every problem instead of stopping
at the first (used by :mod:`monorec.config`)."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from monorec.errors import ConfigError

__all__ = ["Problems", "parse_dataclass", "read_toml"]


class Problems:
    """Collects problems while parsing so that one run reports all of them."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def _type_ok(value: Any, annotation: Any) -> tuple[bool, Any]:
    """Checks ``value`` against a (simple) dataclass annotation and returns the coerced value."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return value in args, value
    if origin in (types.UnionType, typing.Union):
        for arg in args:
            if arg is type(None):
                if value is None:
                    return True, None
                continue
            ok, coerced = _type_ok(value, arg)
            if ok:
                return True, coerced
        return False, value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False, value
        coerced_items = []
        for item in value:
            ok, c = _type_ok(item, args[0])
            if not ok:
                return False, value
            coerced_items.append(c)
        return True, tuple(coerced_items)
    if origin is dict:
        if not isinstance(value, dict):
            return False, value
        out = {}
        for k, v in value.items():
            ok, c = _type_ok(v, args[1])
            if not ok or not isinstance(k, str):
                return False, value
            out[k] = c
        return True, out
    if annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is str:
        return isinstance(value, str), value
    return True, value


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    return str(annotation).replace("typing.", "")


def parse_dataclass(cls: type, raw: Any, where: str, problems: Problems, **fixed: Any) -> Any:
    """Builds ``cls`` from a TOML table, recording unknown keys, missing keys and wrong types."""
    if not isinstance(raw, dict):
        problems.add(where, f"expected a table, got {type(raw).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = dict(fixed)
    for key in raw:
        if key not in known or key in fixed:
            allowed = ", ".join(sorted(k for k in known if k not in fixed))
            problems.add(f"{where}.{key}", f"unknown key (allowed: {allowed})")
    ok_all = True
    for name, f in known.items():
        if name in fixed:
            continue
        if name not in raw:
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if not has_default:
                problems.add(f"{where}.{name}", "is required")
                ok_all = False
            continue
        ok, value = _type_ok(raw[name], hints[name])
        if not ok:
            problems.add(f"{where}.{name}", f"expected {_describe(hints[name])}, got {raw[name]!r}")
            ok_all = False
            continue
        kwargs[name] = value
    return cls(**kwargs) if ok_all else None


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict.

    Raises:
        ConfigError: the file is missing or is not TOML.
    """
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
