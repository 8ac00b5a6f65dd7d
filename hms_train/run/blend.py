"""A learned blend of runs: non-negative weights summing to 1 that minimise the out-of-fold KL.

The seed solution weighted its model groups by hand (.1/.1/.1/.2/.5); the 3rd place learned its weights
on out-of-fold predictions. Here the weights minimise the Kaggle metric of the weighted mean of the runs'
out-of-fold probabilities, over the label rows every run predicted (scipy's SLSQP on the simplex, with
the analytic gradient). `hms-train predict --blend blend.json` applies them to the test set.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy.optimize import minimize

from hms_prep.domain import TARGET_COLUMNS, VOTE_COLUMNS
from hms_prep.store.format import read_labels
from hms_train.run.compare import OOF_FILE, run_file, run_store
from hms_train.run.metric import EPSILON, cv_report


@dataclass(frozen=True)
class Blend:
    """What blend.json holds: the runs, their weights, and the scores that chose them."""

    runs: list[str]
    weights: list[float]
    store: str
    rows: int  # label rows shared by every run's out-of-fold predictions
    kl: float
    kl_10plus: float

    def save(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Blend:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such blend file (write one with hms-train blend)")
        try:
            blend = cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path}: not a blend file written by hms-train blend ({err})") from None
        if len(blend.runs) != len(blend.weights):
            raise ValueError(f"{path}: {len(blend.runs)} runs but {len(blend.weights)} weights")
        return blend


@dataclass(frozen=True)
class SharedPredictions:
    """The runs' out-of-fold probabilities on the rows they all predicted, with those rows' truth."""

    probs: np.ndarray  # (runs, rows, 6)
    targets: np.ndarray  # (rows, 6)
    votes: np.ndarray  # (rows,)


def shared_predictions(runs: list[Path], store: str | None = None) -> tuple[SharedPredictions, str]:
    """Load every run's oof.parquet and keep the label rows present in all of them (store order)."""
    runs = [Path(run) for run in runs]
    if len(runs) < 2:
        raise ValueError(f"a blend needs at least two runs, got {len(runs)}")
    tables = [pq.read_table(run_file(run, OOF_FILE)) for run in runs]
    url = store or run_store(runs[0])
    labels = read_labels(url)
    if "total_votes" not in labels.column_names:
        raise ValueError(f"{url} has no votes (a test store?); give the train store with --store")
    shared = np.arange(labels.num_rows)
    for run, table in zip(runs, tables):
        rows = table.column("row").to_numpy()
        if rows.size and (rows.max() >= labels.num_rows or not np.array_equal(
                labels.column("label_id").to_numpy()[rows], table.column("label_id").to_numpy())):
            raise ValueError(f"{run}: {OOF_FILE} does not belong to {url}'s rows; wrong --store?")
        shared = np.intersect1d(shared, rows)
    if not shared.size:
        raise ValueError("the runs' out-of-fold predictions share no row; were they trained on other folds?")
    probs = []
    for table in tables:
        position = np.empty(labels.num_rows, dtype=np.int64)
        position[table.column("row").to_numpy()] = np.arange(table.num_rows)
        by_row = np.stack([table.column(c).to_numpy() for c in VOTE_COLUMNS], 1).astype(np.float64)
        probs.append(by_row[position[shared]])
    targets = np.stack([labels.column(c).to_numpy()[shared] for c in TARGET_COLUMNS], 1).astype(np.float64)
    votes = labels.column("total_votes").to_numpy()[shared]
    return SharedPredictions(np.stack(probs), targets, votes), url


def blend_weights(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Weights on the simplex minimising mean KL(targets || sum_k w_k probs[k]); probs (K, N, 6)."""
    count = probs.shape[0]
    positive = targets > 0

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        mixed = np.clip(np.tensordot(w, probs, axes=1), EPSILON, 1 - EPSILON)
        loss = np.where(positive, targets * np.log(np.where(positive, targets, 1.0) / mixed), 0.0)
        grad = -np.einsum("nc,knc->k", targets / mixed, probs) / len(targets)
        return float(loss.sum(1).mean()), grad

    start = np.full(count, 1.0 / count)
    result = minimize(objective, start, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * count,
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}])
    weights = np.clip(result.x, 0.0, None)
    candidates = [weights / weights.sum(), *np.eye(count)]  # never worse than the best single run
    return min(candidates, key=lambda w: objective(w)[0])


def blend_runs(runs: list[Path], store: str | None = None) -> tuple[Blend, list[dict]]:
    """Learn the blend; returns it and a score table (each run, the blend, the training prior), each row
    a `cv_report` on the shared rows plus its "name" and "weight"."""
    data, url = shared_predictions(runs, store)
    weights = blend_weights(data.probs, data.targets)
    table = [{"name": str(run), "weight": float(w), **cv_report(data.targets, p, data.votes)}
             for run, w, p in zip(runs, weights, data.probs)]
    mixed = np.tensordot(weights, data.probs, axes=1)
    blended = cv_report(data.targets, mixed / mixed.sum(1, keepdims=True), data.votes)
    table.append({"name": "blend", "weight": 1.0, **blended})
    prior = np.repeat(data.targets.mean(0, keepdims=True), len(data.targets), 0)
    table.append({"name": "prior (mean target)", "weight": float("nan"), **cv_report(data.targets, prior, data.votes)})
    blend = Blend(runs=[str(r) for r in runs], weights=[float(w) for w in weights], store=url,
                  rows=int(len(data.targets)), kl=blended["kl"], kl_10plus=blended["kl_10plus"])
    return blend, table

