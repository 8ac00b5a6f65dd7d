"""One training step of a planned run: the loop's and the benchmark's (`hms-train bench --train`) alike.

    prepare(batch)   -> (inputs, targets, votes)   on the device: the image composed and augmented
    optimise(...)    -> loss                       forward (bf16 autocast on CUDA), loss, backward, clip, step
    step(batch)      =  optimise(*prepare(batch))

Nothing waits for the device: targets come from a device-side table indexed by the batch's rows, and the
loss is returned as a device tensor for the caller to sum.
"""

from __future__ import annotations

import torch

from hms_train.data.reader import to_device
from hms_train.image.augment import Augmenter
from hms_train.model.models import IMAGE
from hms_train.run.forward import autocast, model_inputs, run_model
from hms_train.run.plan import RunPlan


class TrainStep:
    def __init__(self, plan: RunPlan, model: torch.nn.Module, net: torch.nn.Module, optimizer,
                 augmenter: Augmenter, device: torch.device, targets: torch.Tensor | None = None):
        """`net` is what the step calls (`model` DDP-wrapped or compiled, or `model` itself); `targets`
        (rows, 6) on the device replaces the batch's own (a stage's pseudo-labels), None keeps them."""
        self.plan, self.model, self.net, self.optimizer = plan, model, net, optimizer
        self.augmenter, self.device, self.targets = augmenter, device, targets
        self.loss_fn = plan.loss

    def prepare(self, batch: dict[str, torch.Tensor]):
        batch = to_device(batch, self.device)
        inputs = model_inputs(batch, self.plan.inputs, train=True)
        targets = self.targets[batch["row"]] if self.targets is not None else batch["targets"]
        if IMAGE in inputs:
            inputs[IMAGE], targets = self.augmenter(inputs[IMAGE], targets, train=True)
        return inputs, targets, batch["votes"]

    def optimise(self, inputs: dict[str, torch.Tensor], targets: torch.Tensor, votes: torch.Tensor) -> torch.Tensor:
        config = self.plan.config
        with autocast(config, self.device):
            logits = run_model(self.net, inputs)
        loss = self.loss_fn(logits.float(), targets, votes)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.optimise(*self.prepare(batch))
