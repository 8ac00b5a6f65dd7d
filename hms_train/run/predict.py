"""Ensembles of trained runs: test-set submissions and pseudo-labels from out-of-fold predictions."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from hms_train.data.reader import Selection, StoreReader
from hms_train.run.blend import fixed_weights
from hms_train.run.checkpoint import fold_checkpoints, load_fold_model
from hms_train.run.config import TrainConfig
from hms_train.run.forward import predict_probabilities, resolve_device
from hms_train.run.metric import VOTE_COLUMNS
from hms_train.run.inputs import plan_inputs

log = logging.getLogger("hms_train")


def predict_submission(
    store: str, runs: list[Path], out: Path, weights: list[float] | None = None,
    device: str = "auto", tta_hflip: bool = False, say=log.warning,
) -> pa.Table:
    """Average every fold model of each run (runs weighted), rows in test.csv order, rows sum to 1.

    One prediction per eeg_id, so the store must have one row per eeg_id (a test store); a store with
    several rows for an eeg_id (a train store) is refused rather than written with duplicate eeg_ids.
    A store with chunks not done is refused (the reader). A row that failed to build gets the uniform
    1/6, and `say` gets one line counting them; when no row is usable, nothing is written (ValueError).
    """
    w = fixed_weights(weights, len(runs))
    torch_device = resolve_device(device)
    models = {run: [load_fold_model(path, torch_device) for path in fold_checkpoints(run)] for run in runs}
    readers: dict[tuple[str, ...], StoreReader] = {}  # one per set of inputs, shared by the runs using it
    blend, warned = None, set()
    for run, run_weight in zip(runs, w):
        probs = None
        for fold in models[run]:
            inputs = tuple(fold.config.inputs)
            if inputs not in readers:
                readers[inputs] = _test_reader(store, fold.config)
            reader = readers[inputs]
            plan = plan_inputs(dataclasses.replace(fold.config, store=store), reader.descriptions)
            rows = reader.select(Selection(only_ok=True))
            if len(rows) == 0:
                raise ValueError(f"{store}: none of its {reader.n_rows} rows was built ok for the inputs "
                                 f"{', '.join(inputs)} (hms-prep info lists the failures); no submission written")
            if probs is None:
                probs = np.zeros((reader.n_rows, 6), dtype=np.float64)
            probs[rows] += predict_probabilities(fold.model, reader, rows, plan, torch_device, tta_hflip=tta_hflip)
        probs[rows] /= len(models[run])
        failed = np.setdiff1d(np.flatnonzero(reader.live), rows)
        probs[failed] = 1 / 6  # a test row whose EEG could not be read gets the uniform guess
        if len(failed) and inputs not in warned:
            warned.add(inputs)
            say(f"{run}: {len(failed)} of {int(reader.live.sum())} test rows failed to build (hms-prep info lists why); "
                "they are predicted as the uniform 1/6")
        blend = run_weight * probs if blend is None else blend + run_weight * probs
    live = np.flatnonzero(reader.live)  # a dropped row's eeg_id has left test.csv: never predicted
    order = live[np.argsort(reader.column("source_index")[live])]  # back to test.csv order
    blend = blend[order] / blend[order].sum(1, keepdims=True)
    table = pa.table({"eeg_id": pa.array(reader.column("eeg_id")[order]),
                      **{c: pa.array(blend[:, j]) for j, c in enumerate(VOTE_COLUMNS)}})
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:  # an unquoted header, exactly like Kaggle's sample_submission.csv
        f.write((",".join(table.column_names) + "\n").encode())
        pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False))
    return table


def _test_reader(store: str, config: TrainConfig) -> StoreReader:
    """A reader of `store` for a model's inputs; refuses a store with several rows per eeg_id."""
    from hms_prep.store.arrays import data_array_names
    from hms_prep.store.layout import open_store

    group, _ = open_store(store)
    present = data_array_names(group)  # surveys every array's metadata: once
    missing = [name for name in config.inputs if name not in present]
    if missing:
        raise ValueError(f"{store}: the model reads {missing}, which the store lacks; it has {present} "
                         "(build them with hms-prep build --split test and the train store's options)")
    reader = StoreReader(store, config.inputs, threads=config.reader_threads)
    eeg_ids = reader.column("eeg_id")
    unique = len(np.unique(eeg_ids))
    if unique != len(eeg_ids):
        raise ValueError(f"{store}: {len(eeg_ids)} rows for {unique} eeg_ids; a submission has one row per "
                         f"eeg_id, so predict needs a test store (hms-prep build --split test)")
    return reader


def pseudo_labels(
    runs: list[Path], store: str, out: Path, min_votes: int | None = 10, weights: list[float] | None = None
) -> pa.Table:
    """The runs' out-of-fold predictions averaged per label row, for the rows of `store` with fewer
    than `min_votes` votes (the targets a stage's pseudo-labels replace), or for every row the runs
    predicted when `min_votes` is None (a teacher's targets, for distillation)."""
    from hms_prep.store.labels import live_rows, read_labels

    labels = read_labels(store)
    votes = np.asarray(labels.column("total_votes"))
    chosen = (votes < min_votes if min_votes is not None else np.ones(len(votes), dtype=bool)) & live_rows(labels)
    low_vote = set(np.asarray(labels.column("label_id"))[chosen].tolist())
    w = fixed_weights(weights, len(runs))
    merged: dict[int, np.ndarray] = {}
    seen: dict[int, float] = {}
    for run, run_weight in zip(runs, w):
        path = Path(run) / "oof.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{run}: no oof.parquet (train the run first)")
        table = pq.read_table(path)
        probs = np.stack([table.column(c).to_numpy() for c in VOTE_COLUMNS], 1)
        for label_id, p in zip(table.column("label_id").to_pylist(), probs):
            if label_id not in low_vote:
                continue
            merged[label_id] = merged.get(label_id, 0) + run_weight * p
            seen[label_id] = seen.get(label_id, 0) + run_weight
    if not merged:
        what = f"row with fewer than {min_votes} votes" if min_votes is not None else "row of the store"
        raise ValueError(f"the runs' out-of-fold predictions cover no {what}")
    label_ids = np.array(sorted(merged), dtype=np.int64)
    probs = np.stack([merged[l] / seen[l] for l in label_ids])
    probs /= probs.sum(1, keepdims=True)
    table = pa.table({"label_id": pa.array(label_ids), **{c: pa.array(probs[:, j]) for j, c in enumerate(VOTE_COLUMNS)}})
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return table
