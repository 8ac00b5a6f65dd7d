"""Compare finished runs: their cross-validation scores from the out-of-fold predictions, and one
picture of their learning curves.

A run directory (written by `hms_train.run.train`) holds config.json (with the "store" it trained on),
oof.parquet (label_id, eeg_id, row, fold, total_votes and the six *_vote probabilities of every
validated row) and metrics.jsonl (one record per epoch). Scores are recomputed from the store's
targets with `cv_report`, so runs are judged by one rule whatever version of the trainer wrote them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hms_prep.domain import TARGET_COLUMNS
from hms_prep.store.labels import live_rows, read_labels
from hms_train.run.metric import VOTE_COLUMNS, cv_report
from hms_train.run.plots import plot_runs, read_metrics

OOF_FILE, CONFIG_FILE, METRICS_FILE = "oof.parquet", "config.json", "metrics.jsonl"


def compare_runs(runs: list[Path], store: str | None = None) -> list[dict]:
    """One `cv_report` per run plus "run" (the path as given), "store" and "folds", best first.

    Each run is scored on the rows of its oof.parquet against the targets of `store`, or of the store
    in its config.json when `store` is None. Sorted by KL on rows with >= 10 votes (runs without such
    rows last), then by KL over all rows. Raises FileNotFoundError for a run without oof.parquet or
    config.json, ValueError when the predictions do not belong to the store's rows.
    """
    runs = [Path(run) for run in runs]
    for run in runs:  # every run must be finished before any store is read
        run_file(run, OOF_FILE)
    labels_by_store: dict[str, pa.Table] = {}
    results = []
    for run in runs:
        url = store or run_store(run)
        if url not in labels_by_store:
            labels_by_store[url] = read_labels(url)
        results.append({"run": str(run), "store": url, **score_run(run, labels_by_store[url])})
    return sorted(results, key=_rank_key)


def run_store(run: Path) -> str:
    """The store a run trained on, from its config.json."""
    config = run_file(run, CONFIG_FILE)
    return json.loads(config.read_text())["store"]


def score_run(run: Path, labels: pa.Table) -> dict:
    """`cv_report` of the run's out-of-fold predictions against the store's labels.parquet table,
    plus the sorted list of folds the predictions cover."""
    if "total_votes" not in labels.column_names:
        raise ValueError(f"{run}: the store has no votes or targets (a test store?); give the train store with --store")
    oof = pq.read_table(run_file(run, OOF_FILE))
    rows = oof.column("row").to_numpy()
    if rows.min(initial=0) < 0 or rows.max(initial=-1) >= labels.num_rows:
        raise ValueError(f"{run}: {OOF_FILE} names rows outside the store's 0..{labels.num_rows - 1}; wrong --store?")
    store_ids = labels.column("label_id").to_numpy()[rows]
    if not np.array_equal(store_ids, oof.column("label_id").to_numpy()):
        raise ValueError(f"{run}: the label_ids of {OOF_FILE} differ from the store's rows; wrong --store?")
    scored = live_rows(labels)[rows]  # a row dropped from train.csv since the run is not scored
    rows = rows[scored]
    targets = np.stack([labels.column(c).to_numpy()[rows] for c in TARGET_COLUMNS], 1)
    predictions = np.stack([oof.column(c).to_numpy()[scored] for c in VOTE_COLUMNS], 1)
    votes = labels.column("total_votes").to_numpy()[rows]
    report = cv_report(targets, predictions, votes)
    report["folds"] = sorted(int(f) for f in set(oof.column("fold").to_numpy()[scored].tolist()))
    return report


def plot_learning_curves(runs: list[Path], out: Path) -> Path:
    """One PNG of the runs' learning curves (`plot_runs`), each run named by its path as given."""
    records = {str(run): read_metrics(run_file(Path(run), METRICS_FILE)) for run in runs}
    plot_runs(records, out)
    return Path(out)


def run_file(run: Path, name: str) -> Path:
    """`run`/`name` (OOF_FILE, CONFIG_FILE, ...); FileNotFoundError naming the run when it is missing."""
    path = run / name
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no {name} (not a run directory, or the run has not finished)")
    return path


def _rank_key(result: dict) -> tuple[float, float]:
    high_vote = result["kl_10plus"]
    return (math.inf if math.isnan(high_vote) else high_vote, result["kl"])
