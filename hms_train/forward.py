"""From a batch of store arrays to model inputs and predictions; shared by training and prediction."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from hms_train.compose import compose_image
from hms_train.config import TrainConfig
from hms_train.reader import StoreReader, to_device

RAW_INPUT = "raw"


def image_inputs(config: TrainConfig) -> list[str]:
    return [name for name in config.inputs if name != RAW_INPUT]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def autocast(config: TrainConfig, device: torch.device):
    """bf16 autocast on CUDA when AMP is on; CPU runs stay in float32."""
    if config.amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def eval_kaggle_width(config: TrainConfig) -> int | None:
    """Evaluation images must be as wide as training crops (the attention head has a fixed width)."""
    return config.augment.random_crop_width or config.kaggle_width


def model_inputs(batch: dict[str, torch.Tensor], config: TrainConfig, train: bool) -> dict[str, torch.Tensor]:
    """The model's keyword inputs: `image` composed on the device, `raw` as float32."""
    out = {}
    names = image_inputs(config)
    if config.model in ("2d", "multimodal"):
        width = None if train else eval_kaggle_width(config)
        image = compose_image({n: batch[n] for n in names}, names, kaggle_width=width)
        if config.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        out["image"] = image
    if config.model in ("1d", "multimodal"):
        out["raw"] = batch[RAW_INPUT].float()
    return out


def run_model(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if set(inputs) == {"image", "raw"}:
        return model(inputs["image"], inputs["raw"])
    return model(next(iter(inputs.values())))


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
    """Softmax probabilities (len(rows), 6) in the order of `rows`; optional time-flip TTA."""
    model.eval()
    out = np.zeros((len(rows), 6), dtype=np.float32)
    position = {int(r): i for i, r in enumerate(rows)}
    for batch in reader.batches(rows, batch_size, shuffle=False, pin_memory=device.type == "cuda"):
        batch = to_device(batch, device)
        inputs = model_inputs(batch, config, train=False)
        with autocast(config, device):
            probs = run_model(model, inputs).float().softmax(1)
            if tta_hflip:
                flipped = {k: v.flip(-1) for k, v in inputs.items()}
                probs = (probs + run_model(model, flipped).float().softmax(1)) / 2
        idx = [position[int(r)] for r in batch["row"]]
        out[idx] = probs.cpu().numpy()
    return out


# --- PLACEHOLDER on branch `loop`: helper C's forward.model_spec replaces this at merge. ---------------
def model_spec(config: TrainConfig, reader: StoreReader) -> dict:
    """The model as JSON-able data, `{"name", "kwargs"}` for `models.create_model(name, **kwargs)`:
    checkpoints store it so that a model is rebuilt from its checkpoint alone."""
    names = image_inputs(config)
    height = width = 0
    if names:
        shapes = {n: reader.arrays[n].shape for n in names}
        height = 4 * shapes[names[0]][2]
        width = sum(s[-1] for n, s in shapes.items() if n != "kaggle")
        if "kaggle" in shapes:
            width += eval_kaggle_width(config) or shapes["kaggle"][-1]
    raw = reader.arrays.get("raw")
    return {"name": config.model, "kwargs": {
        "backbone": config.backbone, "pool": config.pool, "image_size": [int(height), int(width)],
        "raw_channels": int(raw.shape[0]) if raw is not None else 18, "drop_rate": config.drop_rate,
        "pretrained": config.pretrained, "weights": config.weights,
    }}
