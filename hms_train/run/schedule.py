"""A stage's learning-rate schedule (a timm scheduler), and the learning rate it gives each epoch:
what the loop steps and what `hms-train plan` prints come from the same function."""

from __future__ import annotations

import timm.scheduler
import torch

from hms_train.run.config import TrainConfig


def make_scheduler(config: TrainConfig, optimizer, lr: float, epochs: int, steps_per_epoch: int):
    """Counted in steps or epochs (`schedule_unit`): warm-up from lr * lr_min_factor, then a cosine down
    to lr * lr_min_factor, constant, or a step down by `step_factor` every `step_every_epochs` epochs."""
    per_epoch = config.schedule_unit == "epoch"
    unit = 1 if per_epoch else steps_per_epoch
    warmup = int(config.warmup_epochs * unit)
    lr_min = lr * config.lr_min_factor
    length = max(1, epochs * unit)
    if config.schedule == "constant":
        return timm.scheduler.StepLRScheduler(optimizer, decay_t=length, decay_rate=1.0, warmup_t=warmup,
                                              warmup_lr_init=lr_min, t_in_epochs=per_epoch)
    if config.schedule == "step":
        return timm.scheduler.StepLRScheduler(optimizer, decay_t=config.step_every_epochs * unit,
                                              decay_rate=config.step_factor, warmup_t=warmup,
                                              warmup_lr_init=lr_min, t_in_epochs=per_epoch)
    if config.cosine_cycle_steps:  # CosineAnnealingWarmRestarts(T_0) stepped per batch: a cosine every T_0 steps
        cycles = -(-length // config.cosine_cycle_steps)
        return timm.scheduler.CosineLRScheduler(optimizer, t_initial=config.cosine_cycle_steps, lr_min=lr_min,
                                                cycle_limit=cycles + 1, warmup_t=warmup, warmup_lr_init=lr_min,
                                                t_in_epochs=False)
    return timm.scheduler.CosineLRScheduler(optimizer, t_initial=length, lr_min=lr_min, warmup_t=warmup,
                                            warmup_lr_init=lr_min, t_in_epochs=per_epoch)


def epoch_learning_rates(config: TrainConfig, lr: float, epochs: int, steps_per_epoch: int) -> list[float]:
    """The learning rate at the first step of each epoch, as the loop's scheduler sets it (the loop calls
    `step_update(step)` after every step and `step(epoch)` after every epoch)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make_scheduler(config, optimizer, lr, epochs, steps_per_epoch)
    rates, step = [], 0
    for epoch in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        step += steps_per_epoch
        scheduler.step_update(step)
        scheduler.step(epoch + 1)
    return rates


def describe_rates(rates) -> str:
    """Learning rates per epoch in words, runs of equal ones once: "3.00e-04 x 25", "2.00e-04, 1.98e-04"."""
    import itertools

    runs = [(text, len(list(group))) for text, group in itertools.groupby(f"{lr:.2e}" for lr in rates)]
    return ", ".join(text if count == 1 else f"{text} x {count}" for text, count in runs)
