"""The 2D nets' parts: timm backbones (the seed's exact variants, a conv head dropped, local or cached
pretrained weights, offline when the hub is unreachable) and their pooling (avg, GeM, attention).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import huggingface_hub.constants
import timm
import torch
from timm.layers import SelectAdaptivePool2d
from timm.models import adapt_input_conv, load_state_dict
from torch import nn
POOLS = ("avg", "gem", "attention")
# How a backbone meets the image: timm's pretrained 1-channel stem, BatchNorm settings and a biased head, or
# David's torchvision network as his code built it ("seed_exact", D/model.py: `seed_exact_backbone`).
NET_FORMS = ("timm", "seed_exact")
# torchvision's BatchNorm (eps, momentum) for the families David used: EfficientNet B0-B7 keep nn.BatchNorm2d's
# defaults; MobileNetV3 builds partial(nn.BatchNorm2d, eps=0.001, momentum=0.01) (torchvision/models/
# mobilenetv3.py); timm's are 1e-5 / 0.1 for both.
TORCHVISION_EFFICIENTNET_BN, TORCHVISION_MOBILENETV3_BN = (1e-5, 0.1), (1e-3, 0.01)
# D/model.py: nn.Conv2d(in_ch, c0_ch, kernel_size=(17, 17), stride=(stride, stride), padding=(8, 8), bias=False),
# stride = 2 ** (5 - w_factor + 1) = 2 (w_factor 5 for b0 and mobilenet)
SEED_STEM = {"kernel_size": 17, "stride": 2, "padding": 8, "bias": False}


class AttentionPool(nn.Module):
    """The seed's "attention before average pooling": one learned weight per feature-map column.

    A 1x1 conv, BatchNorm and SiLU summarise the map; its global average goes through Linear(C -> W) and a
    sigmoid, giving a weight in (0, 1) for each of the W columns (time steps of the spectrogram image).
    The map is multiplied by these weights and then globally averaged. W is fixed at construction, so
    the module only accepts feature maps of that width.
    """

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.width = width
        self.summary = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=1, bias=False),  # BatchNorm follows: no bias needed
            nn.BatchNorm2d(channels),
            nn.SiLU(),
        )
        self.column_logits = nn.Linear(channels, width)

    def column_weights(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, W) weights in (0, 1)."""
        summary = self.summary(feature_map).mean(dim=(2, 3))
        return torch.sigmoid(self.column_logits(summary))

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C)."""
        if feature_map.shape[-1] != self.width:
            raise ValueError(
                f"AttentionPool was built for feature maps {self.width} columns wide but got "
                f"{feature_map.shape[-1]}; build the model with the image size it will see"
            )
        weights = self.column_weights(feature_map)
        return (feature_map * weights[:, None, None, :]).mean(dim=(2, 3))


class GeM(nn.Module):
    """Generalized mean pooling (B, C, H, W) -> (B, C): (mean x^p)^(1/p) with a learnable p (1 = average)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps  # keeps x^p defined after the clamp of non-positive activations

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        # float32: eps ** 3 underflows in float16, and the 1/p root of 0 has an infinite gradient
        return feature_map.float().clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


def create_pool(pool: str, channels: int, width: int) -> nn.Module:
    """A (B, C, H, W) -> (B, C) pooling layer by name: "avg", "gem" or "attention"."""
    if pool == "avg":
        return SelectAdaptivePool2d(pool_type="avg", flatten=True)
    if pool == "gem":
        return GeM()
    if pool == "attention":
        return AttentionPool(channels, width)
    raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")


def timm_backbone(name: str, pretrained: bool = False, drop_path_rate: float = 0.0, in_chans: int = 1) -> nn.Module:
    """A timm model for 1-channel images that returns its unpooled feature map (B, C, H, W);
    `drop_path_rate` is timm's stochastic depth, ramped linearly over the blocks from 0 (Richard's 0.2;
    for efficientnet_b0 it gives torchvision's per-block rates 0 ... 0.1875 of stochastic_depth_prob 0.2)."""
    extra = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}  # not every timm model takes it
    return timm.create_model(name, pretrained=pretrained, in_chans=in_chans, num_classes=0, global_pool="", **extra)


def drop_conv_head(backbone: nn.Module, name: str) -> None:
    """End a MobileNetV3 at its last stage: without timm's conv_head (960 -> 1280 channels for
    mobilenetv3_large_100, and its activation), which timm's forward_head runs on the unpooled map.
    torchvision's MobileNetV3 has that layer in its classifier, after the pool, so its `.features` end at
    960 channels: the map David's model pooled (David_src/model.py: `list(network.children())[0]`, cnn_ch
    960). EfficientNet's conv_head belongs to its features in both libraries: there is nothing to drop."""
    if not isinstance(backbone, timm.models.MobileNetV3):
        raise ValueError(f"conv_head = false drops a MobileNetV3's conv_head; {name} has none outside its "
                         "features")
    backbone.prune_intermediate_layers(prune_head=True)  # the last stage kept; conv_head and act2 -> Identity


def seed_exact_backbone(backbone: nn.Module, name: str) -> None:
    """David's network input (D/model.py, EfficientNet.__init__): the first conv replaced by a new, randomly
    initialised one-channel 17 x 17 stride-2 conv (padding 8, no bias; `self.features[0][0] = nn.Conv2d(
    in_ch, c0_ch, ...)`) after the pretrained weights are in, and every BatchNorm with torchvision's eps and
    momentum for the architecture (his backbones were torchvision's)."""
    if isinstance(backbone, timm.models.MobileNetV3):
        eps, momentum = TORCHVISION_MOBILENETV3_BN
    elif isinstance(backbone, timm.models.EfficientNet) and re.fullmatch(r"efficientnet_b\d", name.split(".")[0]):
        eps, momentum = TORCHVISION_EFFICIENTNET_BN
    else:
        raise ValueError(f"net_form = \"seed_exact\" is David's torchvision form of a MobileNetV3 or an "
                         f"efficientnet_b0 ... b7; {name} is neither")
    backbone.conv_stem = nn.Conv2d(1, backbone.conv_stem.out_channels, **SEED_STEM)
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps, module.momentum = eps, momentum


def feature_map_shape(backbone: nn.Module, image_size: tuple[int, int]) -> tuple[int, int, int]:
    """(C, H, W) of the backbone's feature map for a (1, H_img, W_img) image, by one dry forward pass.

    Runs in eval mode without gradients so BatchNorm running statistics are left untouched.
    """
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        feature_map = backbone(torch.zeros(1, 1, *image_size))
    backbone.train(was_training)
    channels, height, width = feature_map.shape[1:]
    return channels, height, width


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load timm-format pretrained weights (torch.save file or .safetensors) into a 1-channel backbone.

    The classifier keys are dropped (the backbone has none) and a 3-channel first conv is summed over
    its input channels, as timm does for in_chans=1. Loading is strict otherwise, so a file for another
    architecture fails loudly instead of leaving layers at random initialisation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = load_state_dict(str(path))
    config = backbone.pretrained_cfg
    classifiers = config.get("classifier") or ()
    for name in (classifiers,) if isinstance(classifiers, str) else classifiers:
        state.pop(f"{name}.weight", None)
        state.pop(f"{name}.bias", None)
    first_conv = f"{config['first_conv']}.weight"
    in_chans = backbone.get_submodule(config["first_conv"]).in_channels
    if first_conv in state and state[first_conv].shape[1] != in_chans:
        state[first_conv] = adapt_input_conv(in_chans, state[first_conv], base_chans=state[first_conv].shape[1])
    backbone.load_state_dict(state)


class MissingWeightsError(RuntimeError):
    """Pretrained weights asked for are not on this machine and cannot be downloaded (an expected,
    user-fixable error: the message says how to provide them)."""


NETWORK_PROBE_S = 3.0  # a machine without a network is told so in seconds, not after download retries


def hub_reachable(timeout: float = NETWORK_PROBE_S) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT, default huggingface.co) answers a TCP connection within
    `timeout` seconds. Name resolution can hang without a network, so the probe runs on its own thread."""
    import socket
    import threading
    from urllib.parse import urlparse

    url = urlparse(huggingface_hub.constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    answered = threading.Event()

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answered.set()
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return answered.is_set()


def _hub_offline(offline: bool) -> None:
    """huggingface_hub reads HF_HUB_OFFLINE once, at import, so the module flag is set with the variable."""
    os.environ["HF_HUB_OFFLINE"] = "1" if offline else "0"
    huggingface_hub.constants.HF_HUB_OFFLINE = offline


def cached_pretrained_backbone(name: str, drop_path_rate: float = 0.0, in_chans: int = 1) -> nn.Module:
    """timm's pretrained weights for `name`: from the local Hugging Face cache when there, else downloaded
    when the hub is reachable; without a network it fails fast with MissingWeightsError saying how to
    provide them (the hub cache folder, or --weights FILE)."""
    _hub_offline(True)  # the cache first: no network round trip when the weights are already here
    try:
        return timm_backbone(name, pretrained=True, drop_path_rate=drop_path_rate, in_chans=in_chans)
    except OSError as error:  # cache miss: LocalEntryNotFoundError, OfflineModeIsEnabled, URLError
        cache_miss = error
    if hub_reachable():
        _hub_offline(False)
        try:
            return timm_backbone(name, pretrained=True, drop_path_rate=drop_path_rate, in_chans=in_chans)
        except OSError as error:
            cache_miss = error
        finally:
            _hub_offline(True)
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    hub_id = pretrained_cfg.hf_hub_id if pretrained_cfg is not None and pretrained_cfg.hf_hub_id else name
    raise MissingWeightsError(
        f"no pretrained weights for {name} in the local cache; pass --weights PATH (a timm state dict or "
        f".safetensors file), or copy timm's {hub_id!r} into the Hugging Face hub cache "
        f"{huggingface_hub.constants.HF_HUB_CACHE} (set HF_HOME or HF_HUB_CACHE to use another folder), or "
        f"run once where {huggingface_hub.constants.ENDPOINT} is reachable"
    ) from cache_miss


def create_backbone(
    name: str, pretrained: bool = False, weights: str | Path | None = None, drop_path_rate: float = 0.0,
    conv_head: bool = True, net_form: str = "timm", in_chans: int = 1,
) -> nn.Module:
    """A 1-channel (or `in_chans`) timm feature extractor: weights from `weights` if given, else timm's pretrained ones
    (local cache, else downloaded) if `pretrained`, else random initialisation; without its conv_head
    (`drop_conv_head`) when `conv_head` is false, and in David's form (`seed_exact_backbone`) when
    `net_form` is "seed_exact", once the weights are in."""
    if net_form not in NET_FORMS:
        raise ValueError(f"unknown net_form {net_form!r}; expected one of {NET_FORMS}")
    if weights is not None:
        backbone = timm_backbone(name, drop_path_rate=drop_path_rate, in_chans=in_chans)
        load_backbone_weights(backbone, weights)
    elif pretrained:
        backbone = cached_pretrained_backbone(name, drop_path_rate, in_chans)
    else:
        backbone = timm_backbone(name, drop_path_rate=drop_path_rate, in_chans=in_chans)
    if not conv_head:
        drop_conv_head(backbone, name)
    if net_form == "seed_exact":
        seed_exact_backbone(backbone, name)
    return backbone
