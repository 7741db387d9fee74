"""Dataclasses that write and read themselves as JSON (field name = JSON key).

:class:`Record` gives ``to_json`` and ``from_json``: nested dataclasses become objects;
on reading, every field without a default must be present, else a :class:`SummaryError`
names the file, the field and the fix. Used by :mod:`lipbench.summaries`. Light module.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from functools import cache
from types import UnionType
from typing import Any, TypeVar

__all__ = ["SummaryError", "Record", "without_measurements"]

S = TypeVar("S")


class SummaryError(ValueError):
    """A summary file does not follow the schema (the message names the file and field)."""


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode_value(kind: Any, value: Any, where: str) -> Any:
    """``value`` read from JSON as ``kind``: nested dataclasses are decoded, the rest kept."""
    origin = typing.get_origin(kind)
    if origin in (UnionType, typing.Union):
        if value is None:
            return None
        options = [option for option in typing.get_args(kind) if option is not type(None)]
        return _decode_value(options[0], value, where) if len(options) == 1 else value
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise SummaryError(f"{where}: expected an object, got {value!r}")
        return _decode(kind, value, where)
    if origin in (list, tuple) and value is not None:
        (item,) = typing.get_args(kind)[:1] or (Any,)
        decoded = [_decode_value(item, element, f"{where}[{i}]") for i, element in enumerate(value)]
        return tuple(decoded) if origin is tuple else decoded
    if origin is dict and value is not None:
        item = typing.get_args(kind)[1]
        return {k: _decode_value(item, v, f"{where}.{k}") for k, v in value.items()}
    return value


def _decode(cls: type[S], data: Mapping[str, Any], where: str) -> S:
    values = {}
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        if spec.name in data:
            values[spec.name] = _decode_value(_hints(cls)[spec.name], data[spec.name], f"{where}: {spec.name}")
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise SummaryError(
                f"{where}: missing field '{spec.name}' of the {cls.__name__} schema (written by an older lipbench?); "
                "rerun the stage that writes it (dvc repro)"
            )
    return cls(**values)


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {spec.name: _encode(getattr(value, spec.name)) for spec in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


class Record:
    """Mixin: ``to_json`` and ``from_json`` by field name."""

    def to_json(self) -> dict[str, Any]:
        return _encode(self)

    @classmethod
    def from_json(cls: type[S], data: Mapping[str, Any], where: str = "summary") -> S:
        if not isinstance(data, Mapping):
            raise SummaryError(f"{where}: expected a JSON object, got {type(data).__name__}")
        return _decode(cls, data, where)


#: What differs between two runs on the same inputs, and its empty value.
_MEASUREMENTS: dict[str, Any] = {"seconds": 0.0, "environment": {}, "attack_seconds": {}}

R = TypeVar("R", bound="Record")


def without_measurements(record: R) -> R:
    """``record`` as a stage's DVC output holds it: without what differs between two runs on
    the same inputs (wall seconds, per-attack seconds, the environment: machine, commit), so
    that the output's bytes follow its inputs. The git-tracked stage records keep them."""
    names = {field.name for field in dataclasses.fields(record)}
    return dataclasses.replace(record, **{name: type(empty)(empty) for name, empty in _MEASUREMENTS.items() if name in names})
