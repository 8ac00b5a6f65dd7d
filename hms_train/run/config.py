"""Experiments are files: a TrainConfig read from bundled or user TOML (`extends` a recipe), overridable
field by field (`--set key=value`, dotted for sections), and checked whole (types, choices, ranges, nested
sections, then the rules between fields) before any work starts.

Each field declares what it accepts once, in its annotation and metadata: `Literal[...]` for choices
(taken from the modules that implement them), `field(metadata=POSITIVE)` etc. for ranges. config_values.py
(`build_checked`) reads those declarations generically, so a new field, or a new nested dataclass section
such as `augment`, is checked without new code; this module holds the fields, the files and the rules.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hms_train.image.augment import AugmentConfig
from hms_train.data.tables import TABLES
from hms_train.image.layout import LayoutConfig
from hms_train.model.losses import KL_REDUCTIONS, VOTE_WEIGHTINGS
from hms_train.model.settings import ModelConfig
from hms_prep.plugins import load_plugins
from hms_train.run.config_values import (NON_NEGATIVE, POSITIVE, PROBABILITY, ConfigError, build_checked, did_you_mean,
                                         parse_value)
from hms_train.run.tracking import TRACKERS

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # hms_train/configs
EXTENDS = "extends"  # TOML key: the bundled config (or TOML path) whose values this file changes
OPTIMIZERS = ("adamw", "lion")  # timm implementations the recipes use
PSEUDO_MODES = ("replace", "blend")
PSEUDO_STAGES = ("stage1", "stage2")  # the stage whose low-vote rows take the pseudo-labels
SCHEDULES = ("cosine", "constant", "step")  # constant: Richard's AdamW without a scheduler; step: Keras lrfn lists
SCHEDULE_UNITS = ("step", "epoch")  # epoch: the lr changes once per epoch (David's CosineAnnealingLR)
FOLD_MODELS = ("best", "last")  # last: the last epoch's weights, as Keras model.fit then save_weights kept
STAGE2_INITS = ("continue", "best")  # best: from the best stage-1 checkpoint's (EMA) weights, as Richard
DEVICE = (r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")  # (pattern, in words)
DEFAULT_RECIPE = "default"  # the bundled config a command without --config uses
# Keys of earlier configs (a run folder's config.json) that no longer exist: refused unless unset.
# The model settings that were fields of their own before the [model] table: a run folder's config.json
# (and an older recipe) still reads, each moved into the table when the model kind takes it.
LEGACY_MODEL_KEYS = ("backbone", "pool", "drop_rate", "drop_path_rate", "dropout_at", "conv_head", "pretrained",
                     "weights")
REMOVED_KEYS = {"kaggle_width": "set the Kaggle part's width in the recipe's [layout] (layout.parts: "
                                "{ array = ..., width = N }); docs/recipes.md"}


@dataclass
class TrainConfig:
    # data
    store: str = "cache/specs.zarr"
    inputs: list[str] = field(default_factory=list)  # the store arrays to read; the recipes name them
    folds: list[int] | None = field(default=None, metadata=NON_NEGATIVE)  # folds to train; None = all
    reader_threads: int = field(default=4, metadata=POSITIVE)
    # the row table the stages draw from (hms_train/data/tables.py): every label row, or the seed's one
    # row per spectrogram by Richard's or David's rule
    rows: str = field(default="all", metadata={"registry": TABLES})
    raw_jitter_s: float = field(default=0.0, metadata=NON_NEGATIVE)  # random shift of the raw window (1D)
    # model
    # modules to import before the rest is checked: they register model kinds and augmentations (and
    # hms_cache.plugins entry points are loaded too; docs/architecture.md)
    plugins: list[str] = field(default_factory=list)
    # the model kind and its settings, a table (hms_train/model/settings.py): [model] name = "2d", backbone = ...
    model: ModelConfig = field(default_factory=ModelConfig)
    # optimisation
    optimizer: Literal[OPTIMIZERS] = "adamw"
    lr: float = field(default=3e-4, metadata=POSITIVE)
    adam_beta1: float = field(default=0.9, metadata=PROBABILITY)  # AdamW's first beta (its second stays 0.999)
    weight_decay: float = field(default=1e-2, metadata=NON_NEGATIVE)
    batch_size: int = field(default=16, metadata=POSITIVE)
    schedule: Literal[SCHEDULES] = "cosine"
    schedule_unit: Literal[SCHEDULE_UNITS] = "step"
    warmup_epochs: float = field(default=1.0, metadata=NON_NEGATIVE)  # whole epochs when schedule_unit = "epoch"
    lr_min_factor: float = field(default=0.01, metadata=PROBABILITY)  # the cosine's end (and warm-up start) / lr
    # schedule = "step": the lr times step_factor every step_every_epochs epochs (E/HMS_LB31.ipynb lrfn:
    # 1e-3 x 3, 1e-4 x 3, 1e-5 x 3 is every 3 epochs x 0.1)
    step_every_epochs: int = field(default=1, metadata=POSITIVE)
    step_factor: float = field(default=0.1, metadata=PROBABILITY)
    # schedule = "cosine" restarted every this many optimizer steps (torch's CosineAnnealingWarmRestarts(T_0)
    # stepped per batch, the ResNet1D-GRU's); 0: one cosine over the stage
    cosine_cycle_steps: int = field(default=0, metadata=NON_NEGATIVE)
    grad_clip: float = field(default=1.0, metadata=NON_NEGATIVE)  # 0 disables clipping
    # clip as David's fp16 loop did, on GradScaler-scaled gradients (D/trainer.py: clip_grad_norm_ before
    # scaler.unscale_): the norm limit is grad_clip / the scaler's scale (hms_train/run/step.py)
    grad_clip_scaled: bool = False
    ema_decay: float = field(default=0.995, metadata=PROBABILITY)  # 0 disables EMA
    ema_warmup: bool = False  # decay 1 - (1 + step)^(-2/3) capped at ema_decay (timm ModelEmaV3 use_warmup)
    # ema_pytorch's schedule (David): the EMA copies the weights up to this step, then updates every N steps
    ema_update_after_step: int = field(default=0, metadata=NON_NEGATIVE)
    ema_update_every: int = field(default=1, metadata=POSITIVE)
    weight_decay_all: bool = False  # decay biases and norms too (David's Lion); else timm leaves them out
    # one schedule over every stage's epochs, the optimizer, schedule and EMA carried from stage to stage
    # (David: CosineAnnealingLR(T_max=15) over 3 + 12 epochs); schedule_unit must be "epoch"
    schedule_across_stages: bool = False
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool = True
    compile: bool = False
    # loss
    kl_reduction: Literal[KL_REDUCTIONS] = "batchmean"  # "mean": torch's KLDivLoss default (/ 6), the seed's
    kl_weight: float = field(default=1.0, metadata=NON_NEGATIVE)
    mse_weight: float = field(default=1.0, metadata=NON_NEGATIVE)  # KL + MSE on the softmax, 1:1 in the seed
    ce_weight: float = field(default=0.0, metadata=NON_NEGATIVE)  # soft-target cross-entropy (David: 2)
    vote_weighting: Literal[VOTE_WEIGHTINGS] = "none"
    # stages
    epochs: int = field(default=25, metadata=POSITIVE)  # stage 1, all rows
    stage2_epochs: int = field(default=15, metadata=NON_NEGATIVE)  # 0 = single stage
    # stage 2 trains on rows with >= stage2_min_votes votes; with pseudo_labels, on all rows, the
    # others' targets from the pseudo-labels
    stage2_min_votes: int = field(default=10, metadata=NON_NEGATIVE)
    stage2_lr: float | None = field(default=None, metadata=POSITIVE)  # default: lr / 2
    stage2_init: Literal[STAGE2_INITS] = "continue"  # best: the fold's model is then stage 2's best epoch
    stage2_val_min_votes: int | None = field(default=None, metadata=NON_NEGATIVE)  # stage 2 validates on these
    # Richard's V4: the validation fold's rows with fewer votes join stage-2 training (with pseudo-labels:
    # they are below stage2_min_votes); its rows between this and stage2_min_votes are used nowhere
    stage2_val_to_train_below: int | None = field(default=None, metadata=NON_NEGATIVE)
    # the row table stage 2 trains and validates on (None: the run's `rows`); Richard's round 1 fine-tuned
    # on "richard_finetune" (V3: > 7 votes before the spectrogram de-duplication)
    stage2_rows: str | None = field(default=None, metadata={"registry": TABLES})
    pseudo_labels: str | None = None  # parquet from `hms-train pseudo-label`, used in `pseudo_stage`
    pseudo_stage: Literal[PSEUDO_STAGES] = "stage2"  # stage1: a single stage takes them (David's PL runs)
    # distillation: a parquet of label_id and the six *_vote columns (a teacher's probabilities) that every
    # training row of every stage trains on; validation keeps the true labels (Richard's KD runs)
    teacher_targets: str | None = None
    pseudo_mode: Literal[PSEUDO_MODES] = "replace"  # low-vote rows' targets
    pseudo_blend: float = field(default=0.5, metadata=PROBABILITY)  # weight of the pseudo label in blend mode
    # what won (HMS.md section 5)
    sample_per_eeg: bool = False  # each epoch trains on one random row per eeg_id (seeded by seed, epoch)
    val_per_eeg: bool = False  # validate on one row per eeg_id: its most-voted row (ties: the first)
    select_min_votes: int = field(default=10, metadata=NON_NEGATIVE)  # the "golden" rows checkpoints are chosen on
    fold_model: Literal[FOLD_MODELS] = "best"  # the fold's model (fold{k}_best.pt): its best epoch, or its last
    # evaluation
    tta_hflip: bool = False
    # validation and out-of-fold predictions (so pseudo-labels) see each row time-flipped with this
    # probability, as augment.time_flip flips (per part or whole), drawn once per fold and row; David's
    # data loader flipped every image it read, validation and pseudo-labelling included (not at test time)
    eval_flip_p: float = field(default=0.0, metadata=PROBABILITY)
    max_batches_per_epoch: int | None = field(default=None, metadata=POSITIVE)  # cap for quick experiments
    # experiment tracking (hms_train/run/tracking.py): "mlflow", "tensorboard"; each an extra
    track: list[Literal[TRACKERS]] = field(default_factory=list)
    track_checkpoints: bool = False  # also give the trackers each fold's best checkpoint (MLflow: artifacts)
    # logging: the running loss is read from the device at most every N steps (hms_train/run/progress.py)
    log_every: int = field(default=50, metadata=POSITIVE)
    # fold{k}_last.pt is also written every N steps inside an epoch (0: at epoch ends only), so that a
    # killed run resumes at the batch after it, not at the epoch's start
    checkpoint_every_steps: int = field(default=500, metadata=NON_NEGATIVE)
    # misc
    seed: int = field(default=0, metadata=NON_NEGATIVE)
    device: str = field(default="auto", metadata={"pattern": DEVICE})  # auto | cpu | cuda[:N]
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # one table per registered step
    layout: LayoutConfig | None = None  # the image's parts and crops (hms_train.image.layout); None: inputs side by side

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["augment"] = self.augment.to_dict()
        values["model"] = self.model.to_dict()
        return values

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """A checked config from plain values (TOML, JSON); raises ConfigError naming the bad key. Keys of
        earlier versions are read where they still mean something (a run folder's config.json), or
        refused with how to migrate."""
        values = dict(values)
        for key, how in REMOVED_KEYS.items():
            if values.pop(key, None) is not None:
                raise ConfigError(f"{key} was removed: {how}")
        plugins = values.get("plugins") or ()
        if isinstance(plugins, str) or not all(isinstance(m, str) for m in plugins):
            raise ConfigError(f"plugins: expected a list of module names, got {plugins!r}")
        try:
            load_plugins(plugins, option="plugins:")  # before the checks: plugins add model kinds and augmentations
        except ValueError as err:
            raise ConfigError(str(err)) from None
        config = build_checked(cls, _nest_legacy_model_keys(values), prefix="")
        _check_together(config)
        return config


def _nest_legacy_model_keys(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with the model settings given as top-level keys (LEGACY_MODEL_KEYS) moved into the
    `model` table, where they win; those the model kind does not take are left out, as they always were."""
    legacy = {key: values.pop(key) for key in LEGACY_MODEL_KEYS if key in values}
    if not legacy:
        return values
    model = values.get("model", {})
    model = {"name": model} if isinstance(model, str) else dict(model) if isinstance(model, dict) else model
    if isinstance(model, dict):
        from hms_train.model.kinds import DEFAULT_MODEL, MODELS

        name = model.get("name", DEFAULT_MODEL)
        taken = MODELS.entry(name).defaults() if name in MODELS else legacy
        model.update({key: value for key, value in legacy.items() if key in taken})
    values["model"] = model
    return values


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_config(name_or_path: str | None, overrides: list[str] = ()) -> TrainConfig:
    """A bundled config by name, or a TOML file (None: the bundled `default`), then `key=value` overrides
    (dotted for sections: augment.mixup.p, layout.width)."""
    values = _read_toml(name_or_path or DEFAULT_RECIPE)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value")
        target = values
        *parents, leaf = key.strip().split(".")
        if parents[:1] == ["model"] and isinstance(values.get("model"), str):  # model = "1d": its table
            values["model"] = {"name": values["model"]}
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {item!r}: {parent} is not a section")
        target[leaf] = parse_value(text.strip())
    return TrainConfig.from_dict(values)


def _read_toml(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A config file's values, a bundled name's or a path's; with `extends = "NAME"` they change the values
    of that config (tables merged key by key), so a variant of a recipe names only what differs."""
    path = Path(name_or_path)
    if not path.suffix and (CONFIG_DIR / f"{name_or_path}.toml").is_file():
        path = CONFIG_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        hint = did_you_mean(str(name_or_path), bundled_configs())
        raise FileNotFoundError(f"no config {name_or_path!r}{hint}: not a file and not one of {bundled_configs()}")
    if str(path) in seen:
        raise ConfigError(f"{path}: extends itself through {list(seen)}")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:  # its message carries the line and column
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    base = values.pop(EXTENDS, None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{path}: {EXTENDS} must name a bundled config or a TOML file, got {base!r}")
    return _merged(_read_toml(base, (*seen, str(path))), values)


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes`; a table changed by a table is merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_folds(config: TrainConfig, n_folds: int) -> None:
    """What only the store can tell: the folds exist in it."""
    bad = [fold for fold in config.folds or () if fold >= n_folds]
    if bad:
        raise ConfigError(f"folds: {bad} out of range; {config.store} has folds 0..{n_folds - 1}")


def check_device(name: str) -> None:
    """A CUDA device only where torch sees one (checked before any work, not at the first batch)."""
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but torch sees no CUDA device; use cpu or auto")


def _check_together(config: TrainConfig) -> None:
    """Rules between fields."""
    if not config.inputs:
        raise ConfigError("inputs: empty; name the store arrays to train on")
    if config.folds is not None and (not config.folds or len(set(config.folds)) != len(config.folds)):
        raise ConfigError(f"folds: expected distinct fold numbers, got {config.folds}")
    if config.pseudo_labels is not None and config.pseudo_stage == "stage2" and config.stage2_epochs == 0:
        raise ConfigError("pseudo_labels: used in stage 2, but stage2_epochs = 0 (pseudo_stage = \"stage1\" for one stage)")
    if config.pseudo_labels is not None and config.teacher_targets is not None:
        raise ConfigError("teacher_targets: every training row already takes the teacher's targets; drop pseudo_labels")
    if config.cosine_cycle_steps and (config.schedule != "cosine" or config.schedule_unit != "step"):
        raise ConfigError('cosine_cycle_steps: restarts of a cosine counted in steps; set schedule = "cosine" and '
                          'schedule_unit = "step", or cosine_cycle_steps = 0')
    if config.adam_beta1 != 0.9 and config.optimizer != "adamw":
        raise ConfigError(f'adam_beta1: AdamW\'s first beta, but optimizer = "{config.optimizer}"; leave it at 0.9')
    if config.schedule_across_stages and config.schedule_unit != "epoch":
        raise ConfigError('schedule_across_stages: one schedule over the stages counts epochs; set schedule_unit = "epoch"')
    below = config.stage2_val_to_train_below
    if below is not None and below > config.stage2_min_votes:
        raise ConfigError(f"stage2_val_to_train_below: {below} is above stage2_min_votes "
                          f"{config.stage2_min_votes}; validation rows that join training must be low-vote rows")
