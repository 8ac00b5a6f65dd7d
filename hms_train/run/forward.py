"""From a batch of store arrays to model inputs and predictions; shared by training and prediction.

The model is data: `model_spec` gives `{"name", "kwargs"}` for `models.create_model`, with the image size
from the image layout (`hms_train.image.layout`, resolved here against the store's arrays) and the raw signal's
channel count from the store. A model's kind declares which inputs it takes; `model_inputs` makes exactly
those and `run_model` passes them by keyword.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator, Mapping
from contextlib import nullcontext

import numpy as np
import torch

from hms_train.image.augment import IMAGE_ONLY, Augmenter
from hms_train.image.compose import compose, eval_windows
from hms_train.run.config import TrainConfig, check_device
from hms_train.image.layout import IMAGE_KINDS, ImageLayout, LayoutConfig, LayoutError, PartSource, resolve_layout, side_by_side
from hms_train.model.losses import Loss
from hms_train.model.models import model_kind
from hms_train.data.reader import RAW_WINDOW, StoreReader, to_device

RAW_INPUT = "raw"
IMAGE_INPUT = "image"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name)  # the config's one check: a ConfigError the CLI reports in one line
    return torch.device(name)


def autocast(config: TrainConfig, device: torch.device):
    """bf16 autocast on CUDA when AMP is on; CPU runs stay in float32."""
    if config.amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


# --- the image layout of a config -----------------------------------------------------------------------


def image_layout(config: TrainConfig, reader: StoreReader) -> ImageLayout:
    """The config's image layout placed on the reader's arrays: `[layout]`, or `inputs` side by side
    with the `kaggle_width` / `augment.random_crop_width` aliases. Raises LayoutError naming the key."""
    return _resolve(config, reader.arrays)


def _resolve(config: TrainConfig, arrays: Mapping) -> ImageLayout:
    if IMAGE_INPUT not in model_kind(config.model).inputs:
        raise LayoutError(f"model kind {config.model!r} takes no image")
    sources = {name: PartSource.of(arrays[name]) for name in config.inputs if name in arrays}
    spectrograms = [name for name, source in sources.items() if source.kind in IMAGE_KINDS]
    spec = LayoutConfig.parse(config.layout)
    if spec is None:
        spec = side_by_side(spectrograms, sources, config.kaggle_width, config.augment.random_crop_width)
        return resolve_layout(spec, sources)
    aliases = [key for key, value in (("kaggle_width", config.kaggle_width),
                                      ("augment.random_crop_width", config.augment.random_crop_width)) if value]
    if aliases:
        raise LayoutError(f"{aliases} only shape the default side-by-side image; with a [layout] set the "
                          "Kaggle part's width and crops in layout.parts")
    for index, part in enumerate(spec.parts):
        if part.array not in config.inputs:
            raise LayoutError(f"layout.parts[{index}].array {part.array!r} is not in inputs {list(config.inputs)}: "
                              "list every array of the layout in inputs so that the reader reads it")
    unused = [name for name in spectrograms if name not in {part.array for part in spec.parts}]
    if unused:
        raise LayoutError(f"inputs {unused} are not placed in the layout: place them in layout.parts or drop "
                          "them from inputs")
    return resolve_layout(spec, sources)


@functools.lru_cache(maxsize=8)
def _store_layout(key: str) -> ImageLayout:
    from hms_prep.store.format import open_store

    config = TrainConfig.from_dict(json.loads(key))
    group, _ = open_store(config.store)
    return _resolve(config, {name: group[name] for name in config.inputs})


def stored_image_layout(config: TrainConfig) -> ImageLayout:
    """`image_layout` against the arrays of `config.store`, read once per process and config."""
    return _store_layout(json.dumps(config.to_dict(), sort_keys=True, default=str))


# --- what the trainer and predict build from a config ---------------------------------------------------


def model_spec(config: TrainConfig, reader: StoreReader) -> dict:
    """The model as JSON-able data `{"name", "kwargs"}` for `models.create_model(name, **kwargs)`: only
    the arguments its kind takes, the image size from the layout, the raw channels from the store."""
    kind = model_kind(config.model)
    values = {"backbone": config.backbone, "pool": config.pool, "drop_rate": config.drop_rate,
              "drop_path_rate": config.drop_path_rate, "pretrained": config.pretrained, "weights": config.weights,
              "dropout_at": config.dropout_at, "conv_head": config.conv_head}
    if IMAGE_INPUT in kind.inputs:
        values["image_size"] = list(image_layout(config, reader).image_size)
    if RAW_INPUT in kind.inputs:
        if RAW_INPUT not in reader.arrays:
            raise ValueError(f"model kind {kind.name!r} takes the raw signal; add {RAW_INPUT!r} to inputs")
        values["raw_channels"] = int(reader.arrays[RAW_INPUT].shape[0])
        values["raw_samples"] = RAW_WINDOW
    taken = kind.arguments()
    refused = [key for key in ("pretrained", "weights") if values[key] and key not in taken]
    if refused:
        raise ValueError(f"{refused} concern an image backbone; model kind {kind.name!r} has none")
    return {"name": kind.name, "kwargs": {key: value for key, value in values.items() if key in taken}}


def loss_of(config: TrainConfig) -> Loss:
    """The recipe's training loss (KL with its reduction, + MSE, + cross-entropy, vote weighting)."""
    return Loss(config.kl_reduction, config.kl_weight, config.mse_weight, config.ce_weight, config.vote_weighting)


def make_augmenter(config: TrainConfig, reader: StoreReader, generator: torch.Generator | None) -> Augmenter:
    """The training augmenter of `config.augment`: the hemisphere swap mirrors each part of the layout;
    a model that takes the raw signal beside the image refuses augmentations of the image alone."""
    kind = model_kind(config.model)
    augment = dataclasses.replace(config.augment, random_crop_width=None)  # the layout crops
    if IMAGE_INPUT in kind.inputs and RAW_INPUT in kind.inputs:
        unsynced = [f"augment.{name}" for name in IMAGE_ONLY if getattr(augment, name) > 0]
        if unsynced:
            raise ValueError(f"model kind {kind.name!r} takes the image and the raw signal together; {unsynced} "
                             "would change the image alone and desynchronise them: set them to 0")
    mirror_rows = None
    if IMAGE_INPUT in kind.inputs and augment.hemisphere_swap_p > 0:
        device = generator.device if generator is not None else "cpu"
        mirror_rows = torch.from_numpy(image_layout(config, reader).mirror_rows()).to(device)
    return Augmenter(augment, generator, mirror_rows=mirror_rows)


# --- batches through the model --------------------------------------------------------------------------


def model_inputs(
    batch: dict[str, torch.Tensor],
    config: TrainConfig,
    train: bool,
    layout: ImageLayout | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The model's keyword inputs, those its kind declares: `image` composed on the device (training or
    evaluation crops; random crop starts from `generator`, None: torch's default), `raw` as float32.
    `layout` defaults to the config's layout on `config.store`. With a sliding evaluation layout the
    image is the whole canvas; `predict_probabilities` runs the model on its windows."""
    out = {}
    for name in model_kind(config.model).inputs:
        if name == IMAGE_INPUT:
            layout = layout or stored_image_layout(config)
            out[name] = _memory_format(compose(layout, batch, train, generator), config)
        elif name == RAW_INPUT:
            out[name] = batch[RAW_INPUT].float()
        else:
            raise ValueError(f"model kind {config.model!r} takes input {name!r}, which model_inputs cannot make")
    return out


def _memory_format(image: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    return image.contiguous(memory_format=torch.channels_last) if config.channels_last else image


def run_model(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of `model` on the inputs its kind declared, passed by keyword (`forward(image, raw)`...)."""
    return model(**inputs)


def evaluation_views(
    inputs: dict[str, torch.Tensor], layout: ImageLayout | None, config: TrainConfig, tta_hflip: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """The inputs the model sees at evaluation: each window of a sliding layout, each also time-flipped
    (image and raw together) with `tta_hflip`; their probabilities are averaged."""
    windows = eval_windows(layout, inputs[IMAGE_INPUT]) if IMAGE_INPUT in inputs else [None]
    for window in windows:
        view = dict(inputs) if window is None else {**inputs, IMAGE_INPUT: _memory_format(window, config)}
        yield view
        if tta_hflip:
            yield {key: value.flip(-1) for key, value in view.items()}


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module,
    reader: StoreReader,
    rows: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    batch_size: int = 64,
    tta_hflip: bool = False,
) -> np.ndarray:
    """Softmax probabilities (len(rows), 6) in the order of `rows`, averaged over the layout's sliding
    windows (if any) and, with `tta_hflip`, over time-flipped inputs."""
    model.eval()
    layout = image_layout(config, reader) if IMAGE_INPUT in model_kind(config.model).inputs else None
    out = np.zeros((len(rows), 6), dtype=np.float32)
    position = {int(r): i for i, r in enumerate(rows)}
    for batch in reader.batches(rows, batch_size, shuffle=False, pin_memory=device.type == "cuda"):
        batch = to_device(batch, device)
        inputs = model_inputs(batch, config, train=False, layout=layout)
        with autocast(config, device):
            views = [run_model(model, view).float().softmax(1) for view in evaluation_views(inputs, layout, config, tta_hflip)]
        probs = torch.stack(views).mean(0)
        idx = [position[int(r)] for r in batch["row"]]
        out[idx] = probs.cpu().numpy()
    return out

