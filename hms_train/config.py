"""Experiments are files: a TrainConfig read from bundled or user TOML, overridable field by field."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from hms_train.augment import AugmentConfig
from hms_train.layout import LayoutConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class TrainConfig:
    # data
    store: str = "cache/specs.zarr"
    inputs: list[str] = field(default_factory=lambda: ["eeg_10s", "eeg_30s", "kaggle"])
    folds: list[int] | None = None  # folds to train (each validated on itself); None = all
    reader_threads: int = 4
    raw_jitter_s: float = 0.0  # random shift of the raw 50 s window in training (1D models)
    # model
    model: str = "2d"  # 2d | 1d | multimodal
    backbone: str = "efficientnet_b0"
    pool: str = "attention"  # avg | gem | attention
    drop_rate: float = 0.2
    pretrained: bool = False  # timm's local cache only: nothing is downloaded
    weights: str | None = None  # a local backbone state dict
    # optimisation
    optimizer: str = "adamw"  # adamw | lion (timm implementations)
    lr: float = 3e-4
    weight_decay: float = 1e-2
    batch_size: int = 16
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995  # 0 disables EMA
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool = True
    compile: bool = False
    # loss
    mse_weight: float = 1.0  # KL + MSE on the softmax, 1:1 in the seed recipe
    vote_weighting: str = "none"  # none | linear | log
    # stages
    epochs: int = 25  # stage 1, all rows
    stage2_epochs: int = 15  # 0 = single stage
    stage2_min_votes: int = 10
    stage2_lr: float | None = None  # default: lr / 2
    pseudo_labels: str | None = None  # parquet from `hms-train pseudo-label`, used in stage 2
    pseudo_mode: str = "replace"  # replace | blend (low-vote rows' targets)
    pseudo_blend: float = 0.5  # weight of the pseudo label in blend mode
    # evaluation
    kaggle_width: int | None = None  # evaluation keeps the first N Kaggle columns; None = all
    tta_hflip: bool = False
    max_batches_per_epoch: int | None = None  # cap for quick experiments
    # misc
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    layout: LayoutConfig | None = None  # the image's parts and crops (hms_train.layout); None: inputs side by side

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        values = dict(values)
        augment = AugmentConfig(**_checked(AugmentConfig, values.pop("augment", {})))
        return cls(**_checked(cls, values), augment=augment)


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_config(name_or_path: str | None, overrides: list[str] = ()) -> TrainConfig:
    """A bundled config by name, or a TOML file, then `key=value` overrides (dotted for augment.*)."""
    values: dict[str, Any] = {}
    if name_or_path:
        path = Path(name_or_path)
        if not path.suffix and (CONFIG_DIR / f"{name_or_path}.toml").is_file():
            path = CONFIG_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise FileNotFoundError(f"no config {name_or_path!r}: not a file and not one of {bundled_configs()}")
        values = tomllib.loads(path.read_text())
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        target = values
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = _parse_value(text.strip())
    return TrainConfig.from_dict(values)


def _parse_value(text: str) -> Any:
    """TOML syntax for a single value (1e-3, true, [0, 1], "x"); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _checked(cls, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(names)}")
    hints = get_type_hints(cls)
    out = {}
    for key, value in values.items():
        if hints[key] is float and isinstance(value, int):
            value = float(value)
        if "tuple" in str(hints[key]) and isinstance(value, list):
            value = tuple(value)
        out[key] = value
    return out
