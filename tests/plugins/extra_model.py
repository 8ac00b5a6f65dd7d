"""A plugin from outside the packages, as docs/architecture.md describes: importing it registers a model
kind and an augmentation, which a config then names (`plugins = ["extra_model"]`). Used by
tests/test_plugins.py; it writes one line to $HMS_PLUGIN_LOG whenever its pieces are used."""

import os
from dataclasses import dataclass

import torch
from torch import nn

from hms_train.image.augment import MIRROR_ROWS, Draws, register_augmentation
from hms_train.model.kinds import IMAGE, register_model


def _log(what: str) -> None:
    if os.environ.get("HMS_PLUGIN_LOG"):
        with open(os.environ["HMS_PLUGIN_LOG"], "a") as f:
            f.write(what + "\n")


class TinyConv(nn.Module):
    """A two-layer CNN: enough to train a step."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, channels, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(channels, 6))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _log("tiny_conv forward")
        return self.body(image)


@register_model("tiny_conv", inputs=(IMAGE,))
def tiny_conv(image_size, channels: int = 8, drop_rate: float = 0.0) -> TinyConv:
    """Its own setting, `channels`: a recipe's `[model] channels = 16`, or `--set model.channels=16`."""
    _log(f"tiny_conv channels={channels}")
    return TinyConv(channels)


@dataclass
class NegateSettings:
    p: float = 0.0  # off unless a config turns it on


@register_augmentation("negate", NegateSettings, order=45, image_only=False)
def negate(draws: Draws, images, targets, settings: NegateSettings):
    """Flip the sign of the chosen samples' images."""
    chosen = draws.chosen(settings.p)
    _log(f"negate {int(chosen.sum())} of {len(chosen)}")
    return torch.where(chosen[:, None, None, None], -images, images), targets


@dataclass
class MirrorSettings:
    p: float = 0.0


@register_augmentation("mirror_blend", MirrorSettings, order=46, image_only=True, needs=(MIRROR_ROWS,))
def mirror_blend(draws: Draws, images, targets, settings: MirrorSettings):
    """Average the chosen samples with their hemisphere mirror: a step that needs the layout's geometry,
    which the run plan hands it by what it declares (`needs`), not by its name."""
    rows = draws.geometry[MIRROR_ROWS]
    _log(f"mirror_blend rows {tuple(rows.shape)} of an image {tuple(images.shape[-2:])}")
    mirrored = images.index_select(-2, rows) if rows.ndim == 1 else torch.gather(images, -2, rows.expand_as(images))
    chosen = draws.chosen(settings.p)[:, None, None, None]
    return torch.where(chosen, (images + mirrored) / 2, images), targets
