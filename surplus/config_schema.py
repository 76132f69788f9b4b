"""Typed YAML -> frozen dataclasses, with the file line of every key.

The generic half of :mod:`surplus.config`: a dataclass field's annotation gives
the type, :func:`setting` adds a range or choices, and :func:`build` checks a
parsed document against it, raising :class:`ConfigError` with ``file:line``
and the key path. Booleans and numbers follow YAML 1.2: only true/false are
booleans, so ``mode: off`` stays the word "off", and there are no base-60
numbers, so ``departure: 7:00`` stays the text "7:00".
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import yaml
from yaml.constructor import SafeConstructor

from .checks import choice_problem, is_number, range_problem
from .options import did_you_mean


class ConfigError(ValueError):
    """A config problem: one line naming where (file:line or variable) and the key."""

    def __init__(self, message: str, *, key: str = "", line: int | None = None, source: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.line = line
        self.source = source


@dataclass(frozen=True, slots=True)
class Spec:
    """Limits of one setting; ``above``/``below`` replace "the maximum X" in messages."""

    lo: float | None = None
    hi: float | None = None
    gt: float | None = None
    unit: str = ""
    above: str | None = None
    below: str | None = None
    choices: tuple[Any, ...] | None = None


def setting(default: Any, **spec: Any) -> Any:
    """A dataclass field with a default and a :class:`Spec` (``lo``, ``hi``, ``choices``, ...)."""
    return field(default=default, metadata={"spec": Spec(**spec)})


def empty_mapping() -> Mapping[str, Any]:
    """A frozen empty mapping (a dataclass default factory)."""
    return MappingProxyType({})


# --- YAML nodes with lines ------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans and numbers: ``mode: off`` stays "off", ``departure: 7:00`` stays "7:00".

    YAML 1.1 reads ``off`` as False and an unquoted ``7:00`` or ``22:00`` as the
    base-60 integers 420 and 1320, which a time option cannot tell from a typo
    such as ``700``; YAML 1.2 dropped both, and so does this loader.
    """


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


def _no_sexagesimal(tag: str, regexp: re.Pattern[str]) -> tuple[str, re.Pattern[str]]:
    """The resolver without its base-60 forms: a colon is in no other YAML 1.1 int or float."""
    if tag not in _NUMBER_TAGS:
        return tag, regexp
    return tag, re.compile(r"(?!.*:)" + regexp.pattern, regexp.flags)


_Loader.yaml_implicit_resolvers = {
    first: [_no_sexagesimal(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class _Constructor(SafeConstructor):
    """YAML 1.2 integers: a leading zero is decimal (``0700`` is 700, not the YAML 1.1 octal 448)."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node)).replace("_", "")
        if re.fullmatch(r"[-+]?0[0-9]+", text):
            return int(text, 10)
        return int(super().construct_yaml_int(node))


_Constructor.yaml_constructors = {
    **SafeConstructor.yaml_constructors,
    "tag:yaml.org,2002:int": _Constructor.construct_yaml_int,
}


@dataclass(slots=True)
class Raw:
    """A parsed value with where it came from."""

    value: Any  # scalar, dict[str, Raw] or list[Raw]
    line: int | None = None
    variable: str | None = None


class Where:
    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[str, int] = {}
        #: Key paths set from the environment -> the variable's name.
        self.from_env: dict[str, str] = {}

    def error(self, raw: Raw | None, key: str, message: str) -> ConfigError:
        if raw is not None and raw.variable is not None:
            return ConfigError(f"environment {raw.variable}: {key}: {message}", key=key, source=raw.variable)
        line = raw.line if raw is not None else None
        at = f"{self.source}:{line}" if line is not None else self.source
        named = f"{key}: " if key else ""  # the top level has no key
        return ConfigError(f"{at}: {named}{message}", key=key, line=line, source=self.source)


def _from_node(node: yaml.Node, where: Where, path: str, line: int) -> Raw:
    constructor = _Constructor()
    if isinstance(node, yaml.MappingNode):
        constructor.flatten_mapping(node)  # supports "<<: *anchor"
        out: dict[str, Raw] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            key = constructor.construct_object(key_node)
            sub = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                raise where.error(Raw(None, key_line), sub, f"keys must be text, got {key!r}")
            if key in out:
                raise where.error(Raw(None, key_line), sub, "duplicate key")
            out[key] = _from_node(value_node, where, sub, key_line)
        raw = Raw(out, line)
    elif isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            items.append(_from_node(item, where, f"{path}[{i}]", item.start_mark.line + 1))
        raw = Raw(items, line)
    else:
        raw = Raw(constructor.construct_object(node), line)
    if path:
        where.lines[path] = line
    return raw


def from_python(value: Any) -> Raw:
    if isinstance(value, Mapping):
        return Raw({k: from_python(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return Raw([from_python(v) for v in value])
    return Raw(value)


def _plain(raw: Raw) -> Any:
    """Free-form plugin options: frozen mappings and tuples."""
    if isinstance(raw.value, dict):
        return MappingProxyType({k: _plain(v) for k, v in raw.value.items()})
    if isinstance(raw.value, list):
        return tuple(_plain(v) for v in raw.value)
    return raw.value


# --- building dataclasses -------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _check_spec(value: Any, spec: Spec, raw: Raw, key: str, where: Where) -> None:
    if spec.choices is not None and (problem := choice_problem(value, spec.choices)) is not None:
        raise where.error(raw, key, problem)
    problem = range_problem(
        value, lo=spec.lo, hi=spec.hi, gt=spec.gt, unit=spec.unit, below=spec.below, above=spec.above
    )
    if problem is not None:
        raise where.error(raw, key, problem)


def convert(tp: Any, spec: Spec, raw: Raw, key: str, where: Where) -> Any:
    """Check ``raw`` against the annotation ``tp`` and the field's spec."""
    value = raw.value
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType):  # X | None
        if value is None:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(typing.cast(type, tp), raw, key, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise where.error(raw, key, f"expected a list, got {_type_name(value)}")
        return tuple(convert(args[0], spec, item, f"{key}[{i}]", where) for i, item in enumerate(value))
    if origin is Mapping:
        if value is None:
            return MappingProxyType({})
        if not isinstance(value, dict):
            raise where.error(raw, key, f"expected a mapping, got {_type_name(value)}")
        return MappingProxyType(
            {k: convert(args[1], Spec(), v, f"{key}.{k}", where) for k, v in value.items()}
        )
    if tp is Any:
        return _plain(raw)
    if origin is Literal:
        spec = dataclasses.replace(spec, choices=args)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = tuple(k.value for k in tp)
        if value not in choices:
            raise where.error(raw, key, f"{value!r} is not one of {', '.join(choices)}")
        return tp(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise where.error(raw, key, f"expected true or false, got {_type_name(value)}")
    elif tp is int:
        if not (is_number(value) and isinstance(value, int)):
            raise where.error(raw, key, f"expected a whole number, got {_type_name(value)}")
    elif tp is float:
        if not is_number(value):  # .nan and .inf are no settings
            raise where.error(raw, key, f"expected a number, got {_type_name(value)}")
        value = float(value)
    elif tp is str:
        if isinstance(value, str) and not value.strip():
            fix = "unset the variable" if raw.variable is not None else "use null for none"
            raise where.error(raw, key, f"must not be empty ({fix})")
        if not isinstance(value, str):
            raise where.error(raw, key, f"expected text, got {_type_name(value)} (quote it if it is text)")
    _check_spec(value, spec, raw, key, where)
    return value


def build(cls: type, raw: Raw, path: str, where: Where) -> Any:
    if raw.value is None:
        raw = Raw({}, raw.line, raw.variable)
    if not isinstance(raw.value, dict):
        wanted = "a mapping" if path else "a mapping of sections (bus:, chargers:, ...)"
        raise where.error(raw, path, f"expected {wanted}, got {_type_name(raw.value)}")
    fields = [f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")]
    names = [f.name for f in fields]
    for key, sub in raw.value.items():
        if key not in names:
            full = f"{path}.{key}" if path else key
            raise where.error(sub, full, f"unknown key{did_you_mean(key, names)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields:
        key = f"{path}.{f.name}" if path else f.name
        if f.name in raw.value:
            spec = f.metadata.get("spec", Spec())
            kwargs[f.name] = convert(hints[f.name], spec, raw.value[f.name], key, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise where.error(raw, key, "missing (required)")
    return cls(**kwargs)


def _decode_error_line(exc: UnicodeDecodeError) -> int:
    """The 1-based line of the byte a decode error points at."""
    return exc.object[: exc.start].count(b"\n") + 1


def parse_file(path: str) -> tuple[Raw, Where]:
    """Read and parse ``path``; syntax errors carry their line."""
    where = Where(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}", source=path) from None
    except UnicodeDecodeError as exc:
        bad = _decode_error_line(exc)
        raise ConfigError(f"{path}:{bad}: not UTF-8 text (byte {exc.start})", line=bad, source=path) from None
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f"{path}:{line}" if line else path
        raise ConfigError(f"{at}: not valid YAML: {problem}", line=line, source=path) from None
    raw = Raw({}, 1) if node is None else _from_node(node, where, "", node.start_mark.line + 1)
    return raw, where
