"""The training loss: KL divergence from the expert vote distribution to the predicted one."""

from __future__ import annotations

import torch
import torch.nn.functional as F

VOTE_WEIGHTINGS = ("none", "linear", "log")


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


def kl_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    votes: torch.Tensor | None = None,
    mse_weight: float = 0.0,
    vote_weighting: str = "none",
) -> torch.Tensor:
    """Mean over the batch of KL(targets || softmax(logits)) [+ mse_weight * MSE(softmax, targets)].

    logits (B, 6) raw model outputs; targets (B, 6) vote distributions (rows sum to 1, zeros allowed:
    they contribute 0); votes (B,) total votes per row, needed only when vote_weighting is not "none".
    The MSE term is the mean over the 6 classes per sample, like the seed's nn.MSELoss on softmax.
    Computed in float32 whatever the autocast dtype of the logits.
    """
    log_probs = F.log_softmax(logits.float(), dim=1)
    targets = targets.float()
    per_sample = F.kl_div(log_probs, targets, reduction="none").sum(dim=1)
    if mse_weight:
        per_sample = per_sample + mse_weight * (log_probs.exp() - targets).pow(2).mean(dim=1)
    weights = vote_weights(votes, vote_weighting)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device)
    return per_sample.mean()
