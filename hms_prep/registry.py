"""One small typed registry for every open axis of both packages: array kinds, sources and codecs
(hms_prep), model kinds, augmentations and row tables (hms_train). Modelled on mosaicml/streaming's
`registry_utils`: a name maps to a factory (a builder, a class, a function or an object) and, where it
has any, a settings dataclass (its fields and defaults are what a user may set); a second registration
of a name is refused in one line; each registry also reads the entry points of its own group
(`hms_cache.<registry>`, e.g. `hms_cache.models`), loaded the first time it is looked into; `describe()`
lists it (`hms-prep list`, `hms-train list`).

An entry point's object is registered under the entry point's name unless importing it already did (a
decorator in the module, e.g. `@register_model`, which also records what the registry needs beside).
The group `hms_cache.plugins` (hms_prep/plugins.py) still names whole modules that register several things.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")
GROUP_PREFIX = "hms_cache."


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered name: its factory, its settings dataclass (None: it has no settings) and what its
    registry records beside (`details`, e.g. a model's inputs, an augmentation's order)."""

    name: str
    factory: T
    settings: type | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    origin: str = ""  # the module that registered it (named when a clash is refused)

    def defaults(self) -> dict[str, Any]:
        """The settings' fields and their defaults (a field without one: `REQUIRED`)."""
        if self.settings is None:
            return {}
        return {f.name: _default(f) for f in dataclasses.fields(self.settings)}


REQUIRED = "<required>"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


class RegistryError(ValueError):
    """A registration refused, or a name that is not registered; the message is one line."""


class Registry(Generic[T]):
    """name -> factory, read like a dict (`registry[name]` is the factory, `name in registry`, iteration
    in registration order); `entry(name)` gives the whole `Entry`."""

    def __init__(self, what: str, group: str, settings: bool = True):
        self.what = what  # in messages: "model kind", "codec", ...
        self.group = GROUP_PREFIX + group  # the entry points group
        self.has_settings = settings
        self._entries: dict[str, Entry[T]] = {}
        self._entry_points_loaded = False

    def register(self, name: str, factory: T, settings: type | None = None, **details: Any) -> T:
        """Register `factory` as `name`; RegistryError when the name is taken (by whom) or `settings` is
        not a dataclass. Returns the factory, so that a decorator can return what it was given."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.what} name {name!r}: expected a non-empty string")
        origin = getattr(factory, "__module__", None) or _caller_module()
        if name in self._entries:
            raise RegistryError(f"{self.what} {name!r} is registered twice (by {self._entries[name].origin} and "
                                f"{origin}); give one of them another name")
        if settings is not None and not dataclasses.is_dataclass(settings):
            raise RegistryError(f"{self.what} {name!r}: its settings {settings!r} are not a dataclass")
        self._entries[name] = Entry(name, factory, settings, dict(details), origin)
        return factory

    def entry(self, name: str) -> Entry[T]:
        """The entry of `name`; RegistryError naming the registered ones otherwise."""
        self._load_entry_points()
        if name not in self._entries:
            raise RegistryError(f"unknown {self.what} {name!r}; registered: {sorted(self._entries)}")
        return self._entries[name]

    def entries(self, load: bool = True) -> list[Entry[T]]:
        """Every entry; `load=False`: those registered so far, without loading the entry points (a
        decorator's own checks, which may run while a plug-in's import is loading them)."""
        if load:
            self._load_entry_points()
        return list(self._entries.values())

    def __getitem__(self, name: str) -> T:
        return self.entry(name).factory

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load_entry_points()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._load_entry_points()
        return len(self._entries)

    def get(self, name: str, default: T | None = None) -> T | None:
        return self[name] if name in self else default

    def keys(self) -> list[str]:
        return list(self)

    def values(self) -> list[T]:
        return [e.factory for e in self.entries()]

    def items(self) -> list[tuple[str, T]]:
        return [(e.name, e.factory) for e in self.entries()]

    def unregister(self, name: str) -> None:
        """Drop `name` (tests that register a throwaway entry clean up with it)."""
        self._entries.pop(name, None)

    def describe(self) -> list[str]:
        """One line per entry: its name, what its registry records beside, its settings with defaults."""
        lines = []
        for entry in self.entries():
            details = "  ".join(f"{key}={_shown(value)}" for key, value in entry.details.items()
                                if not callable(value))
            settings = ", ".join(f"{key}={_shown(value)}" for key, value in entry.defaults().items())
            text = "  ".join(part for part in (details, settings if self.has_settings else "") if part)
            lines.append(f"  {entry.name:<22} {text or ('(no settings)' if self.has_settings else '')}".rstrip())
        return lines

    def _load_entry_points(self) -> None:
        """Once per process: import each entry point of the group; one not registered by its import is
        registered as its object. A broken one is one line naming it."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for point in entry_points(group=self.group):
            try:
                loaded = point.load()
            except Exception as err:
                raise RegistryError(f"{self.what} {point.name} = {point.value} (entry point of {self.group}): "
                                    f"cannot load it ({type(err).__name__}: {err})") from None
            if point.name not in self._entries:
                self.register(point.name, loaded)


def _shown(value: Any) -> str:
    return value if value is REQUIRED else repr(value)


def _caller_module() -> str:
    frame = inspect.currentframe()
    for _ in range(3):
        frame = frame.f_back if frame is not None else None
    return frame.f_globals.get("__name__", "?") if frame is not None else "?"


def settings_from_signature(build: Callable, leave_out: tuple[str, ...] = ()) -> type:
    """A settings dataclass made from a builder's keyword arguments (timm's `create_model(**kwargs)`
    style): one field per parameter not in `leave_out`, typed by its annotation, with its default. An
    `Annotated[T, "mark", ...]` annotation gives type T and the marks as the field's metadata (e.g.
    "probability", which the trainer's config check reads as the range [0, 1])."""
    try:
        hints = typing.get_type_hints(build, include_extras=True)
    except Exception:  # an annotation that does not resolve (a local name): the value goes unchecked
        hints = {}
    specs = []
    parameters = [p for p in inspect.signature(build).parameters.values()
                  if p.name not in leave_out and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    # a dataclass takes fields without a default first: keep the builder's order otherwise
    for p in sorted(parameters, key=lambda p: p.default is not inspect.Parameter.empty):
        hint, marks = hints.get(p.name, Any), ()
        if typing.get_origin(hint) is typing.Annotated:
            hint, *marks = typing.get_args(hint)
        metadata = {mark: True for mark in marks if isinstance(mark, str)}
        default = {} if p.default is inspect.Parameter.empty else {"default": p.default}
        specs.append((p.name, hint, field(metadata=metadata, **default)))
    return dataclasses.make_dataclass(f"{getattr(build, '__name__', 'model')}_settings", specs, frozen=True)
