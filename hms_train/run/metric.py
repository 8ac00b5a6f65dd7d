"""The competition metric and the cross-validation report built on it.

`kaggle_kl` follows Kaggle's public "kullback-leibler-divergence" metric as scored in HMS (micro average,
epsilon 1e-15): both tables are checked to hold valid probabilities (values in [0, 1], rows summing to 1
within np.allclose), the predictions are clipped to [1e-15, 1 - 1e-15] WITHOUT renormalising the rows,
each term is y * ln(y / p) where y > 0 and 0 where y == 0 (scipy's rel_entr convention), and the score
is the mean over rows of the per-row sums.
"""

from __future__ import annotations

import numpy as np

from hms_prep.domain import CLASSES as CLASS_NAMES
from hms_prep.domain import VOTE_COLUMNS  # noqa: F401 (submission, OOF and pseudo-label columns)
EPSILON = 1e-15
# Rows with at least this many votes are the clean, expert-like ones that top teams validated on (the
# "kl_10plus" of every report; checkpoint selection takes its threshold from the config: select_min_votes).
HIGH_VOTE_THRESHOLD = 10


def check_probabilities(table: np.ndarray, name: str) -> None:
    """Raise ValueError unless `table` is (N, 6) with values in [0, 1] and rows summing to 1 (Kaggle's check)."""
    if table.ndim != 2 or table.shape[1] != len(CLASS_NAMES):
        raise ValueError(f"{name} must have shape (N, {len(CLASS_NAMES)}), got {table.shape}")
    if not np.isfinite(table).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if table.min(initial=0.0) < 0 or table.max(initial=0.0) > 1:
        raise ValueError(f"all values in {name} must lie in [0, 1]")
    if not np.allclose(table.sum(axis=1), 1):
        raise ValueError(f"rows of {name} do not add to one")


def kl_terms(targets: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """(N, 6) per-class terms y * ln(y / p) of the Kaggle metric, float64; their row sums are the KL."""
    targets = np.asarray(targets, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    check_probabilities(targets, "targets")
    check_probabilities(predictions, "predictions")
    if targets.shape != predictions.shape:
        raise ValueError(f"targets {targets.shape} and predictions {predictions.shape} differ in shape")
    clipped = np.clip(predictions, EPSILON, 1 - EPSILON)
    positive = targets > 0
    safe_targets = np.where(positive, targets, 1.0)  # avoids log(0) in the branch np.where discards
    return np.where(positive, targets * np.log(safe_targets / clipped), 0.0)


def kaggle_kl(targets: np.ndarray, predictions: np.ndarray) -> float:
    """The competition score: mean over rows of KL(targets || predictions), both (N, 6) probabilities."""
    return float(kl_terms(targets, predictions).sum(axis=1).mean())


def cv_report(targets: np.ndarray, predictions: np.ndarray, votes: np.ndarray) -> dict:
    """Validation summary: {"kl", "kl_10plus", "n", "n_10plus", "per_class"}.

    "kl" over all rows; "kl_10plus" over rows with votes >= 10 (NaN when there are none); "per_class"
    maps each class name to the mean over all rows of its term, so the six values sum to "kl".
    votes: (N,) total votes per row.
    """
    terms = kl_terms(targets, predictions)
    high_vote = np.asarray(votes) >= HIGH_VOTE_THRESHOLD
    row_kl = terms.sum(axis=1)
    return {
        "kl": float(row_kl.mean()),
        "kl_10plus": float(row_kl[high_vote].mean()) if high_vote.any() else float("nan"),
        "n": int(len(row_kl)),
        "n_10plus": int(high_vote.sum()),
        "per_class": {name: float(value) for name, value in zip(CLASS_NAMES, terms.mean(axis=0))},
    }


def selection_kl(targets: np.ndarray, predictions: np.ndarray, votes: np.ndarray, min_votes: int) -> float:
    """The checkpoint-selection score: the KL over the rows with at least `min_votes` total votes (the
    "golden" subset), or over all rows when none has that many (0 selects on all rows)."""
    golden = np.asarray(votes) >= min_votes
    if not golden.any():
        golden[:] = True
    return kaggle_kl(np.asarray(targets)[golden], np.asarray(predictions)[golden])
