"""A run, planned once: a config and a store in, everything the loop, the benchmark, predict and
`hms-train plan` need out, checked before any work.

    plan_inputs(config, arrays) -> InputPlan    which arrays make the model's inputs (by role), the image
                                                layout, the model spec; all predict needs for a store
    plan_run(config, reader)    -> RunPlan      + the loss, the augmentations, and per fold its stages:
                                                training and validation rows, targets, epochs, steps

Nothing here names an array or a kind of the store: arrays are found by the names a recipe gives
(`inputs`, `[layout]`) and by the role their attributes declare (hms_prep.store.arrays.describe_arrays).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from hms_prep.domain import LABEL_SAMPLES
from hms_prep.store.arrays import ROLE_IMAGE, TIME_AXES, ArrayDescription
from hms_train.data.reader import Selection, StoreReader
from hms_train.data.sampler import most_voted_row_per_group, one_row_per_group, rows_per_rank
from hms_train.data.tables import richard_rows, row_table
from hms_train.image.augment import CHAIN_BLOCKS, FLIP_COLUMNS, MIRROR_ROWS, AugmentConfig
from hms_train.image.layout import ImageLayout, LayoutConfig, LayoutError, PartSource, resolve_layout, side_by_side
from hms_train.model.losses import Loss
from hms_train.model.models import IMAGE, PLANNED_SUFFIX, SIGNALS, create_model, model_kind
from hms_train.run.config import PSEUDO_STAGES, ConfigError, TrainConfig
from hms_train.run.metric import VOTE_COLUMNS

SIGNAL_WINDOW = LABEL_SAMPLES  # 50 s at 200 Hz: the label window a model of the signals sees
STAGE_INITS_FROM_BEST = "best"  # config.stage2_init: the stage starts from the best checkpoint so far


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


@dataclass(frozen=True, eq=False)
class Stage:
    """One phase of a fold's training: its epochs, learning rate, training and validation rows, targets."""

    name: str
    index: int  # position among the fold's stages (orders checkpoints; varies the shuffle)
    epochs: int
    lr: float
    rows: np.ndarray = field(repr=False)  # training rows (an epoch may sample one per eeg_id of them)
    val_rows: np.ndarray = field(repr=False)  # validation rows: checkpoints are chosen on them
    targets: np.ndarray = field(repr=False)  # (n_rows, 6), pseudo-labels applied or not
    init: str = "continue"  # "best": start from the best checkpoint so far, and choose this stage's best
    steps_per_epoch: int = 0  # whole batches per rank and epoch
    file_target_rows: int = 0  # training rows whose targets come from a file (pseudo-labels)
    # The schedule this stage runs in: its length in epochs and the epochs before this stage in it. A stage
    # that shares the previous stage's schedule continues its optimizer, schedule and EMA (`carries`).
    schedule_epochs: int = 0
    schedule_offset: int = 0

    @property
    def carries(self) -> bool:
        return self.schedule_offset > 0


@dataclass(frozen=True, eq=False)
class RowScope:
    """The rows a run may train and validate on (its row table, `rows`: hms_train/data/tables.py), the
    targets the table reads for them, and the votes its vote filters compare (David's: the largest
    per-line total of the row's spectrogram). Indexed by store row."""

    in_table: np.ndarray = field(repr=False)  # (n_rows,) bool
    targets: np.ndarray = field(repr=False)  # (n_rows, 6)
    votes: np.ndarray = field(repr=False)  # (n_rows,) what the `>= N votes` filters compare
    # (n_rows,) the total of the line the target is read from: pseudo-labels replace a target below
    # stage2_min_votes (David's data_loader.py 385 `vote_sum < 10` reads the target line, not the filter's)
    target_votes: np.ndarray = field(repr=False)
    table: str = "all"

    @classmethod
    def of(cls, config: TrainConfig, reader: StoreReader, eligible: np.ndarray | None = None,
           table: str | None = None) -> RowScope:
        """The table `table` (default: the run's `rows`); `eligible` (a bool per store row) drops rows
        before Richard's per-spectrogram choice."""
        if eligible is not None:
            table = richard_rows(reader.labels, eligible)
        else:
            table = row_table(table or config.rows, reader.labels)
        in_table = np.zeros(reader.n_rows, dtype=bool)
        in_table[table.rows] = True
        votes = reader.votes.copy()
        votes[table.rows] = table.filter_votes
        target_votes = reader.votes.copy()
        target_votes[table.rows] = reader.votes[table.target_rows]
        return cls(in_table, table.targets(reader.targets), votes, target_votes, table.name)

    def select(self, reader: StoreReader, folds=None, exclude_folds=None) -> np.ndarray:
        """The table's rows built ok (ascending) of `folds`, or of every fold but `exclude_folds`."""
        rows = reader.select(Selection(folds=folds, exclude_folds=exclude_folds))
        return rows[self.in_table[rows]]


@dataclass(frozen=True, eq=False)
class RunPlan:
    """A checked run: its inputs and model, loss, augmentations, and every fold's stages."""

    inputs: InputPlan
    loss: Loss
    augment: AugmentConfig  # the steps the image gets in training (checked against the model's inputs)
    folds: dict[int, list[Stage]]
    world: int = 1  # data-parallel ranks the steps per epoch are counted for
    scope: RowScope | None = None  # the rows, targets and votes of the run's row table

    @property
    def config(self) -> TrainConfig:
        return self.inputs.config


# --- inputs: arrays by role, the layout, the model --------------------------------------------------------


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


def loss_of(config: TrainConfig) -> Loss:
    """The recipe's training loss (KL with its reduction, + MSE, + cross-entropy, vote weighting)."""
    return Loss(config.kl_reduction, config.kl_weight, config.mse_weight, config.ce_weight, config.vote_weighting)


# --- the whole run ----------------------------------------------------------------------------------------


def plan_run(config: TrainConfig, reader: StoreReader, world: int = 1, read_files: bool = True) -> RunPlan:
    """Plan every fold of `config` on the reader's store; raises ConfigError (or ValueError, FileNotFound)
    naming the key, before anything is trained or written. `config.folds` must be resolved. Without
    `read_files` the targets files (pseudo-labels) are not read: the plan counts the rows that need them
    (`hms-train plan` before the files exist)."""
    inputs = plan_inputs(config, reader.descriptions)
    augment = check_augment(config, inputs)
    scope = RowScope.of(config, reader)
    targets = stage_targets(config, reader, scope, read_files)
    folds = {fold: fold_stages(config, reader, fold, targets, world, scope) for fold in config.folds}
    plan = RunPlan(inputs, loss_of(config), augment, folds, world, scope)
    _check_rows(plan, reader)
    return plan


def describe(plan: RunPlan, reader: StoreReader) -> dict:
    """The plan as JSON-able data (`hms-train plan --json`): the image shape and, per fold and stage, the
    rows an epoch trains on, the validation rows, the training rows whose targets come from a file,
    epochs, steps per epoch and the learning rate at the first step of each epoch."""
    from hms_train.run.schedule import epoch_learning_rates

    config = plan.config
    folds = []
    for fold, stages in plan.folds.items():
        folds.append({"fold": fold, "stages": [{
            "name": stage.name, "train_rows": len(epoch_rows(config, reader, fold, stage, 0)),
            "val_rows": len(stage.val_rows), "file_target_rows": stage.file_target_rows, "epochs": stage.epochs,
            "steps_per_epoch": stage.steps_per_epoch,
            "lr": epoch_learning_rates(config, stages[0].lr if stage.carries else stage.lr, stage.schedule_epochs,
                                       stage.steps_per_epoch)[stage.schedule_offset:][:stage.epochs],
        } for stage in stages]})
    return {"image_shape": list(plan.inputs.image_shape) if plan.inputs.takes_image else None,
            "model": plan.inputs.model_spec["name"], "inputs": list(config.inputs),
            "row_table": plan.scope.table, "table_rows": int(plan.scope.in_table.sum()), "folds": folds}


def fold_stages(config: TrainConfig, reader: StoreReader, fold: int, targets, world: int = 1,
                scope: RowScope | None = None) -> list[Stage]:
    """Stage 1 on the scope's rows of the other folds, validated on the fold's; stage 2 on their rows with
    >= stage2_min_votes votes, or on all of them with pseudo-labels for the low-vote ones, validated on the
    fold's rows with >= stage2_val_min_votes (all when None) that stayed in validation. `targets`: each
    stage's training targets (`stage_targets`), or one table for every stage."""
    scope = scope or RowScope.of(config, reader)
    targets = targets if isinstance(targets, dict) else {0: targets, 1: targets}
    fold_rows = scope.select(reader, folds=[fold])
    training = scope.select(reader, exclude_folds=[fold])
    stages = [Stage("stage1", 0, config.epochs, config.lr, training, validation_rows(config, reader, fold_rows, scope),
                    targets[0], file_target_rows=len(from_file(config, 0, training, scope)))]
    if config.stage2_epochs > 0:
        scope = _stage2_scope(config, reader, fold, scope)
        fold_rows = scope.select(reader, folds=[fold])
        val = np.setdiff1d(fold_rows, moved_validation_rows(config, fold_rows, scope))
        if config.stage2_val_min_votes is not None:
            val = val[scope.votes[val] >= config.stage2_val_min_votes]
        rows = stage2_training_rows(config, reader, fold, scope)
        stages.append(Stage("stage2", 1, config.stage2_epochs, config.stage2_lr or config.lr / 2, rows,
                            validation_rows(config, reader, val, scope), targets[1], init=config.stage2_init,
                            file_target_rows=len(from_file(config, 1, rows, scope))))
    total = sum(stage.epochs for stage in stages)
    planned, offset = [], 0
    for stage in stages:
        steps = steps_per_epoch(config, len(epoch_rows(config, reader, fold, stage, 0)), world)
        shared = config.schedule_across_stages
        planned.append(dataclasses.replace(stage, steps_per_epoch=steps, schedule_epochs=total if shared else stage.epochs,
                                           schedule_offset=offset if shared else 0))
        offset += stage.epochs
    return planned


def _stage2_scope(config: TrainConfig, reader: StoreReader, fold: int, scope: RowScope) -> RowScope:
    """Stage 2's table: `stage2_rows` (V3's fine-tuning table, the same for every fold) or the run's. On
    Richard's table with pseudo-labels' moved rows (V4 cell 11), the validation fold's rows that stage 2
    neither trains on (votes < stage2_val_to_train_below) nor validates on (>= stage2_val_min_votes: the
    7-vote rows) are dropped before `drop_duplicates`, so their spectrograms keep another eeg_id's row."""
    name = config.stage2_rows or config.rows
    if name != "richard" or config.stage2_val_to_train_below is None or config.stage2_val_min_votes is None:
        return scope if name == scope.table else RowScope.of(config, reader, table=name)
    fold_rows = reader.select(Selection(folds=[fold], only_ok=False))
    votes = reader.votes[fold_rows]
    unused = (votes >= config.stage2_val_to_train_below) & (votes < config.stage2_val_min_votes)
    eligible = np.ones(reader.n_rows, dtype=bool)
    eligible[fold_rows[unused]] = False
    return RowScope.of(config, reader, eligible)


def steps_per_epoch(config: TrainConfig, rows: int, world: int = 1) -> int:
    """Whole batches per rank, equal on every rank (the smallest shard decides), at least one."""
    steps = rows_per_rank(rows, world) // config.batch_size
    if config.max_batches_per_epoch:
        steps = min(steps, config.max_batches_per_epoch)
    return max(steps, 1)


def stage2_training_rows(config: TrainConfig, reader: StoreReader, fold: int, scope: RowScope) -> np.ndarray:
    """The other folds' rows and the fold's moved low-vote rows; without pseudo-labels only those with
    >= stage2_min_votes votes."""
    rows = np.union1d(scope.select(reader, exclude_folds=[fold]),
                      moved_validation_rows(config, scope.select(reader, folds=[fold]), scope))
    if config.pseudo_labels is None:
        rows = rows[scope.votes[rows] >= config.stage2_min_votes]
    return rows


def moved_validation_rows(config: TrainConfig, fold_rows: np.ndarray, scope: RowScope) -> np.ndarray:
    """The validation fold's rows that join stage-2 training: fewer than stage2_val_to_train_below votes."""
    if config.stage2_val_to_train_below is None:
        return np.empty(0, dtype=np.int64)
    return fold_rows[scope.votes[fold_rows] < config.stage2_val_to_train_below]


def from_file(config: TrainConfig, stage: int, rows: np.ndarray, scope: RowScope) -> np.ndarray:
    """Which of a stage's training `rows` take their targets from a file: every one with a teacher's
    targets (distillation), the low-vote ones (< stage2_min_votes) in the pseudo-labels' stage."""
    if config.teacher_targets is not None:
        return rows
    if config.pseudo_labels is not None and stage == PSEUDO_STAGES.index(config.pseudo_stage):
        return rows[scope.target_votes[rows] < config.stage2_min_votes]
    return rows[:0]


def file_rows(config: TrainConfig, reader: StoreReader, scope: RowScope) -> dict[int, np.ndarray]:
    """Per stage, every training row of some fold that takes its target from a file."""
    needed: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for fold in config.folds:
        needed[0].append(from_file(config, 0, scope.select(reader, exclude_folds=[fold]), scope))
        if config.stage2_epochs > 0:
            fold_scope = _stage2_scope(config, reader, fold, scope)
            needed[1].append(from_file(config, 1, stage2_training_rows(config, reader, fold, fold_scope), scope))
    return {stage: np.unique(np.concatenate(rows)) if rows else np.empty(0, np.int64) for stage, rows in needed.items()}


def validation_rows(config: TrainConfig, reader: StoreReader, rows: np.ndarray, scope: RowScope) -> np.ndarray:
    """`rows`, or with `val_per_eeg` each eeg_id's most-voted row among them (fixed, ties: the first)."""
    if not config.val_per_eeg:
        return rows
    return most_voted_row_per_group(rows, reader.column("eeg_id"), scope.votes)


def epoch_rows(config: TrainConfig, reader: StoreReader, fold: int, stage: Stage, epoch: int) -> np.ndarray:
    """The rows one epoch trains on: the stage's, or with `sample_per_eeg` one random row per eeg_id of
    them, drawn from (seed, fold, stage, epoch) alone, so that a resumed epoch draws the same rows."""
    if not config.sample_per_eeg:
        return stage.rows
    rng = np.random.default_rng([config.seed, fold, stage.index, epoch])
    return one_row_per_group(stage.rows, reader.column("eeg_id"), rng)


def stage_targets(config: TrainConfig, reader: StoreReader, scope: RowScope, read_files: bool = True
                  ) -> dict[int, np.ndarray]:
    """Each stage's training targets: the row table's, with a file's where a stage takes them (checked
    to cover every row that needs one). Without `read_files`: the table's (the plan only counts rows)."""
    needed = file_rows(config, reader, scope)
    targets = {0: scope.targets, 1: scope.targets}
    if not read_files:
        return targets
    if config.teacher_targets is not None:
        rows = np.union1d(needed[0], needed[1])
        teacher = read_targets_file(reader, config.teacher_targets, "teacher_targets", rows, "that training uses")
        return {stage: apply_file_targets(scope.targets, teacher, 1.0) for stage in targets}
    if config.pseudo_labels is not None:
        stage = PSEUDO_STAGES.index(config.pseudo_stage)
        targets[stage] = train_targets(reader, config, needed[stage], scope)
    return targets


def train_targets(reader: StoreReader, config: TrainConfig, needed: np.ndarray | None = None,
                  scope: RowScope | None = None) -> np.ndarray:
    """The targets of the pseudo-labels' stage: the table's, the low-vote rows' replaced (or blended) by
    the pseudo-labels, which must cover the `needed` rows."""
    scope = scope or RowScope.of(config, reader)
    if config.pseudo_labels is None:
        return scope.targets
    # every low-vote row, not only the table's: Richard's stage-2 table can keep rows the run's table does not
    low = np.flatnonzero(scope.target_votes < config.stage2_min_votes)
    pseudo = read_targets_file(reader, config.pseudo_labels, "pseudo_labels",
                               np.empty(0, np.int64) if needed is None else needed,
                               f"with fewer than stage2_min_votes = {config.stage2_min_votes} votes that "
                               f"{config.pseudo_stage} trains on", only=low)
    weight = config.pseudo_blend if config.pseudo_mode == "blend" else 1.0  # "replace": the pseudo label alone
    return apply_file_targets(scope.targets, pseudo, weight)


@dataclass(frozen=True, eq=False)
class FileTargets:
    """Probabilities by store row, from a targets file (pseudo-labels, a teacher's predictions)."""

    rows: np.ndarray
    probs: np.ndarray  # (len(rows), 6)


def read_targets_file(reader: StoreReader, path: str, key: str, needed: np.ndarray, needed_what: str,
                      only: np.ndarray | None = None) -> FileTargets:
    """A parquet of label_id and the six *_vote columns (from `hms-train pseudo-label`) as store rows (those
    in `only`, when given); ValueError when it misses any of the `needed` rows (how many, the first), or
    names label_ids of another store."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: {path} not found (write it with `hms-train pseudo-label`)")
    table = pq.read_table(path)
    missing = [c for c in ("label_id", *VOTE_COLUMNS) if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; a targets file has label_id and {list(VOTE_COLUMNS)}")
    label_rows = {int(l): i for i, l in enumerate(reader.column("label_id"))}
    probs = np.stack([table.column(c).to_numpy() for c in VOTE_COLUMNS], 1).astype(np.float32)
    labels = table.column("label_id").to_numpy()
    unknown = [int(l) for l in labels if int(l) not in label_rows]
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} label_ids are not in {reader.url} "
                         f"(first: {unknown[0]}); {key.replace('_', ' ').replace('pseudo labels', 'pseudo-labels')} "
                         "must come from runs on this store")
    rows = np.array([label_rows[int(l)] for l in labels], dtype=np.int64)
    if only is not None:
        keep = np.isin(rows, only)
        rows, probs = rows[keep], probs[keep]
    missing = np.setdiff1d(needed, rows)
    if len(missing):
        first = [int(label) for label in reader.column("label_id")[missing[:5]]]
        what = "pseudo-label" if key == "pseudo_labels" else "target"
        raise ValueError(f"{path}: no {what} for {len(missing)} of the {len(needed)} rows {needed_what} (first "
                         f"label_ids: {first}); write it from runs over every fold of {reader.url}")
    return FileTargets(rows, probs)


def apply_file_targets(targets: np.ndarray, found: FileTargets, weight: float) -> np.ndarray:
    """`targets` with the file's rows replaced (weight 1) or mixed with the file's probabilities."""
    out = targets.copy()
    out[found.rows] = weight * found.probs + (1 - weight) * out[found.rows]
    return out


def _check_rows(plan: RunPlan, reader: StoreReader) -> None:
    """Every fold has rows to validate on and every stage at least one batch to train on."""
    config = plan.config
    for fold, stages in plan.folds.items():
        if len(plan.scope.select(reader, folds=[fold])) == 0:
            raise ConfigError(f"folds: fold {fold} has no rows to validate on in {config.store}")
        for stage in stages:
            if len(stage.val_rows) == 0:
                raise ConfigError(f"fold {fold} {stage.name}: no rows to validate on (stage2_val_min_votes "
                                  f"{config.stage2_val_min_votes})")
            rows = len(epoch_rows(config, reader, fold, stage, 0))
            if rows < config.batch_size:
                raise ConfigError(f"fold {fold} {stage.name}: {rows} training rows, fewer than one batch "
                                  f"(batch_size {config.batch_size})")
