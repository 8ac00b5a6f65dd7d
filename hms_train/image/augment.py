"""Batched training augmentations of composed images, on the batch's device, per-sample random parameters.

Each augmentation is a small pure function of the images and its already-drawn parameters (a mask of the
samples it applies to, factors, positions, an affine matrix: transforms.py), so it can be tested on its
own. Each is also a registered step (`register_augmentation`): a name, a settings dataclass (`p`, its probability,
and its strengths; the defaults are the seed recipe), whether it changes the image alone (`image_only`:
refused for models that also take the signals), its place in the chain (`order`), and a function that
draws its parameters for the whole batch from one `torch.Generator` (through `Draws`) and applies them.
`Augmenter` chains the steps a config turns on; nothing loops over the samples in Python, and the same
code runs on CPU and CUDA. An augmentation from outside the package is one registered function.

Images are (B, 1, H, W) composed by `hms_train.image.compose` from an image layout: each part's chain
blocks LL, RL, LP, RP stacked top to bottom. Targets are (B, 6) vote fractions summing to 1. Geometric
augmentations act on the whole image except the hemisphere swap, which mirrors each part's own chain
blocks.

The config (TOML) has one table per step, `[augment.time_flip] p = 0.5`; the flat keys of earlier
configs (`augment.hflip_p`, `augment.brightness`, ...) are read as the same settings (`LEGACY_KEYS`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from hms_prep.registry import Registry, RegistryError
from hms_train.image.transforms import (MASK_AXES, affine_theta, block_autocontrast, brightness_contrast,
                                        hemisphere_swap, mixup, part_time_flip, per_sample, sample_symmetric_beta,
                                        shift_scale_rotate, stripe_mask, time_flip, vertical_flip, xy_mask)


# --- the registry: each augmentation a step with its settings ------------------------------------------


# The maps of the image's layout a step may ask for (`register_augmentation(needs=...)`); the run plan
# makes those the active steps ask for (hms_train/run/inputs.py augment_geometry), no step named there.
MIRROR_ROWS = "mirror_rows"  # the source row of each row (H,) or pixel (H, W): LL <-> RL, LP <-> RP per part
FLIP_COLUMNS = "flip_columns"  # the source column of each pixel (H, W): each part's time reversed in place
CHAIN_BLOCKS = "chain_blocks"  # the chain sub-image of each pixel (H, W), part index x 4 + chain; -1 on padding
GEOMETRY = (MIRROR_ROWS, FLIP_COLUMNS, CHAIN_BLOCKS)


class Draws:
    """Per-sample random draws for one batch, from one generator (None: torch's default), on the images'
    device; and what the steps may need to know of the image (`geometry`: the layout's maps, by name)."""

    def __init__(self, images: torch.Tensor, generator: torch.Generator | None,
                 geometry: Mapping[str, torch.Tensor | None] | None = None):
        self.batch, self.device = images.shape[0], images.device
        self.generator, self.geometry = generator, dict(geometry or {})

    @property
    def mirror_rows(self) -> torch.Tensor | None:
        return self.geometry.get(MIRROR_ROWS)

    @property
    def flip_columns(self) -> torch.Tensor | None:
        return self.geometry.get(FLIP_COLUMNS)

    @property
    def chain_blocks(self) -> torch.Tensor | None:
        return self.geometry.get(CHAIN_BLOCKS)

    def uniform(self, low: float, high: float) -> torch.Tensor:
        """(B,) uniform draws in [low, high)."""
        u = torch.rand(self.batch, generator=self.generator, device=self.device)
        return low + (high - low) * u

    def chosen(self, p: float) -> torch.Tensor:
        """(B,) bool: which samples a step of probability `p` applies to."""
        return self.uniform(0.0, 1.0) < p


Apply = Callable[[Draws, torch.Tensor, torch.Tensor, Any], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass(frozen=True)
class Augmentation:
    """A registered step: `apply(draws, images, targets, settings) -> (images, targets)`."""

    name: str
    settings: type  # a dataclass whose field `p` is the probability; its defaults are the seed recipe's
    apply: Apply
    image_only: bool  # moves image content in time or across chains, or mixes samples
    order: int  # steps run in ascending order
    needs: Callable[[Any], tuple[str, ...]] = lambda settings: ()  # the layout maps (GEOMETRY) it reads


AUGMENTATIONS: Registry[Apply] = Registry("augmentation", "augmentations")  # details: order, image_only


def register_augmentation(name: str, settings: type, *, order: int, image_only: bool,
                          needs: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()):
    """Decorator: register `apply(draws, images, targets, settings)` as the augmentation `name`, configured
    by the dataclass `settings` (a field `p` and the step's strengths), run at `order` in the chain.
    `needs`: the layout maps of GEOMETRY it reads from `draws.geometry` (or a function of its settings
    giving them); the run plan makes them from the layout, or refuses the layout, before any work."""
    wanted = needs if callable(needs) else (lambda _settings, fixed=tuple(needs): fixed)

    def register(apply: Apply) -> Apply:
        if not dataclasses.is_dataclass(settings) or "p" not in {f.name for f in dataclasses.fields(settings)}:
            raise RegistryError(f"augmentation {name!r}: its settings {settings.__name__} need a field `p`")
        unknown = [n for n in (() if callable(needs) else needs) if n not in GEOMETRY]
        if unknown:
            raise RegistryError(f"augmentation {name!r}: needs {unknown}; the layout gives {list(GEOMETRY)}")
        return AUGMENTATIONS.register(name, apply, settings, order=order, image_only=image_only, needs=wanted)

    return register


def augmentation(name: str) -> Augmentation:
    """The registered step `name`."""
    entry = AUGMENTATIONS.entry(name)
    details = entry.details
    return Augmentation(name, entry.settings, entry.factory, details["image_only"], details["order"], details["needs"])


def _built_in(name: str) -> bool:
    return AUGMENTATIONS.entry(name).origin.startswith("hms_train.")


def in_chain_order() -> list[Augmentation]:
    """Every registered step, in the order they run (ties by name)."""
    return sorted(map(augmentation, AUGMENTATIONS), key=lambda aug: (aug.order, aug.name))


@dataclass
class HemisphereSwapSettings:
    p: float = 0.5  # LL <-> RL and LP <-> RP; the label is kept


@dataclass
class TimeFlipSettings:
    p: float = 0.5  # time reversal of the whole image
    per_part: bool = False  # each part reversed in place instead (David's flip; needs the layout's map)


@dataclass
class VerticalFlipSettings:
    p: float = 0.0  # whole-image vertical flip (reverses chain order and frequency axis)


@dataclass
class AutocontrastSettings:
    p: float = 0.0  # per chain sub-image of each part, drawn apart (David: RandomApply(p=.5) of RandomAutocontrast(p=.5))


@dataclass
class BrightnessContrastSettings:
    p: float = 0.6
    brightness: float = 0.2  # offset drawn from U(-brightness, brightness) and added
    contrast: float = 0.2  # factor drawn from 1 + U(-contrast, contrast) and multiplied


@dataclass
class ShiftScaleRotateSettings:
    p: float = 0.7
    shift: float = 0.15  # fraction of the image's width / height
    scale: float = 0.05  # zoom factor drawn from 1 + U(-scale, scale)
    rotate_deg: float = 15.0


@dataclass
class XYMaskSettings:
    p: float = 0.5
    axes: Literal[MASK_AXES] = "both"  # time stripes and frequency stripes, or time stripes only
    stripes: tuple[int, int] = (1, 10)  # stripes per axis, inclusive range
    width: tuple[int, int] = (5, 10)  # stripe width in pixels, inclusive range


@dataclass
class MixupSettings:
    p: float = 0.3
    alpha: float = 0.5  # lam ~ Beta(alpha, alpha)


@register_augmentation("hemisphere_swap", HemisphereSwapSettings, order=10, image_only=True, needs=(MIRROR_ROWS,))
def _hemisphere_swap(draws: Draws, images, targets, settings: HemisphereSwapSettings):
    return hemisphere_swap(images, draws.chosen(settings.p), draws.mirror_rows), targets


@register_augmentation("time_flip", TimeFlipSettings, order=20, image_only=True,
                       needs=lambda settings: (FLIP_COLUMNS,) if settings.per_part else ())
def _time_flip(draws: Draws, images, targets, settings: TimeFlipSettings):
    chosen = draws.chosen(settings.p)
    if not settings.per_part:
        return time_flip(images, chosen), targets
    if draws.flip_columns is None:
        raise ValueError("augment.time_flip.per_part needs the layout's map of the parts (Augmenter(geometry=))")
    return part_time_flip(images, chosen, draws.flip_columns), targets


@register_augmentation("vertical_flip", VerticalFlipSettings, order=30, image_only=True)
def _vertical_flip(draws: Draws, images, targets, settings: VerticalFlipSettings):
    return vertical_flip(images, draws.chosen(settings.p)), targets


@register_augmentation("autocontrast", AutocontrastSettings, order=35, image_only=False, needs=(CHAIN_BLOCKS,))
def _autocontrast(draws: Draws, images, targets, settings: AutocontrastSettings):
    """David's "contrast" (D/utils.py get_transform: RandomApply([RandomChoice([v2.RandomAutocontrast()])],
    p=0.5) on every chain sub-image the data loader reads, D/data_loader.py get_data_by_id)."""
    if draws.chain_blocks is None:
        raise ValueError("augment.autocontrast needs the layout's map of the chain sub-images (the run plan's chain_blocks geometry)")
    count = int(draws.chain_blocks.max()) + 1
    u = torch.rand(draws.batch, count, generator=draws.generator, device=draws.device)
    return block_autocontrast(images, draws.chain_blocks, u < settings.p), targets


@register_augmentation("brightness_contrast", BrightnessContrastSettings, order=40, image_only=False)
def _brightness_contrast(draws: Draws, images, targets, settings: BrightnessContrastSettings):
    chosen = draws.chosen(settings.p)
    contrast = draws.uniform(1 - settings.contrast, 1 + settings.contrast)
    brightness = draws.uniform(-settings.brightness, settings.brightness)
    # unchosen samples get factor 1 and offset 0: exactly unchanged
    images = brightness_contrast(images, torch.where(chosen, contrast, 1.0), torch.where(chosen, brightness, 0.0))
    return images, targets


@register_augmentation("shift_scale_rotate", ShiftScaleRotateSettings, order=50, image_only=True)
def _shift_scale_rotate(draws: Draws, images, targets, settings: ShiftScaleRotateSettings):
    chosen = draws.chosen(settings.p)
    max_angle = math.radians(settings.rotate_deg)
    theta = affine_theta(
        angle_rad=draws.uniform(-max_angle, max_angle),
        zoom=draws.uniform(1 - settings.scale, 1 + settings.scale),
        shift_x=draws.uniform(-settings.shift, settings.shift),
        shift_y=draws.uniform(-settings.shift, settings.shift),
        height=images.shape[-2],
        width=images.shape[-1],
    )
    # bilinear resampling with an identity matrix is only identical up to rounding: keep the
    # unchosen samples' pixels exactly
    return torch.where(per_sample(chosen), shift_scale_rotate(images, theta), images), targets


@register_augmentation("xy_mask", XYMaskSettings, order=60, image_only=False)  # after the warp: stripes stay straight
def _xy_mask(draws: Draws, images, targets, settings: XYMaskSettings):
    batch, _, height, width = images.shape
    chosen = draws.chosen(settings.p)[:, None]
    columns = stripe_mask(batch, width, settings.stripes, settings.width, draws.generator, images.device)
    if settings.axes == "time":
        rows = torch.zeros(batch, height, dtype=torch.bool, device=images.device)
    else:
        rows = stripe_mask(batch, height, settings.stripes, settings.width, draws.generator, images.device)
    return xy_mask(images, columns & chosen, rows & chosen), targets


@register_augmentation("mixup", MixupSettings, order=90, image_only=True)
def _mixup(draws: Draws, images, targets, settings: MixupSettings):
    chosen = draws.chosen(settings.p)
    lam = sample_symmetric_beta(draws.batch, settings.alpha, draws.generator, images.device)
    lam = torch.where(chosen, lam, 1.0)
    perm = torch.randperm(draws.batch, generator=draws.generator, device=images.device)
    return mixup(images, targets, lam, perm)


# The flat keys of configs written before the registry: key -> (step, setting).
LEGACY_KEYS = {
    "hemisphere_swap_p": ("hemisphere_swap", "p"), "hflip_p": ("time_flip", "p"), "vflip_p": ("vertical_flip", "p"),
    "brightness_contrast_p": ("brightness_contrast", "p"), "brightness": ("brightness_contrast", "brightness"),
    "contrast": ("brightness_contrast", "contrast"), "ssr_p": ("shift_scale_rotate", "p"),
    "shift": ("shift_scale_rotate", "shift"), "scale": ("shift_scale_rotate", "scale"),
    "rotate_deg": ("shift_scale_rotate", "rotate_deg"), "xy_mask_p": ("xy_mask", "p"), "mask_axes": ("xy_mask", "axes"),
    "mask_stripes": ("xy_mask", "stripes"), "mask_width": ("xy_mask", "width"), "mixup_p": ("mixup", "p"),
    "mixup_alpha": ("mixup", "alpha"),
}
REMOVED_KEYS = {"random_crop_width": "the Kaggle part's width and crop are now set in the recipe's [layout] "
                                    "(layout.parts: width, train_crop = \"random\", eval_crop = \"first\")"}


class AugmentError(ValueError):
    """An augment setting that cannot be used; the message names the key."""


class AugmentConfig:
    """Every registered augmentation's settings by name (registered defaults where the config is silent)."""

    def __init__(self, steps: Mapping[str, Any] | None = None):
        steps = dict(steps or {})
        unknown = sorted(set(steps) - set(AUGMENTATIONS))
        if unknown:
            raise AugmentError(f"unknown augmentation(s) {['augment.' + n for n in unknown]}; registered: "
                               f"{sorted(AUGMENTATIONS)} (a plugin registers more: docs/architecture.md)")
        self.steps = {aug.name: steps.get(aug.name) or aug.settings() for aug in in_chain_order()}

    @classmethod
    def from_values(cls, values: Mapping[str, Any], prefix: str = "augment", build=None) -> AugmentConfig:
        """From a config's `augment` table: `{step: {setting: value}}`, or the flat legacy keys.
        `build(settings_type, values, key_prefix)` checks a step's settings (hms_train.run.config)."""
        build = build or (lambda settings, given, _: settings(**given))
        nested: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            if key in REMOVED_KEYS:
                if value is not None:
                    raise AugmentError(f"{prefix}.{key} was removed: {REMOVED_KEYS[key]}")
                continue
            if key in LEGACY_KEYS:
                step, setting = LEGACY_KEYS[key]
                nested.setdefault(step, {})[setting] = value
            elif isinstance(value, Mapping):
                nested.setdefault(key, {}).update(value)
            elif key in AUGMENTATIONS:
                raise AugmentError(f"{prefix}.{key}: expected a table of its settings, e.g. [{prefix}.{key}] p = 0.5")
            else:
                raise AugmentError(f"unknown augmentation {prefix}.{key}; registered: {sorted(AUGMENTATIONS)}")
        unknown = sorted(set(nested) - set(AUGMENTATIONS))
        if unknown:
            raise AugmentError(f"unknown augmentation(s) {[f'{prefix}.{n}' for n in unknown]}; registered: "
                               f"{sorted(AUGMENTATIONS)} (a plugin registers more: docs/architecture.md)")
        return cls({name: build(augmentation(name).settings, given, f"{prefix}.{name}.")
                    for name, given in nested.items()})

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation at all (every probability 0): for benchmarks and ablations."""
        return cls({aug.name: dataclasses.replace(aug.settings(), p=0.0) for aug in in_chain_order()})

    def active(self) -> list[tuple[Augmentation, Any]]:
        """The steps that can fire (p > 0), in chain order."""
        return [(augmentation(name), settings) for name, settings in self.steps.items() if settings.p > 0]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every built-in step's settings, and a plug-in's where they differ from its defaults: a plug-in
        loaded earlier in the same process (a notebook, a test worker) must not enter a run's config.json,
        which a fresh process without that plug-in could then not read back (--resume, predict)."""
        return {name: dataclasses.asdict(settings) for name, settings in self.steps.items()
                if _built_in(name) or settings != augmentation(name).settings()}

    def __eq__(self, other) -> bool:
        return isinstance(other, AugmentConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"AugmentConfig({self.to_dict()})"


class Augmenter:
    """Training augmentation of a batch: the config's active steps in order, each applied to a random
    subset of samples with per-sample parameters, all drawn from `generator` (on the images' device;
    None = torch's default generator).

    `geometry` holds the layout's maps the steps need (GEOMETRY, by name; the run plan makes them):
    `mirror_rows`, the hemisphere swap's map of the chain blocks (absent: the whole image is one part of
    4 equal blocks), `flip_columns`, a time flip of each part in place, and `chain_blocks`, the chain
    sub-image of each pixel. Crops are
    not here: they belong to the layout and happen when the image is composed (`hms_train.image.compose`).
    """

    def __init__(self, config: AugmentConfig, generator: torch.Generator | None = None,
                 geometry: Mapping[str, torch.Tensor | None] | None = None):
        self.config = config
        self.steps = config.active()
        self.generator = generator
        self.geometry = dict(geometry or {})

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, train: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented (images, targets) in train mode; the inputs unchanged when `train` is False."""
        if not train:
            return images, targets
        draws = Draws(images, self.generator, self.geometry)
        for augmentation, settings in self.steps:
            images, targets = augmentation.apply(draws, images, targets, settings)
        return images, targets
