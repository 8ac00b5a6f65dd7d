"""One training step of a planned run: the loop's and the benchmark's (`hms-train bench --train`) alike.

    prepare(batch)   -> (inputs, targets, votes)   on the device: the image composed and augmented
    optimise(...)    -> loss                       forward (bf16 autocast on CUDA), loss, backward, clip, step
    step(batch)      =  optimise(*prepare(batch))

Nothing waits for the device: targets and votes come from the plan's tables on the device (`RowLabels`),
indexed by the batch's rows (the one source of a row's labels: the reader's batches carry none), and the
loss is returned as a device tensor for the caller to sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hms_train.data.reader import to_device
from hms_train.image.augment import Augmenter
from hms_train.model.kinds import IMAGE
from hms_train.run.forward import autocast, model_inputs, run_model
from hms_train.run.plan import RunPlan


# torch.amp.GradScaler()'s defaults: the scale starts at 2^16 and doubles after 2000 steps without overflow
GRAD_SCALER_INIT_SCALE = 2.0**16
GRAD_SCALER_GROWTH_INTERVAL = 2000


def grad_scaler_scale(steps_done: int) -> float:
    """The scale a default GradScaler has after `steps_done` optimizer steps without an overflow (bf16 and
    float32 gradients here have none to halve it)."""
    return GRAD_SCALER_INIT_SCALE * 2.0 ** (steps_done // GRAD_SCALER_GROWTH_INTERVAL)


def clip_gradients(parameters, grad_clip: float, scaled: bool, steps_done: int) -> None:
    """Clip the gradients' total norm at `grad_clip` (0: not at all); `scaled`: as David's fp16 loop clipped
    them, scaled by a GradScaler (D/trainer.py: `scaler.scale(loss).backward()`, `clip_grad_norm_(...,
    max_norm=10.0)`, then `scaler.unscale_`): at grad_clip / scale on the unscaled gradients. At a scale of
    2^16 that limit is 1.5e-4, so it acts on nearly every step: each gradient enters the optimizer (Lion's
    momentum) normalised to that norm."""
    if not grad_clip:
        return
    limit = grad_clip / grad_scaler_scale(steps_done) if scaled else grad_clip
    torch.nn.utils.clip_grad_norm_(parameters, limit)


@dataclass(frozen=True, eq=False)
class RowLabels:
    """A planned run's labels by store row, on the device: `targets` (n_rows, 6), a stage's (the row table's,
    pseudo-labels or a teacher's applied: `Stage.targets`), and `votes` (n_rows,), the total votes of the line
    each target is read from (`RowScope.target_votes`: what the loss's vote weighting weighs)."""

    targets: torch.Tensor
    votes: torch.Tensor

    @classmethod
    def of(cls, targets: np.ndarray, votes: np.ndarray, device: torch.device) -> RowLabels:
        return cls(torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32)).to(device),
                   torch.from_numpy(np.ascontiguousarray(votes, dtype=np.float32)).to(device))


class TrainStep:
    def __init__(self, plan: RunPlan, model: torch.nn.Module, net: torch.nn.Module, optimizer,
                 augmenter: Augmenter, device: torch.device, labels: RowLabels, steps_done: int = 0):
        """`net` is what the step calls (`model` DDP-wrapped or compiled, or `model` itself); `labels`: the
        targets and votes the step trains on, by store row; `steps_done`: the optimizer's steps before this
        one (a GradScaler's scale grows with them)."""
        self.plan, self.model, self.net, self.optimizer = plan, model, net, optimizer
        self.augmenter, self.device, self.labels = augmenter, device, labels
        self.loss_fn = plan.loss
        self.steps_done = steps_done

    def prepare(self, batch: dict[str, torch.Tensor]):
        batch = to_device(batch, self.device)
        inputs = model_inputs(batch, self.plan.inputs, train=True)
        rows = batch["row"]
        targets, votes = self.labels.targets[rows], self.labels.votes[rows]
        if IMAGE in inputs:
            inputs[IMAGE], targets = self.augmenter(inputs[IMAGE], targets, train=True)
        return inputs, targets, votes

    def optimise(self, inputs: dict[str, torch.Tensor], targets: torch.Tensor, votes: torch.Tensor) -> torch.Tensor:
        config = self.plan.config
        with autocast(config, self.device):
            logits = run_model(self.net, inputs)
        loss = self.loss_fn(logits.float(), targets, votes)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(self.model.parameters(), config.grad_clip, config.grad_clip_scaled, self.steps_done)
        self.optimizer.step()
        self.steps_done += 1
        return loss.detach()

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.optimise(*self.prepare(batch))
