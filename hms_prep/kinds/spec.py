"""`--array KIND:key=value,...`: the params of an array of any registered kind, from text.

Each value is parsed by the type its params dataclass declares for that field, so a new kind (a
plug-in's too) gets its command-line syntax with no code of its own:

    int, float, str        14, 0.5, text                     eeg_mel:window_s=14,n_mels=50
    bool                   true / false                      raw:midline=false
    X | None               none, or an X                     eeg_mel:hop_length=none
    tuple of numbers       the numbers joined by '-'         raw:band_pass=1-40   (a pair LOW-HIGH)
    Literal["a", "b"]      one of them

A field left out keeps its default. The kind's own checks (`__post_init__`) run as the params are made.
Every error is one line naming the option, the field and what it allows (ValueError).
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import MISSING, fields
from typing import Any, Literal

from hms_prep.kinds.base import KINDS

OPTION = "--array"
NONE = "none"
TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0")
# Items of a tuple are joined by '-'; a '-' after a digit or '.' separates, any other is a minus sign.
TUPLE_SEPARATOR = re.compile(r"(?<=[\d.])-")


def parse_array_spec(spec: str):
    """The params that `spec` (`KIND[:key=value,...]`) asks for, made and checked by the kind's params type."""
    kind_name, _, assignments = spec.partition(":")
    kind = KINDS.get(kind_name.strip())
    if kind is None:
        raise ValueError(f"{OPTION} {spec}: unknown array kind {kind_name.strip()!r}; known: {', '.join(sorted(KINDS))} "
                         "(a plug-in's kinds: --plugin MODULE)")
    params_type = kind.params_type
    declared = {f.name: f for f in fields(params_type) if f.init}
    types_of = typing.get_type_hints(params_type)
    values: dict[str, Any] = {}
    for assignment in filter(None, (a.strip() for a in assignments.split(","))):
        key, equals, text = (part.strip() for part in assignment.partition("="))
        if key not in declared:
            raise ValueError(f"{OPTION} {spec}: {kind.kind} has no field {key!r}; its fields: {', '.join(declared)}")
        if not equals:
            raise ValueError(f"{OPTION} {spec}: {key} has no value; {key}= takes {_allowed(types_of[key])}")
        if key in values:
            raise ValueError(f"{OPTION} {spec}: {key} is given twice")
        try:
            values[key] = parse_value(text, types_of[key])
        except ValueError:
            raise ValueError(f"{OPTION} {spec}: {key} must be {_allowed(types_of[key])}, got {text!r}") from None
    missing = [name for name, f in declared.items()
               if name not in values and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ValueError(f"{OPTION} {spec}: {kind.kind} needs {', '.join(f'{name}=...' for name in missing)} "
                         "(no default)")
    try:
        return params_type(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{OPTION} {spec}: {err}") from None


def parse_value(text: str, declared) -> Any:
    """`text` as a value of the declared type; ValueError when it is not one (or the type is not one of
    those the module's docstring lists)."""
    origin, args = typing.get_origin(declared), typing.get_args(declared)
    if origin in (typing.Union, types.UnionType):
        if text.lower() == NONE and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) != 1:
            raise ValueError(f"unsupported type {declared}")
        return parse_value(text, others[0])
    if origin is Literal:
        if text not in [str(a) for a in args]:
            raise ValueError(text)
        return next(a for a in args if str(a) == text)
    if origin is tuple:
        items = TUPLE_SEPARATOR.split(text)
        item_types = [args[0]] * len(items) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(items) != len(item_types):
            raise ValueError(text)
        return tuple(parse_value(item, t) for item, t in zip(items, item_types))
    if declared is bool:
        if text.lower() not in TRUE + FALSE:
            raise ValueError(text)
        return text.lower() in TRUE
    if declared in (int, float, str):
        return declared(text)
    raise ValueError(f"unsupported type {declared}")


def _allowed(declared) -> str:
    """What a field of this type accepts, in words."""
    origin, args = typing.get_origin(declared), typing.get_args(declared)
    if origin in (typing.Union, types.UnionType):
        return " or ".join([_allowed(a) for a in args if a is not type(None)] + [NONE] * (type(None) in args))
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        count = "numbers" if len(args) == 2 and args[1] is Ellipsis else {2: "two numbers"}.get(len(args), f"{len(args)} numbers")
        return f"{count} joined by '-' (e.g. 0.5-20)"
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(
        declared, f"a {getattr(declared, '__name__', declared)} (not settable from the command line)")
