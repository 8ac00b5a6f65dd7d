"""Models for the six-class vote distribution: a 2D spectrogram net, a 1D raw-EEG net, and both joined.

All backbones come from timm. Every model returns raw logits (B, 6); the loss applies the softmax.
Model kinds are registered (`register_model`) with the inputs their forward takes by keyword (`image`,
`signals`);
`create_model(name, **kwargs)` is the one factory, timm style, and refuses arguments a kind does not take.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal
from pathlib import Path

import huggingface_hub.constants
import timm
import torch
from timm.layers import NormMlpClassifierHead, SelectAdaptivePool2d
from timm.models import adapt_input_conv, load_state_dict
from torch import nn

from hms_prep.registry import Registry, RegistryError, settings_from_signature

NUM_CLASSES = 6
POOLS = ("avg", "gem", "attention")
# Where a SpectrogramNet's dropout acts: on the pooled features before the head (the default), or on the
# backbone's 4-D feature map before the pool (Richard's: timm's forward_head dropout with an identity pool).
DROPOUT_PLACES = ("pooled", "map")
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
# The 1D net halves the time axis until at most this many steps are left for its GRU.
GRU_MAX_STEPS = 400


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


class SpectrogramNet(nn.Module):
    """timm backbone on a (B, 1, H, W) spectrogram image -> pool -> dropout -> Linear(C -> 6), or with
    `dropout_at="map"` backbone -> dropout -> pool -> Linear.

    `backbone` must return its unpooled feature map (see `timm_backbone`). `image_size` (H, W) is the
    size the model will see; it fixes the attention pool's width. With num_classes=0 the head is an
    identity and forward returns the pooled features (timm's convention).

    Richard's model (Train_V4_Pseudo_Label.ipynb cell 1) built timm's model with `drop_rate` and replaced
    its global_pool and classifier by identities, so timm's forward_head dropped elements of the 4-D map
    (`F.dropout` after the identity pool) before his attention and pool: `dropout_at="map"` (element-wise,
    as nn.Dropout on any tensor).

    A backbone whose timm head normalises the pooled vector (ConvNeXt's NormMlpClassifierHead: pool,
    LayerNorm, dropout, fc) keeps that order: the map is its `forward_features`, pooled, then the head's
    own norm (its weights stay at `backbone.head.norm`), so a "plain timm ConvNeXt" (Richard's
    seed_richard_convnext, R/Valid.ipynb c1) is timm's model. (timm's forward with global_pool="" would
    normalise every position of the map before the pool instead.)
    """

    def __init__(
        self,
        backbone: nn.Module,
        image_size: tuple[int, int],
        pool: str = "attention",
        drop_rate: float = 0.2,
        num_classes: int = NUM_CLASSES,
        dropout_at: str = "pooled",
        head_bias: bool = True,
    ):
        super().__init__()
        if dropout_at not in DROPOUT_PLACES:
            raise ValueError(f"unknown dropout_at {dropout_at!r}; expected one of {DROPOUT_PLACES}")
        self.backbone = backbone
        self.norm_after_pool = isinstance(getattr(backbone, "head", None), NormMlpClassifierHead)
        channels, _, width = feature_map_shape(backbone, image_size)
        self.num_features = channels
        self.pool = create_pool(pool, channels, width)
        self.dropout_at = dropout_at
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(channels, num_classes, bias=head_bias) if num_classes else nn.Identity()

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, C) pooled backbone features (the map dropped out first with dropout_at="map")."""
        if self.norm_after_pool:  # timm's order: pool, then the head's LayerNorm (per channel of the vector)
            feature_map = self.backbone.forward_features(image)
        else:
            feature_map = self.backbone(image)
        if self.dropout_at == "map":
            feature_map = self.dropout(feature_map)
        pooled = self.pool(feature_map)
        if self.norm_after_pool:
            pooled = self.backbone.head.norm(pooled[:, :, None, None].float()).flatten(1).to(pooled.dtype)
        return pooled

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.features(image)
        if self.dropout_at == "pooled":
            features = self.dropout(features)
        return self.head(features)


class ResidualBlock1d(nn.Module):
    """ResNet basic block in 1D: two convs with BatchNorm, a projected shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel_size: int = 7):
        super().__init__()
        padding = kernel_size // 2
        self.body = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
            nn.BatchNorm1d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv1d(out_channels, out_channels, kernel_size, 1, padding, bias=False),
            nn.BatchNorm1d(out_channels),
        )
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv1d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm1d(out_channels)
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def downsampling_blocks(samples: int, max_steps: int = GRU_MAX_STEPS) -> int:
    """How many stride-2 blocks after the stride-2 stem bring `samples` down to at most `max_steps`."""
    steps = math.ceil(samples / 2)
    blocks = 0
    while steps > max_steps:
        steps = math.ceil(steps / 2)
        blocks += 1
    return blocks


class RawEEGNet(nn.Module):
    """ResNet1D-GRU on raw bipolar EEG (B, S, T) -> (B, 6), after the seed's 1D pipeline.

    A stride-2 conv stem and stride-2 residual blocks shorten T (10,000 samples = 50 s at 200 Hz) to at
    most GRU_MAX_STEPS steps (313 for 10,000); a bidirectional GRU reads them, and the mean and max of its
    outputs over time are the features (D = 4 * gru_hidden). Any length T works; `samples` only sets the
    depth. With num_classes=0 forward returns the features.
    """

    def __init__(
        self,
        channels: int = 18,
        samples: int = 10000,
        width: int = 64,
        gru_hidden: int = 64,
        drop_rate: float = 0.2,
        num_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        self.channels = channels
        self.stem = nn.Sequential(
            nn.Conv1d(channels, width, kernel_size=15, stride=2, padding=7, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(
            *[ResidualBlock1d(width, width, stride=2) for _ in range(downsampling_blocks(samples))],
            ResidualBlock1d(width, width, stride=1),
        )
        self.gru = nn.GRU(width, gru_hidden, batch_first=True, bidirectional=True)
        self.num_features = 4 * gru_hidden  # mean and max of the 2 * gru_hidden GRU outputs
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def features(self, signals: torch.Tensor) -> torch.Tensor:
        """(B, S, T) bipolar EEG -> (B, D)."""
        if signals.shape[1] != self.channels:
            raise ValueError(f"RawEEGNet was built for {self.channels} signals but got {signals.shape[1]}")
        steps = self.blocks(self.stem(signals)).transpose(1, 2)  # (B, L, width): the GRU wants time second
        sequence, _ = self.gru(steps)
        return torch.cat([sequence.mean(dim=1), sequence.amax(dim=1)], dim=1)

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(signals)))


class MultimodalNet(nn.Module):
    """A SpectrogramNet and a RawEEGNet trained jointly: their features concatenated into one head.

    Both branches should be built with num_classes=0 so that their own heads are identities.
    """

    def __init__(
        self, spectrogram: SpectrogramNet, raw: RawEEGNet, drop_rate: float = 0.2, num_classes: int = NUM_CLASSES
    ):
        super().__init__()
        self.spectrogram = spectrogram
        self.raw = raw
        self.num_features = spectrogram.num_features + raw.num_features
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)

    def features(self, image: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.spectrogram.features(image), self.raw.features(signals)], dim=1)

    def forward(self, image: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(image, signals)))


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


# --- model kinds: each declares the batch inputs it consumes and builds itself from its own arguments ---


# The inputs a model kind takes are its forward's keyword arguments, each named by a store array's role
# (an open set: a plug-in kind may declare its own, a plug-in model take it): IMAGE is the image the run's
# layout composes from every array whose role is "image"; any other input is the one array of that role
# among the run's inputs, its rows as float32 (SIGNALS: the raw kind's windows). hms_train/run/inputs.py.
IMAGE, SIGNALS = "image", "signals"
# A builder's arguments the run plan fills from the layout and the store; every other argument is a
# setting a recipe may give (`[model]`, `--set model.NAME=...`), checked against the builder's signature.
# Besides these, `<input>_shape` (the per-row shape of each input but the image, e.g. `features_shape`).
PLANNED_ARGUMENTS = ("image_size", "raw_channels", "raw_samples")
PLANNED_SUFFIX = "_shape"
DEFAULT_MODEL = "2d"
# A setting annotated so is checked as a probability in [0, 1] (hms_train/run/config.py).
Probability = Annotated[float, "probability"]


@dataclass(frozen=True)
class ModelKind:
    """A kind of model: the inputs its forward takes (by keyword, in this order; roles of store arrays), its
    builder and its settings (a dataclass of the builder's arguments but the planned ones)."""

    name: str
    inputs: tuple[str, ...]
    build: Callable[..., nn.Module]
    settings: type

    def arguments(self) -> dict[str, inspect.Parameter]:
        """The builder's keyword arguments by name (what `create_model` accepts for this kind)."""
        return dict(inspect.signature(self.build).parameters)


MODELS: Registry[Callable[..., nn.Module]] = Registry("model kind", "models")  # details: inputs


def register_model(name: str, inputs: tuple[str, ...]):
    """Decorator: register `build(**kwargs) -> nn.Module` as model kind `name` consuming `inputs`; its
    settings are its arguments but PLANNED_ARGUMENTS, typed and defaulted as its signature says."""

    def register(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not inputs or isinstance(inputs, str) or not all(isinstance(i, str) and i.isidentifier() for i in inputs):
            raise RegistryError(f"model kind {name!r}: inputs {inputs!r}; a tuple of the roles its forward takes by "
                                f"keyword, e.g. ({IMAGE!r},) or ({IMAGE!r}, {SIGNALS!r})")
        planned = (*PLANNED_ARGUMENTS, *(f"{i}{PLANNED_SUFFIX}" for i in inputs if i != IMAGE))
        return MODELS.register(name, build, settings_from_signature(build, planned), inputs=tuple(inputs))

    return register


def model_kind(name: str) -> ModelKind:
    entry = MODELS.entry(name)
    return ModelKind(name, entry.details["inputs"], entry.factory, entry.settings)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a model of kind `name` ("2d", "1d", "multimodal", ...) from that kind's own arguments;
    an argument the kind does not take is refused, naming the ones it does."""
    kind = model_kind(name)
    taken = kind.arguments()
    unknown = sorted(set(kwargs) - set(taken))
    if unknown:
        raise ValueError(f"model kind {name!r} got argument(s) {unknown}, which {name!r} has none of; "
                         f"it takes {sorted(taken)}")
    required = [arg for arg, p in taken.items() if p.default is inspect.Parameter.empty and arg not in kwargs]
    if required:
        raise ValueError(f"model kind {name!r} needs argument(s) {required}")
    return kind.build(**kwargs)


@register_model("2d", inputs=(IMAGE,))
def spectrogram_model(
    image_size: Sequence[int],
    backbone: str = "efficientnet_b0",
    pool: Literal[POOLS] = "attention",
    drop_rate: Probability = 0.2,
    pretrained: bool = False,  # timm's weights: the local Hugging Face cache, else a download when online
    weights: str | None = None,  # a local backbone state dict
    drop_path_rate: Probability = 0.0,  # timm's stochastic depth
    dropout_at: Literal[DROPOUT_PLACES] = "pooled",  # on the pooled features, or on the map (Richard)
    conv_head: bool = True,
    net_form: Literal[NET_FORMS] = "timm",
) -> SpectrogramNet:
    """SpectrogramNet on (H, W) = `image_size` images (the layout's); `weights` is a local pretrained
    file for the backbone and takes precedence over `pretrained` (timm's cache, else a download).
    `dropout_at`, `conv_head` and `net_form` default to the models built before they existed (old model
    specs); "seed_exact" is David's torchvision form, with a bias-free head (D/model.py: nn.Linear(cnn_ch,
    num_classes, bias=False))."""
    backbone_net = create_backbone(backbone, pretrained, weights, drop_path_rate, conv_head, net_form)
    return SpectrogramNet(backbone_net, tuple(image_size), pool, drop_rate, dropout_at=dropout_at,
                          head_bias=net_form != "seed_exact")


@register_model("1d", inputs=(SIGNALS,))
def raw_model(raw_channels: int = 18, raw_samples: int = 10000, drop_rate: Probability = 0.2) -> RawEEGNet:
    """RawEEGNet on (B, raw_channels, raw_samples) bipolar signals (16 or 18 channels)."""
    return RawEEGNet(raw_channels, raw_samples, drop_rate=drop_rate)


@register_model("multimodal", inputs=(IMAGE, SIGNALS))
def multimodal_model(
    image_size: Sequence[int], backbone: str = "efficientnet_b0", pool: Literal[POOLS] = "attention",
    pretrained: bool = False, weights: str | None = None, drop_path_rate: Probability = 0.0,  # the 2D branch
    conv_head: bool = True,
    raw_channels: int = 18, raw_samples: int = 10000,  # the 1D branch, as for "1d"
    drop_rate: Probability = 0.2,
) -> MultimodalNet:
    """The 2D and 1D branches (their own heads off) joined in one head."""
    image_backbone = create_backbone(backbone, pretrained, weights, drop_path_rate, conv_head)
    spectrogram = SpectrogramNet(image_backbone, tuple(image_size), pool, drop_rate, num_classes=0)
    raw = RawEEGNet(raw_channels, raw_samples, drop_rate=drop_rate, num_classes=0)
    return MultimodalNet(spectrogram, raw, drop_rate)


def model_inputs(kind: str) -> tuple[str, ...]:
    """The batch keys a model of this kind takes, in forward-argument order."""
    return model_kind(kind).inputs
