"""The model kinds registry: a kind is a builder registered with the inputs its forward takes by keyword
(`register_model(name, inputs=...)`: roles of store arrays, IMAGE for the composed image); its settings are
its builder's arguments but the planned ones. `create_model(name, **kwargs)` is the one factory, timm
style, and refuses arguments a kind does not take.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from torch import nn

from hms_prep.registry import Registry, RegistryError, settings_from_signature


# --- model kinds: each declares the batch inputs it consumes and builds itself from its own arguments ---


# The inputs a model kind takes are its forward's keyword arguments, each named by a store array's role
# (an open set: a plug-in kind may declare its own, a plug-in model take it): IMAGE is the image the run's
# layout composes from every array whose role is "image"; any other input is the one array of that role
# among the run's inputs, its rows as float32 (SIGNALS: the raw kind's windows). hms_train/run/inputs.py.
IMAGE, SIGNALS = "image", "signals"
# A builder's arguments the run plan fills from the layout and the store; every other argument is a
# setting a recipe may give (`[model]`, `--set model.NAME=...`), checked against the builder's signature.
# Besides these, `<input>_shape` (the per-row shape of each input but the image, e.g. `features_shape`).
PLANNED_ARGUMENTS = ("image_size", "raw_channels", "raw_samples")
PLANNED_SUFFIX = "_shape"
DEFAULT_MODEL = "2d"
# A setting annotated so is checked as a probability in [0, 1] (hms_train/run/config.py).
Probability = Annotated[float, "probability"]


@dataclass(frozen=True)
class ModelKind:
    """A kind of model: the inputs its forward takes (by keyword, in this order; roles of store arrays), its
    builder and its settings (a dataclass of the builder's arguments but the planned ones)."""

    name: str
    inputs: tuple[str, ...]
    build: Callable[..., nn.Module]
    settings: type

    def arguments(self) -> dict[str, inspect.Parameter]:
        """The builder's keyword arguments by name (what `create_model` accepts for this kind)."""
        return dict(inspect.signature(self.build).parameters)


MODELS: Registry[Callable[..., nn.Module]] = Registry("model kind", "models")  # details: inputs


def register_model(name: str, inputs: tuple[str, ...]):
    """Decorator: register `build(**kwargs) -> nn.Module` as model kind `name` consuming `inputs`; its
    settings are its arguments but PLANNED_ARGUMENTS, typed and defaulted as its signature says."""

    def register(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not inputs or isinstance(inputs, str) or not all(isinstance(i, str) and i.isidentifier() for i in inputs):
            raise RegistryError(f"model kind {name!r}: inputs {inputs!r}; a tuple of the roles its forward takes by "
                                f"keyword, e.g. ({IMAGE!r},) or ({IMAGE!r}, {SIGNALS!r})")
        planned = (*PLANNED_ARGUMENTS, *(f"{i}{PLANNED_SUFFIX}" for i in inputs if i != IMAGE))
        return MODELS.register(name, build, settings_from_signature(build, planned), inputs=tuple(inputs))

    return register


def model_kind(name: str) -> ModelKind:
    entry = MODELS.entry(name)
    return ModelKind(name, entry.details["inputs"], entry.factory, entry.settings)


def kinds_taking(inputs) -> list[str]:
    """The model kinds whose forward takes exactly `inputs` (roles, in any order), in registration order: the
    built-in nets of models.py first, so the first is the plain one for those inputs ("2d" for the image)."""
    wanted = set(inputs)
    return [name for name in MODELS if set(MODELS.entry(name).details["inputs"]) == wanted]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a model of kind `name` ("2d", "1d", "multimodal", ...) from that kind's own arguments;
    an argument the kind does not take is refused, naming the ones it does."""
    kind = model_kind(name)
    taken = kind.arguments()
    unknown = sorted(set(kwargs) - set(taken))
    if unknown:
        raise ValueError(f"model kind {name!r} got argument(s) {unknown}, which {name!r} has none of; "
                         f"it takes {sorted(taken)}")
    required = [arg for arg, p in taken.items() if p.default is inspect.Parameter.empty and arg not in kwargs]
    if required:
        raise ValueError(f"model kind {name!r} needs argument(s) {required}")
    return kind.build(**kwargs)
