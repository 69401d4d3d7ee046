"""Strict JSON round trip for frozen dataclasses.

Documents (fingerprint, plan, train config) are plain dataclasses; this module turns them into
JSON-able dicts and back, checking every key and type on the way in so that a hand-edited file
fails with a message naming the exact key (e.g. `configurations.2d.patch_size[1]`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from autoseg.atomic import atomic_write
from autoseg.errors import PlanError

T = TypeVar("T")

# Field metadata for an optional section added after documents were in use: left out while it holds
# its default, so older documents keep their exact content and hash (a plan without a task, say).
OMIT_DEFAULT = {"omit_default": True}


def to_dict(obj: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists, recursively (OMIT_DEFAULT fields only when set)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not _omitted(obj, f)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def _omitted(obj: Any, f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("omit_default")) and getattr(obj, f.name) == f.default


def from_dict(cls: type[T], data: Any, where: str = "", error: type[Exception] = PlanError) -> T:
    """Build `cls` from `data`, rejecting unknown, missing or mistyped keys with the key's path."""
    return _convert(cls, data, where or cls.__name__, error)


def _fail(error: type[Exception], where: str, expected: str, found: Any) -> None:
    raise error(f"{where}: expected {expected}, found {found!r}")


def _convert(tp: Any, value: Any, where: str, error: type[Exception]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, where, error)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where, error)
    if origin is typing.Literal:
        if value not in args:
            _fail(error, where, f"one of {list(args)}", value)
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            _fail(error, where, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]", error) for i, v in enumerate(value))
        if len(args) != len(value):
            _fail(error, where, f"a list of {len(args)} items", value)
        return tuple(_convert(a, v, f"{where}[{i}]", error) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            _fail(error, where, "an object", value)
        return {_convert(args[0], k, f"{where}.{k}", error): _convert(args[1], v, f"{where}.{k}", error) for k, v in value.items()}
    return _convert_scalar(tp, value, where, error)


def _convert_scalar(tp: Any, value: Any, where: str, error: type[Exception]) -> Any:
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(error, where, "a number", value)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(error, where, "a whole number", value)
        return value
    if tp is bool and not isinstance(value, bool):
        _fail(error, where, "true or false", value)
    if tp is str and not isinstance(value, str):
        _fail(error, where, "a string", value)
    return value


def _convert_dataclass(cls: Any, value: Any, where: str, error: type[Exception]) -> Any:
    if not isinstance(value, dict):
        _fail(error, where, "an object", value)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise error(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        if name not in value:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise error(f"{where}: missing key '{name}'")
            continue
        kwargs[name] = _convert(hints[name], value[name], f"{where}.{name}", error)
    return cls(**kwargs)


def json_safe(value: Any) -> Any:
    """NaN -> None, recursively, so the document is strict JSON (NaN is not JSON)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(obj: Any) -> str:
    return json.dumps(to_dict(obj), indent=2) + "\n"


def content_hash(obj: Any) -> str:
    """Short stable hash of a document's content (key order independent)."""
    text = json.dumps(to_dict(obj), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON (a document or plain data) via a temp file and rename, so readers never see half a file."""
    path = Path(path)
    text = dumps(data) if dataclasses.is_dataclass(data) else json.dumps(data, indent=2) + "\n"
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return path


def read_json(path: str | Path, error: type[Exception] = PlanError) -> Any:
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def load_document(cls: type[T], path: str | Path, error: type[Exception] = PlanError) -> T:
    """Read and strictly validate a JSON document; errors name the file and the key."""
    data = read_json(path, error)
    try:
        return from_dict(cls, data, where=Path(path).name, error=error)
    except TypeError as exc:  # a dataclass __post_init__ rejecting values
        raise error(f"{path}: {exc}") from None
