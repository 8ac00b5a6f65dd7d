"""What a stage trains with, built in one place for the loop and for `bench --train`: the model (on its
device, in its memory format) and the optimizer, learning-rate schedule and EMA of a stage, so that the
benchmark times the optimizer the recipe trains with."""

from __future__ import annotations

from dataclasses import dataclass

import timm.optim
import timm.utils
import torch

from hms_train.run.inputs import InputPlan
from hms_train.run.config import TrainConfig
from hms_train.run.schedule import make_scheduler


@dataclass
class TrainingParts:
    """A stage's trainable objects: the model, its optimizer, the schedule and the EMA (None: off)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object  # a timm scheduler (step_update per step, step per epoch)
    ema: timm.utils.ModelEmaV3 | None


def build_model(inputs: InputPlan, device: torch.device) -> torch.nn.Module:
    """A new model of the plan's spec on `device`, channels-last where the config asks and it takes an image."""
    model = inputs.build_model().to(device)
    if inputs.config.channels_last and inputs.takes_image:
        model = model.to(memory_format=torch.channels_last)
    return model


def training_parts(config: TrainConfig, model: torch.nn.Module, lr: float, schedule_epochs: int,
                   steps_per_epoch: int, with_ema: bool = True) -> TrainingParts:
    """The recipe's optimizer (timm's, weight decay on biases and norms only with `weight_decay_all`), its
    schedule over `schedule_epochs` epochs of `steps_per_epoch` steps, and its EMA (not `with_ema`: none,
    for a benchmark, which would only pay for the copy), for `model`."""
    betas = {"betas": (config.adam_beta1, 0.999)} if config.optimizer == "adamw" else {}  # the timm B1's (0.5, 0.999)
    optimizer = timm.optim.create_optimizer_v2(model, opt=config.optimizer, lr=lr, weight_decay=config.weight_decay,
                                               filter_bias_and_bn=not config.weight_decay_all, **betas)
    scheduler = make_scheduler(config, optimizer, lr, schedule_epochs, steps_per_epoch)
    ema = (timm.utils.ModelEmaV3(model, decay=config.ema_decay, use_warmup=config.ema_warmup,
                                 update_after_step=config.ema_update_after_step)
           if config.ema_decay > 0 and with_ema else None)
    return TrainingParts(model, optimizer, scheduler, ema)
