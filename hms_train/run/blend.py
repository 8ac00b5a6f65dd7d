"""Blends of runs: the weighted mean of their probabilities, with weights learned or fixed.

The 3rd place learned its weights on out-of-fold predictions: here learned weights are non-negative,
sum to 1 and minimise the Kaggle metric of the weighted mean of the runs' out-of-fold probabilities, over
the label rows every run predicted (scipy's SLSQP on the simplex, with the analytic gradient). The seed
solution fixed its weights by hand (`SEED_BLEND`); fixed weights are scored on the same rows, beside the
learned ones. Runs trained on different row tables (hms_train.data.tables) are compared on the rows their
out-of-fold predictions share. `hms-train predict --blend blend.json` applies the chosen weights to the
test set.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy.optimize import minimize

from hms_prep.domain import TARGET_COLUMNS, VOTE_COLUMNS
from hms_prep.store.labels import live_rows, read_labels
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
    weights_from: str = "learned"  # "learned" on those rows, or "fixed" (given: `hms-train blend --weights`)

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
    run_rows: tuple[int, ...]  # how many rows each run predicted (the shared ones and its own)


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
    shared = np.flatnonzero(live_rows(labels))  # a row dropped from train.csv since a run is not scored
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
    run_rows = tuple(table.num_rows for table in tables)
    return SharedPredictions(np.stack(probs), targets, votes, run_rows), url


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


def fixed_weights(weights: list[float] | None, count: int) -> np.ndarray:
    """Given run weights divided by their sum (None: equal): the weighted mean of probabilities, as the seed
    computed it (its weights sum to 1, or are divided by their sum: see `SEED_BLEND`). The one check of run
    weights, for blend, predict, pseudo-label and export."""
    w = np.ones(count) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (count,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"--weights needs {count} non-negative values (one per run) with a positive sum, got {weights}")
    return w / w.sum()


def mixture(weights: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The weighted mean of the runs' probabilities (K, N, 6), rows renormalised (float32 files)."""
    mixed = np.tensordot(weights, probs, axes=1)
    return mixed / mixed.sum(1, keepdims=True)


def blend_runs(runs: list[Path], store: str | None = None, weights: list[float] | None = None,
               ) -> tuple[Blend, list[dict]]:
    """Learn the blend, and score `weights` (fixed) beside it when given; returns the chosen blend (the
    fixed one when given) and a score table on the shared rows: each run, then "blend (fixed)",
    "blend (learned)" and the training prior, each a `cv_report` plus its "name", "rows" (the rows it
    predicted), "weight" (learned) and "fixed_weight" (NaN where there is none)."""
    data, url = shared_predictions(runs, store)
    blends = {"learned": blend_weights(data.probs, data.targets)}
    if weights is not None:
        blends = {"fixed": fixed_weights(weights, len(runs)), **blends}  # first: the chosen one
    shared, nan = len(data.targets), float("nan")

    def scored(name: str, rows: int, weight: float, fixed_weight: float, probs: np.ndarray) -> dict:
        return {"name": name, "rows": rows, "weight": float(weight), "fixed_weight": float(fixed_weight),
                **cv_report(data.targets, probs, data.votes)}

    fixed = blends.get("fixed", np.full(len(runs), nan))
    table = [scored(str(run), count, w, f, p)
             for run, count, w, f, p in zip(runs, data.run_rows, blends["learned"], fixed, data.probs)]
    for how, w in blends.items():
        table.append(scored(f"blend ({how})", shared, 1.0 if how == "learned" else nan,
                            1.0 if how == "fixed" else nan, mixture(w, data.probs)))
    prior = np.repeat(data.targets.mean(0, keepdims=True), shared, 0)
    table.append(scored("prior (mean target)", shared, nan, nan, prior))
    chosen, score = next(iter(blends)), table[len(runs)]
    blend = Blend(runs=[str(r) for r in runs], weights=[float(w) for w in blends[chosen]], store=url, rows=shared,
                  kl=score["kl"], kl_10plus=score["kl_10plus"], weights_from=chosen)
    return blend, table


# --- the seed solution's own blend ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedBlend:
    """One weighted mean of probabilities in the seed's final submission: its members (a model group, a
    fold model, or another SeedBlend) with their weights, and the file that computes it.

    Every level averages softmax probabilities, never logits, and its weights either sum to 1 or are
    divided by their sum, so a member's share is its weight over the level's sum (`leaf_weights`). Inside
    a Richard group the fold models are averaged equally (HMS_Richard_LB31 cell 8: `preds / len(model)`).
    """

    name: str
    source: str
    members: tuple[tuple[str | SeedBlend, float], ...]

    def leaf_weights(self) -> dict[str, float]:
        """Each model group's or model's share of the final probabilities (they sum to 1)."""
        total = sum(weight for _, weight in self.members)
        shares: dict[str, float] = {}
        for member, weight in self.members:
            inner = member.leaf_weights() if isinstance(member, SeedBlend) else {member: 1.0}
            for name, share in inner.items():
                shares[name] = shares.get(name, 0.0) + share * weight / total
        return shares


# Ensemble_Notebook/ of RichardLiu083/Kaggle-HMS-Harmful-Brain-Activity-Classification @ 2223b40.
RICHARD_BLEND = SeedBlend(
    "richard", "Ensemble_Notebook/HMS_Richard_LB31.ipynb cell 4 'model_weight'; cell 9: pred += prob * weight",
    (("effb0-lb33", 0.1), ("effb0-kd-lb32", 0.1), ("cvnxt-kd-lb32", 0.1), ("effv2s-kd-lb31", 0.2), ("effb0-1", 0.5)),
)
DAVID_BLEND = SeedBlend(
    "david", "Ensemble_Notebook/HMS_David_LB31.ipynb cell 12 model_weights = [1.2, 1.2, 1.2, 1, 1, 1]; "
             "cell 13: pred_m / sum(model_weights)",
    (("efficientb0-wo-pl/f0", 1.2), ("efficientb0-wo-pl/f2", 1.2), ("efficientb0-wo-pl/f3", 1.2),
     ("mobilenetv3/f0", 1.0), ("mobilenetv3/f2", 1.0), ("mobilenetv3/f3", 1.0)),
)
# The public half (docs/recipes.md, "The seed's public half"): leaves named by the recipes that stand for them.
LB31_BLEND = SeedBlend(
    "lb31", "Ensemble_Notebook/HMS_LB31.ipynb cell 25: np.mean(preds) over the 5 fold models", (("public_lb31_b0", 1.0),),
)
FEATURES_HEAD_BLEND = SeedBlend(
    "features-head", "Ensemble_Notebook/HMS_balance.py: LBs = [0.81, 0.79, 0.81, 0.77, 0.79, 0.78, 0.76] (K|E|R|KE|KR|ER|"
                     "KER); weights = (1 - LBs) / sum; np.average(pred, weights=weights), then the mean over 5 folds",
    (("public_fh_k", 0.19), ("public_fh_e", 0.21), ("public_fh_r", 0.19), ("public_fh_ke", 0.23),
     ("public_fh_kr", 0.21), ("public_fh_er", 0.22), ("public_fh_ker", 0.24)),
)
TIMM_BLEND = SeedBlend(
    "timm", "Ensemble_Notebook/HMS_balance.py Model 3: np.mean over 5 B0, 5 B1 and 5 B1 (own spectrograms) models",
    (("public_timm_b0", 5.0), ("public_timm_b1", 5.0), ("public_timm_b1_eeg", 5.0)),
)
BALANCE_BLEND = SeedBlend(
    "balance", "Ensemble_Notebook/HMS_balance.py: predss_1 * 0.334 + predss_2 * 0.333 + predss_3 * 0.333",
    (("public_resnet1d_gru", 0.334), (FEATURES_HEAD_BLEND, 0.333), (TIMM_BLEND, 0.333)),
)
SEED_BLEND = SeedBlend(
    "final", "hms-ensemble.ipynb cell 2: pred_1*0.25 + pred_2*0.25 + pred_3*0.25 + pred_4*0.25",
    ((RICHARD_BLEND, 0.25), (DAVID_BLEND, 0.25), (LB31_BLEND, 0.25), (BALANCE_BLEND, 0.25)),
)
