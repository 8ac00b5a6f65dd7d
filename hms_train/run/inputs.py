"""A run's inputs: which store arrays feed which input of the model (by the role their attributes
declare, hms_prep.store.arrays.describe_arrays: the image composed by the layout from every "image" array,
one array for each other input the model kind declares), the model as data, and the augmentations
checked against them. All predict needs for a store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from hms_prep.domain import LABEL_SAMPLES
from hms_prep.store.arrays import ROLE_IMAGE, TIME_AXES, ArrayDescription
from hms_train.image.augment import CHAIN_BLOCKS, FLIP_COLUMNS, MIRROR_ROWS, AugmentConfig
from hms_train.image.layout import ImageLayout, LayoutConfig, LayoutError, PartSource, resolve_layout, side_by_side
from hms_train.model.kinds import IMAGE, PLANNED_SUFFIX, SIGNALS, create_model, model_kind
from hms_train.run.config import TrainConfig
from hms_train.run.config_values import ConfigError

SIGNAL_WINDOW = LABEL_SAMPLES  # 50 s at 200 Hz: the label window a model of the signals sees


@dataclass(frozen=True)
class InputPlan:
    """What a model of the config takes from a store: the image (its layout over the image arrays), the
    array of each of its other inputs (by role), and the model as data (`model_spec`: `{"name", "kwargs"}`
    for `create_model`)."""

    config: TrainConfig
    layout: ImageLayout | None  # None: the model takes no image
    arrays: dict[str, str]  # each model input but the image -> the array of that role it reads
    model_spec: dict
    flips: tuple[str, ...] = ()  # the inputs whose last axis is time (the image's always is)

    @property
    def takes_image(self) -> bool:
        return self.layout is not None

    @property
    def signals(self) -> str | None:
        """The signals array the model reads (None: none)."""
        return self.arrays.get(SIGNALS)

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        return (1, *self.layout.image_size) if self.layout is not None else None

    def build_model(self):
        """A new model of the spec (random weights, or the pretrained backbone the config asks for)."""
        return create_model(self.model_spec["name"], **self.model_spec["kwargs"])

    def mirror_rows(self) -> np.ndarray | None:
        """The hemisphere swap's map of the image (None without an image)."""
        return self.layout.mirror_rows() if self.layout is not None else None


def plan_inputs(config: TrainConfig, arrays: Mapping[str, ArrayDescription]) -> InputPlan:
    """The model's inputs among `arrays` (the store's, by name: `describe_arrays`); ConfigError or
    LayoutError naming the key when the config and the store do not fit."""
    missing = [name for name in config.inputs if name not in arrays]
    if missing:
        raise ConfigError(f"inputs: {missing} not in {config.store}; it has {sorted(arrays)}")
    kind = model_kind(config.model.name)
    described = {name: arrays[name] for name in config.inputs}
    by_role = {}  # every input but the image: exactly one array of its role
    for role in kind.inputs:
        if role == IMAGE:
            continue
        holding = [name for name, array in described.items() if array.role == role]
        if len(holding) != 1:
            raise ConfigError(f"inputs: model kind {kind.name!r} takes one {role} array; inputs {list(config.inputs)} "
                              f"hold {len(holding)} ({holding or 'none'})")
        by_role[role] = holding[0]
    unread = [name for name, array in described.items() if array.role not in kind.inputs]
    if unread:
        roles = sorted({described[name].role for name in unread})
        raise ConfigError(f"inputs: {unread} are {' / '.join(roles)} arrays, which model kind {kind.name!r} does not "
                          f"take (it takes {' and '.join(kind.inputs)})")
    layout = _image_layout(config, described) if IMAGE in kind.inputs else None
    others = {role: arrays[name] for role, name in by_role.items()}
    flips = (*((IMAGE,) if layout is not None else ()), *(role for role, array in others.items() if along_time(array)))
    return InputPlan(config, layout, by_role, _model_spec(config, kind, layout, others), flips)


def _image_layout(config: TrainConfig, arrays: Mapping[str, ArrayDescription]) -> ImageLayout:
    """The config's `[layout]` placed on the arrays, or its image parts side by side."""
    sources = {name: PartSource.of(array) for name, array in arrays.items()}
    spec = LayoutConfig.parse(config.layout)
    if spec is None:
        return resolve_layout(side_by_side(list(config.inputs), sources), sources)
    for index, part in enumerate(spec.parts):
        if part.array not in config.inputs:
            raise LayoutError(f"layout.parts[{index}].array {part.array!r} is not in inputs {list(config.inputs)}: "
                              "list every array of the layout in inputs so that the reader reads it")
    placed = {part.array for part in spec.parts}
    unused = [name for name, source in sources.items() if source.role == ROLE_IMAGE and name not in placed]
    if unused:
        raise LayoutError(f"inputs {unused} are not placed in the layout: place them in layout.parts or drop "
                          "them from inputs")
    return resolve_layout(spec, sources)


def _model_spec(config: TrainConfig, kind, layout: ImageLayout | None, arrays: Mapping[str, ArrayDescription]) -> dict:
    """The model as JSON-able data: only the arguments its kind takes, the image size from the layout,
    each other input's per-row shape (`<role>_shape`) from the store."""
    values = config.model.kwargs()  # checked against the kind's signature when the config was read
    if layout is not None:
        values["image_size"] = list(layout.image_size)
    for role, array in arrays.items():
        values[f"{role}{PLANNED_SUFFIX}"] = list(input_item_shape(array))
    signals = arrays.get(SIGNALS)
    if signals is not None:
        values["raw_channels"] = int(signals.shape[0])  # the builders' argument names (old checkpoints hold them)
        values["raw_samples"] = SIGNAL_WINDOW
    taken = kind.arguments()
    return {"name": kind.name, "kwargs": {key: value for key, value in values.items() if key in taken}}


def input_item_shape(array: ArrayDescription) -> tuple[int, ...]:
    """The shape of one row's value of an input: its item (stored per row), or its label window (stored
    per segment: the signals' windows)."""
    return tuple(array.shape[1:]) if array.per_row else (int(array.shape[0]), SIGNAL_WINDOW)


def along_time(array: ArrayDescription) -> bool:
    """Whether an input's last axis is time (a test-time flip reverses it; a feature vector has none)."""
    return bool(array.axes) and array.axes[-1] in TIME_AXES


def check_augment(config: TrainConfig, inputs: InputPlan) -> AugmentConfig:
    """The config's augmentations; a model that takes other inputs beside the image (the signals) refuses
    the steps that change the image alone (they would desynchronise them)."""
    augment = config.augment
    if inputs.takes_image and inputs.arrays:
        unsynced = [f"augment.{aug.name}.p" for aug, _ in augment.active() if aug.image_only]
        if unsynced:
            raise ConfigError(f"model kind {config.model.name!r} takes the image and {' and '.join(inputs.arrays)} "
                              f"together; {unsynced} would change the image alone and desynchronise them: set them to 0")
    augment_geometry(augment, inputs)  # a map the layout cannot give (a tiled, cropped layout): refused here
    if config.eval_flip_p > 0:
        if not inputs.takes_image or inputs.arrays:
            raise ConfigError(f"eval_flip_p: flips the image at evaluation; model kind {config.model.name!r} takes "
                              "signals (or no image): set it to 0")
        if augment.steps["time_flip"].per_part:
            inputs.layout.part_flip_columns()
    return augment


def augment_geometry(augment: AugmentConfig, inputs: InputPlan) -> dict[str, np.ndarray | None]:
    """The layout's maps the active steps need (each step declares them: `register_augmentation(needs=)`),
    by name; LayoutError naming the fix where the layout has no such map."""
    if not inputs.takes_image:
        return {}
    makers = {MIRROR_ROWS: inputs.mirror_rows, FLIP_COLUMNS: inputs.layout.part_flip_columns,
              CHAIN_BLOCKS: inputs.layout.chain_blocks}
    wanted = sorted({name for aug, settings in augment.active() for name in aug.needs(settings)})
    return {name: makers[name]() for name in wanted}
