"""A run, planned once: a config and a store in, everything the loop, the benchmark, predict and
`hms-train plan` need out, checked before any work. The plan is assembled from three modules by concern:

    inputs.py   plan_inputs(config, arrays) -> InputPlan   which arrays feed which model input (by role),
                                                           the image layout, the model spec; the checked
                                                           augmentations and the layout maps they need
    stages.py   fold_stages(...) -> [Stage]                per fold its stages: the row table's scope
                                                           (RowScope), training and validation rows, steps
    targets.py  stage_targets(...)                         each stage's targets: the table's, or a file's
                                                           (pseudo-labels, a teacher's predictions)
    plan.py     plan_run(config, reader) -> RunPlan        this file: all of them + the loss, checked whole

Nothing here names an array or a kind of the store: arrays are found by the names a recipe gives
(`inputs`, `[layout]`) and by the role their attributes declare (hms_prep.store.arrays.describe_arrays).
"""

from __future__ import annotations

from dataclasses import dataclass

from hms_train.data.reader import StoreReader
from hms_train.image.augment import AugmentConfig
from hms_train.model.losses import Loss
from hms_train.run.config import TrainConfig
from hms_train.run.config_values import ConfigError
from hms_train.run.inputs import InputPlan, check_augment, plan_inputs
from hms_train.run.stages import RowScope, Stage, epoch_rows, fold_stages
from hms_train.run.targets import stage_targets


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


def loss_of(config: TrainConfig) -> Loss:
    """The recipe's training loss (KL with its reduction, + MSE, + cross-entropy, vote weighting)."""
    return Loss(config.kl_reduction, config.kl_weight, config.mse_weight, config.ce_weight, config.vote_weighting)


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
