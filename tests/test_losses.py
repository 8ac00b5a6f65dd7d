"""The KL training loss (hms_train.model.losses) and the Kaggle metric with its CV report (hms_train.run.metric)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import rel_entr

from hms_train.model.losses import Loss
from hms_train.run.metric import CLASS_NAMES, cv_report, kaggle_kl


def kl_loss(logits, targets, votes=None, mse_weight=0.0, vote_weighting="none") -> torch.Tensor:
    """The default `Loss`: mean over the batch of KL(targets || softmax(logits)), summed over classes,
    [+ mse_weight * MSE(softmax, targets), the mean over the 6 classes per sample]."""
    return Loss(mse_weight=mse_weight, vote_weighting=vote_weighting)(logits, targets, votes)


def soft_targets(rows: int, seed: int) -> torch.Tensor:
    return torch.softmax(torch.randn(rows, 6, generator=torch.Generator().manual_seed(seed)), dim=1)


# ---------------------------------------------------------------- loss


def test_loss_is_zero_when_logits_match_targets():
    targets = soft_targets(5, seed=0)
    logits = torch.log(targets) + 3.0  # softmax ignores the shift
    assert kl_loss(logits, targets).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_loss(logits, targets, mse_weight=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_loss_is_positive_otherwise_and_matches_the_definition():
    targets = soft_targets(5, seed=0)
    logits = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    probs = torch.softmax(logits, dim=1)
    kl = (targets * torch.log(targets / probs)).sum(dim=1)
    mse = ((probs - targets) ** 2).mean(dim=1)
    assert kl_loss(logits, targets).item() > 0
    assert kl_loss(logits, targets).item() == pytest.approx(kl.mean().item(), rel=1e-5)
    assert kl_loss(logits, targets, mse_weight=2.0).item() == pytest.approx((kl + 2 * mse).mean().item(), rel=1e-5)


def test_loss_gradient_is_finite_with_zero_targets_and_half_logits():
    targets = torch.eye(6)[[0, 3, 5]]  # one-hot: most target entries are 0
    logits = torch.tensor([[30.0, -30, 0, 0, 0, 0], [0, 0, 0, -40, 0, 40], [1, 2, 3, 4, 5, 6]])
    logits = logits.half().requires_grad_()
    loss = kl_loss(logits, targets, mse_weight=1.0)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def per_sample_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.stack([kl_loss(logits[i : i + 1], targets[i : i + 1]) for i in range(len(logits))])


def test_linear_vote_weighting_scales_by_votes_over_twenty_capped_at_one():
    targets = soft_targets(3, seed=2)
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(3))
    votes = torch.tensor([5, 20, 40])
    expected = (per_sample_losses(logits, targets) * torch.tensor([0.25, 1.0, 1.0])).mean()
    weighted = kl_loss(logits, targets, votes=votes, vote_weighting="linear")
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-5)
    assert weighted.item() < kl_loss(logits, targets).item()  # low-vote row counts a quarter


def test_log_vote_weighting_is_normalised_by_its_mean():
    targets = soft_targets(2, seed=4)
    logits = torch.randn(2, 6, generator=torch.Generator().manual_seed(5))
    losses = per_sample_losses(logits, targets)
    votes = torch.tensor([1, 27])
    weights = torch.log(torch.tensor([2.0, 28.0]))
    weights = weights / weights.mean()
    weighted = kl_loss(logits, targets, votes=votes, vote_weighting="log")
    assert weighted.item() == pytest.approx((losses * weights).mean().item(), rel=1e-5)
    # equal votes give equal weights of 1: the unweighted loss
    same = kl_loss(logits, targets, votes=torch.tensor([7, 7]), vote_weighting="log")
    assert same.item() == pytest.approx(kl_loss(logits, targets).item(), rel=1e-6)


def test_vote_weighting_needs_votes_and_a_known_name():
    targets = soft_targets(2, seed=6)
    with pytest.raises(ValueError, match="needs the total votes"):
        kl_loss(torch.zeros(2, 6), targets, vote_weighting="linear")
    with pytest.raises(ValueError, match="unknown vote_weighting"):
        kl_loss(torch.zeros(2, 6), targets, votes=torch.ones(2), vote_weighting="sqrt")


# ---------------------------------------------------------------- metric


def random_distributions(rows: int, seed: int, zero_fraction: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.random((rows, 6)) * (rng.random((rows, 6)) >= zero_fraction)
    values[values.sum(axis=1) == 0, 0] = 1.0
    return values / values.sum(axis=1, keepdims=True)


def test_perfect_prediction_scores_zero():
    targets = random_distributions(50, seed=0, zero_fraction=0.4)
    assert kaggle_kl(targets, targets) == pytest.approx(0.0, abs=1e-12)


def test_uniform_prediction_on_one_hot_scores_ln_six():
    targets = np.eye(6)[[0, 1, 2, 3, 4, 5, 2]]
    assert kaggle_kl(targets, np.full((7, 6), 1 / 6)) == pytest.approx(math.log(6), rel=1e-12)


def test_agrees_with_scipy_rel_entr_on_random_data():
    targets = random_distributions(200, seed=1, zero_fraction=0.5)
    predictions = random_distributions(200, seed=2)
    expected = rel_entr(targets, predictions).sum(axis=1).mean()
    assert kaggle_kl(targets, predictions) == pytest.approx(expected, rel=1e-12)


def test_zero_predictions_are_clipped_to_epsilon():
    targets = np.array([[0.5, 0.5, 0, 0, 0, 0]])
    predictions = np.array([[1.0, 0, 0, 0, 0, 0]])
    expected = 0.5 * math.log(0.5 / (1 - 1e-15)) + 0.5 * math.log(0.5 / 1e-15)
    assert kaggle_kl(targets, predictions) == pytest.approx(expected, rel=1e-12)


def test_examples_from_the_kaggle_metric_documentation():
    # Two-class and three-class examples with their published scores 0.216161... and 0.160531...
    ham = np.array([0, 1, 1, 0.0])
    spam_probs = np.array([0.9, 0.1, 0.2, 0.65])
    targets = np.zeros((4, 6))
    targets[:, 0], targets[:, 1] = ham, 1 - ham
    predictions = np.zeros((4, 6))
    predictions[:, 0], predictions[:, 1] = 1 - spam_probs, spam_probs
    assert kaggle_kl(targets, predictions) == pytest.approx(0.216161, abs=1e-6)
    targets = np.zeros((3, 6))
    targets[:, :3] = [[0, 0.1, 0.9], [0.5, 0.5, 0], [0.5, 0.5, 0]]
    predictions = np.zeros((3, 6))
    predictions[:, :3] = [[0.2, 0.1, 0.7], [0.3, 0.5, 0.2], [0.5, 0.5, 0]]
    assert kaggle_kl(targets, predictions) == pytest.approx(0.160531, abs=1e-6)


def test_invalid_predictions_are_refused():
    targets = random_distributions(3, seed=3)
    with pytest.raises(ValueError, match="do not add to one"):
        kaggle_kl(targets, np.full((3, 6), 0.2))
    with pytest.raises(ValueError, match="shape"):
        kaggle_kl(targets, np.full((3, 5), 0.2))


def test_cv_report_splits_the_high_vote_rows():
    targets = random_distributions(6, seed=4, zero_fraction=0.3)
    predictions = random_distributions(6, seed=5)
    votes = np.array([3, 10, 15, 1, 28, 9])
    report = cv_report(targets, predictions, votes)
    high = votes >= 10
    assert report["n"] == 6 and report["n_10plus"] == 3
    assert report["kl"] == pytest.approx(kaggle_kl(targets, predictions))
    assert report["kl_10plus"] == pytest.approx(kaggle_kl(targets[high], predictions[high]))
    assert report["kl_10plus"] != pytest.approx(report["kl"])
    assert tuple(report["per_class"]) == CLASS_NAMES
    assert sum(report["per_class"].values()) == pytest.approx(report["kl"])
    seizure_terms = rel_entr(targets[:, 0], np.clip(predictions[:, 0], 1e-15, 1))
    assert report["per_class"]["Seizure"] == pytest.approx(seizure_terms.mean())


def test_cv_report_without_high_vote_rows():
    targets = random_distributions(4, seed=6)
    report = cv_report(targets, targets, np.array([1, 2, 3, 9]))
    assert report["n_10plus"] == 0 and math.isnan(report["kl_10plus"])
    assert report["kl"] == pytest.approx(0.0, abs=1e-12)
