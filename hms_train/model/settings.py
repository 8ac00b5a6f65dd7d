"""A recipe's model as a table, timm's `create_model(name, **kwargs)` style:

    [model]
    name = "2d"                  # a registered model kind (hms_train.model.models.MODELS, plug-ins too)
    backbone = "efficientnet_b0" # any argument of that kind's builder but the planned ones

`--set model.channels=16` sets one; `model = "1d"` (or `--set model="1d"`) is that kind with its
defaults. Each key is checked against the builder's signature (its settings dataclass) before any work:
an unknown one is refused in one line naming it and the ones the kind takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hms_prep.registry import REQUIRED, RegistryError
from hms_train.model.kinds import DEFAULT_MODEL, MODELS, PLANNED_ARGUMENTS


class ModelSettingsError(ValueError):
    """A `[model]` value that cannot be used; the message names the key."""


@dataclass(frozen=True)
class ModelConfig:
    """The model kind and its settings (an instance of the kind's settings dataclass)."""

    name: str = DEFAULT_MODEL
    settings: Any = None

    def __post_init__(self):
        if self.settings is None:
            object.__setattr__(self, "settings", MODELS.entry(self.name).settings())

    def kwargs(self) -> dict[str, Any]:
        """The builder's arguments the recipe gives (the plan adds the planned ones)."""
        return {f.name: getattr(self.settings, f.name) for f in dataclasses.fields(self.settings)}

    def without_pretrained_weights(self) -> ModelConfig:
        """The same model from random weights (benchmarks): `pretrained` and `weights` off where the kind
        has them."""
        names = {f.name for f in dataclasses.fields(self.settings)}
        off = {key: value for key, value in (("pretrained", False), ("weights", None)) if key in names}
        return dataclasses.replace(self, settings=dataclasses.replace(self.settings, **off))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.kwargs()}

    @classmethod
    def from_values(cls, values: str | Mapping[str, Any], prefix: str = "model", build: Callable | None = None):
        """From a recipe's `model` value: a kind's name, or a table `{name, setting: value, ...}`.
        `build(settings_type, values, key_prefix)` checks the values' types (hms_train.run.config)."""
        if isinstance(values, str):
            values = {"name": values}
        if not isinstance(values, Mapping):
            raise ModelSettingsError(f"{prefix}: expected a model kind's name or a table [{prefix}], got {values!r}")
        values = dict(values)
        name = values.pop("name", DEFAULT_MODEL)
        try:
            entry = MODELS.entry(name)
        except RegistryError:
            raise ModelSettingsError(f"{prefix}.name: {name!r} is not a registered model kind; registered: "
                                     f"{sorted(MODELS)} (a plugin registers more: docs/architecture.md)") from None
        known = entry.defaults()
        for key in values:
            if key in PLANNED_ARGUMENTS:
                raise ModelSettingsError(f"{prefix}.{key}: planned from the layout and the store, not a setting; "
                                         f"model kind {name!r} takes {sorted(known)}")
            if key not in known:
                raise ModelSettingsError(f"{prefix}.{key}: model kind {name!r} has no setting {key!r}; it takes "
                                         f"{sorted(known)}")
        missing = [key for key, default in known.items() if default is REQUIRED and key not in values]
        if missing:
            raise ModelSettingsError(f"{prefix}: model kind {name!r} needs {[f'{prefix}.{k}' for k in missing]}")
        build = build or (lambda settings, given, _: settings(**given))
        return cls(name, build(entry.settings, values, f"{prefix}."))
