"""A plug-in model kind that takes a plug-in input: `features_mlp` declares `inputs=("features",)`, the
role of tests/plugins/feature_kind.py's array, and gets that array's rows as `forward(features=...)`
and their shape as its planned argument `features_shape`. It writes one line to $HMS_PLUGIN_LOG per
forward pass."""

import os

import torch
from torch import nn

from hms_train.model.kinds import register_model


class FeaturesMLP(nn.Module):
    def __init__(self, n_features: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(n_features), nn.Linear(n_features, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if os.environ.get("HMS_PLUGIN_LOG"):
            with open(os.environ["HMS_PLUGIN_LOG"], "a") as f:
                f.write(f"features_mlp forward {tuple(features.shape)} {features.dtype}\n")
        return self.body(features)


@register_model("features_mlp", inputs=("features",))
def features_mlp(features_shape, hidden: int = 16) -> FeaturesMLP:
    """`features_shape` is planned (the array's per-row shape); `hidden` is a setting (`[model] hidden`)."""
    (n_features,) = features_shape
    return FeaturesMLP(n_features, hidden)
