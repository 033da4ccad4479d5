"""Typed configuration: dataclasses loaded from YAML, checked field by field.

Every component owns a small dataclass config (``GPTConfig``, ``OptimizerConfig``,
...). This module turns nested mappings (a YAML file plus dotted command-line
overrides) into those dataclasses, checking every key against the type hints
and every value against the config's own ``validate()``. Problems are collected
and reported together, each naming where the value came from (the YAML file or
the command line), the dotted key, the value and what was expected::

    configs/demo.yaml: train.micro_batch_size = 0: expected an integer >= 1

A config class may define ``validate(self) -> list[tuple[str, str]]`` returning
``(field_name, what_was_expected)`` pairs for values that are well typed but
impossible.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

from .errors import ConfigError  # noqa: F401  (re-exported: the loader raises it)

COMMAND_LINE = "command line"




@dataclasses.dataclass
class Sources:
    """Where each dotted key came from: the YAML file unless overridden."""

    default: str
    overridden: dict[str, str] = dataclasses.field(default_factory=dict)

    def of(self, key: str) -> str:
        # An override of a parent key (``model={...}``) covers its children, and a list its items.
        parts = re.sub(r"\[\d+\]", "", key).split(".")
        for i in range(len(parts), 0, -1):
            src = self.overridden.get(".".join(parts[:i]))
            if src is not None:
                return src
        return self.default


class Problems:
    """Collects problems as ``source: key = value: expected ...`` lines."""

    def __init__(self, sources: Sources):
        self.sources = sources
        self.items: list[str] = []

    def add(self, key: str, value: Any, expected: str, what: str = "") -> None:
        what = f"{what}; " if what else ""
        self.items.append(f"{self.sources.of(key)}: {key} = {_show(value)}: {what}expected {expected}")

    def add_raw(self, key: str, message: str) -> None:
        self.items.append(f"{self.sources.of(key)}: {key}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


_MISSING = object()


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return "any value"
    if tp is bool:
        return "a boolean (true/false)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a finite number"
    if tp is str:
        return "a string"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping (section {tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, problems: Problems) -> Any:
    """Return ``value`` converted to ``tp``, or _MISSING after recording a problem."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        sections = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, Mapping) and len(sections) == 1:
            return _convert(value, sections[0], key, problems)  # name the bad key inside the section
        for arg in args:
            if arg is type(None):
                continue
            trial = Problems(problems.sources)
            out = _convert(value, arg, key, trial)
            if out is not _MISSING and not trial.items:
                return out
        problems.add(key, value, _describe(tp))
        return _MISSING
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(a is value for a in args)):
            return value
        problems.add(key, value, _describe(tp))
        return _MISSING
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        out = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                out = float(value)
            except OverflowError:  # an integer beyond float's range
                out = math.inf
        elif isinstance(value, str):  # PyYAML reads "3e-4" as a string
            try:
                out = float(value)
            except ValueError:
                pass
        if out is not None:
            if math.isfinite(out):
                return out
            # inf and nan pass every `x > 0` / `x < 0` check downstream: no float setting takes them.
            problems.add(key, value, "a finite number", what="not finite")
            return _MISSING
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            item_tp = args[0] if args else Any
            out = [_convert(v, item_tp, f"{key}[{i}]", problems) for i, v in enumerate(value)]
            if any(o is _MISSING for o in out):
                return _MISSING
            return tuple(out) if origin is tuple else out
    elif origin is dict:
        if isinstance(value, Mapping):
            val_tp = args[1] if len(args) == 2 else Any
            out = {k: _convert(v, val_tp, f"{key}.{k}", problems) for k, v in value.items()}
            if any(o is _MISSING for o in out.values()):
                return _MISSING
            return out
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, Mapping):
            return _build(tp, value, key, problems)
    else:  # pragma: no cover - a config class used a type this loader does not know
        raise TypeError(f"config field {key!r} has unsupported type {tp!r}")
    problems.add(key, value, _describe(tp))
    return _MISSING


def _build(cls: type, data: Mapping[str, Any], prefix: str, problems: Problems) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    ok = True
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.add(dotted, value, f"one of the known keys: {', '.join(fields)}", what=f"unknown key{hint}")
            ok = False
            continue
        out = _convert(value, hints[key], dotted, problems)
        if out is _MISSING:
            ok = False
        else:
            kwargs[key] = out
    for name, f in fields.items():
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            dotted = f"{prefix}.{name}" if prefix else name
            problems.add_raw(dotted, f"missing required key: expected {_describe(hints[name])}")
            ok = False
    if not ok:
        return _MISSING
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        for name, expected in validate():
            dotted = f"{prefix}.{name}" if prefix else name
            problems.add(dotted, _get_dotted(obj, name), expected)
    return obj


def _get_dotted(obj: Any, name: str) -> Any:
    for part in name.split("."):
        obj = obj.get(part) if isinstance(obj, Mapping) else getattr(obj, part, None)
    return obj


def convert(value: Any, tp: Any, key: str = "") -> tuple[Any, str | None]:
    """``value`` converted to type ``tp`` (as a config field of that type), and None; or (None, what was expected)."""
    trial = Problems(Sources(""))
    out = _convert(value, tp, key, trial)
    if out is _MISSING or trial.items:
        return None, _describe(tp)
    return out, None


def from_dict(cls: type, data: Mapping[str, Any], sources: Sources | str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; raise ConfigError listing every problem."""
    if isinstance(sources, str):
        sources = Sources(sources)
    problems = Problems(sources)
    if not isinstance(data, Mapping):
        problems.add(prefix or "<top level>", data, _describe(cls))
        problems.raise_if_any()
    obj = _build(cls, data, prefix, problems)
    problems.raise_if_any()
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain data (for YAML/JSON), tuples as lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


class DuplicateKeyError(ValueError):
    """A YAML mapping that names one key twice (PyYAML would keep the last one silently)."""


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_duplicate_keys(loader: Any, node: Any, path: str, seen_nodes: set[int]) -> None:
    """Walk the composed YAML tree: a mapping that repeats a key raises DuplicateKeyError naming it and both lines."""
    import yaml

    if id(node) in seen_nodes:  # an alias of a node already walked (or a recursive structure)
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # `<<: *base`: the merged keys are meant to be overridden
                _check_duplicate_keys(loader, value_node, path, seen_nodes)
                continue
            key: Any = key_node.value
            if isinstance(key_node, yaml.ScalarNode):
                try:
                    key = loader.construct_object(key_node)  # 1 and 0x1, "a" and a: the same key
                except yaml.YAMLError:
                    pass
            dotted = f"{path}.{key}" if path else str(key)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    raise DuplicateKeyError(f"duplicate key {dotted!r} at line {line} (first at line {first[key]}): "
                                            "expected each key once in a mapping (YAML would keep only the last)")
                first[key] = line
            except TypeError:  # an unhashable key: the constructor reports it
                pass
            _check_duplicate_keys(loader, value_node, dotted, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(loader, item, f"{path}[{i}]", seen_nodes)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing a mapping with a duplicate key (DuplicateKeyError naming the key and
    both lines). Syntax errors raise yaml.YAMLError as safe_load does."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(loader, node, "", set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path) -> Any:
    """The YAML document in ``path`` (any type, None for an empty file); ConfigError naming the file when it
    is missing, unreadable, not UTF-8 text, not valid YAML or repeats a key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise ConfigError([f"{path}: config file {what}"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not a YAML text file (not UTF-8 at byte {e.start}); expected a run config YAML"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the config file ({e.strerror or e})"]) from None
    try:
        return yaml_load(text)
    except DuplicateKeyError as e:
        raise ConfigError([f"{path}: {e}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    data = read_yaml_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping at the top level, got {type(data).__name__}"])
    return data


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], sources: Sources) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to nested ``data`` in place."""
    import yaml

    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError([f"{COMMAND_LINE}: override {item!r}: expected KEY=VALUE, e.g. optimizer.lr=3e-4"])
        try:
            value = yaml_load(raw) if raw.strip() else None
        except DuplicateKeyError as e:
            raise ConfigError([f"{COMMAND_LINE}: override {item!r}: {e}"]) from None
        except yaml.YAMLError as e:
            raise ConfigError([f"{COMMAND_LINE}: override {item!r}: value is not valid YAML: {e}"]) from None
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError([f"{COMMAND_LINE}: override {item!r}: {where} is {child!r}, not a section"])
            node = child
        node[parts[-1]] = value
        sources.overridden[key] = f"{COMMAND_LINE} ({item})"
    return data
