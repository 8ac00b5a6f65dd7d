"""The training loss: KL divergence from the expert vote distribution to the predicted one, with the
seed's companions (MSE on the softmax, soft-target cross-entropy) and optional per-row vote weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

VOTE_WEIGHTINGS = ("none", "linear", "log")
# "batchmean": KL summed over the 6 classes, mean over the batch (the metric's scale);
# "mean": torch's nn.KLDivLoss() default, divided by batch x 6 (the seed's: Richard's and David's code).
KL_REDUCTIONS = ("batchmean", "mean")
N_CLASSES = 6


def vote_weights(votes: torch.Tensor | None, vote_weighting: str) -> torch.Tensor | None:
    """Per-sample loss weights from total votes (B,), or None for "none".

    "linear": votes / 20 clipped to 1 (2nd place: rows with 20+ votes count fully).
    "log": log(votes + 1) divided by its batch mean (15th place), so the mean weight is 1.
    """
    if vote_weighting not in VOTE_WEIGHTINGS:
        raise ValueError(f"unknown vote_weighting {vote_weighting!r}; expected one of {VOTE_WEIGHTINGS}")
    if vote_weighting == "none":
        return None
    if votes is None:
        raise ValueError(f"vote_weighting={vote_weighting!r} needs the total votes per sample")
    votes = votes.float()
    if vote_weighting == "linear":
        return (votes / 20.0).clamp(max=1.0)
    log_votes = torch.log1p(votes)
    return log_votes / log_votes.mean()


@dataclass(frozen=True)
class Loss:
    """kl_weight * KL (reduced as `kl_reduction`) + mse_weight * MSE(softmax, targets)
    + ce_weight * soft-target cross-entropy, per sample, optionally vote-weighted, mean over the batch.

    Richard: KL(mean) + MSE (weights 1, 1); David: 2 CE + 2 KL(mean); the project's default: KL(batchmean).
    Each per-sample term matches torch's batch loss of the same name (nn.KLDivLoss, nn.MSELoss,
    nn.CrossEntropyLoss with probability targets) once averaged over the batch.
    """

    kl_reduction: str = "batchmean"
    kl_weight: float = 1.0
    mse_weight: float = 0.0
    ce_weight: float = 0.0
    vote_weighting: str = "none"

    def __post_init__(self):
        if self.kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"unknown kl_reduction {self.kl_reduction!r}; expected one of {KL_REDUCTIONS}")
        if self.vote_weighting not in VOTE_WEIGHTINGS:
            raise ValueError(f"unknown vote_weighting {self.vote_weighting!r}; expected one of {VOTE_WEIGHTINGS}")

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, votes: torch.Tensor | None = None) -> torch.Tensor:
        """logits (B, 6) raw model outputs; targets (B, 6) vote distributions (rows sum to 1, zeros allowed:
        they contribute 0); votes (B,) total votes per row, needed only with a vote weighting.
        Computed in float32 whatever the autocast dtype of the logits."""
        log_probs = F.log_softmax(logits.float(), dim=1)
        targets = targets.float()
        kl = F.kl_div(log_probs, targets, reduction="none").sum(dim=1)
        per_sample = self.kl_weight * (kl / N_CLASSES if self.kl_reduction == "mean" else kl)
        if self.mse_weight:
            per_sample = per_sample + self.mse_weight * (log_probs.exp() - targets).pow(2).mean(dim=1)
        if self.ce_weight:
            per_sample = per_sample + self.ce_weight * -(targets * log_probs).sum(dim=1)
        weights = vote_weights(votes, self.vote_weighting)
        if weights is not None:
            per_sample = per_sample * weights.to(per_sample.device)
        return per_sample.mean()
