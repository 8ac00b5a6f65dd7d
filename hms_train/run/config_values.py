"""Plain values (TOML, JSON, `--set key=value`) read into checked dataclasses: each field declares what it
accepts once, in its annotation and metadata, and `build_checked` reads those declarations generically, so
a new field, or a new nested dataclass section such as `augment`, is checked without new code.

`Literal[...]` is a choice, `field(metadata=POSITIVE)` etc. a range, `{"registry": R}` a registered name,
`{"pattern": (regex, in words)}` a pattern; fields of a nested section named `p` or `*_p` are
probabilities. Errors are one ConfigError naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_type_hints

from hms_train.image.augment import AugmentConfig, AugmentError
from hms_train.model.settings import ModelConfig, ModelSettingsError


class ConfigError(ValueError):
    """A configuration value (or file) that cannot be used; the message names the key and what is allowed."""


@dataclass(frozen=True)
class Range:
    """Allowed numeric interval; `low_open` excludes the low end (e.g. lr > 0)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open else '['}{low}, {high}]"


POSITIVE = {"range": Range(0, None, low_open=True)}
NON_NEGATIVE = {"range": Range(0, None)}
PROBABILITY = {"range": Range(0, 1)}


def parse_value(text: str) -> Any:
    """TOML syntax for a single value (1e-3, true, [0, 1], "x"); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def did_you_mean(name: str, known, prefix: str = "") -> str:
    """' (did you mean 'lr'?)' for the known name closest to a mistyped one, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def build_checked(cls, values: Any, prefix: str):
    """An instance of dataclass `cls` from a dict, every field checked against its declaration."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a section (table), got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        hints = "".join(did_you_mean(k, fields, prefix) for k in unknown)
        raise ConfigError(f"unknown {cls.__name__} field(s) {[prefix + k for k in unknown]}{hints}; known: {sorted(fields)}")
    hints = get_type_hints(cls)
    checked = {}
    for name, value in values.items():
        key = prefix + name
        value = _typed(key, value, hints[name])
        # a nested section's probabilities, and a model setting annotated as one (models.Probability)
        probability = prefix and (name == "p" or name.endswith("_p") or fields[name].metadata.get("probability"))
        limits = fields[name].metadata.get("range") or (PROBABILITY["range"] if probability else None)
        for number in _numbers(value):
            if limits is not None and number not in limits:
                raise ConfigError(f"{key}: {number!r} is out of range; allowed {limits}")
        registry = fields[name].metadata.get("registry")
        if registry is not None and value is not None and value not in registry:
            raise ConfigError(f"{key}: {value!r} is not allowed; expected one of {list(registry)}")
        pattern, allowed = fields[name].metadata.get("pattern", (None, None))
        if pattern and not re.fullmatch(pattern, value):
            raise ConfigError(f"{key}: {value!r} is not allowed; expected {allowed}")
        checked[name] = value
    return cls(**checked)


def _typed(key: str, value: Any, hint: Any) -> Any:
    """`value` as the annotation `hint` wants it (int -> float, list -> tuple), or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:  # a plug-in model's argument without an annotation
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _typed(key, value, options[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; expected one of {list(args)}")
        return value
    if hint is AugmentConfig:
        if isinstance(value, AugmentConfig):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (table), got {value!r}")
        try:
            return AugmentConfig.from_values(value, key, build=build_checked)
        except AugmentError as err:
            raise ConfigError(str(err)) from None
    if hint is ModelConfig:
        if isinstance(value, ModelConfig):
            return value
        try:
            return ModelConfig.from_values(value, key, build=build_checked)
        except ModelSettingsError as err:
            raise ConfigError(str(err)) from None
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else build_checked(hint, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            return tuple(_typed(key, v, args[0]) for v in value)
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_typed(key, v, a) for v, a in zip(value, args))
        return [_typed(key, v, args[0]) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (bool, int, float, str) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, str(hint))


def _numbers(value: Any) -> list:
    """The numbers in a checked value (itself, or a list's items) for range checks."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
