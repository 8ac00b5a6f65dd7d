"""From a batch of store arrays to model inputs and predictions; shared by training, the benchmark and
prediction. What to make of a batch is the run's `InputPlan` (hms_train.run.inputs): the image composed on
the device from its layout, and the signals array; `model_inputs` makes exactly the inputs the model's
kind declares and `run_model` passes them by keyword.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext

import numpy as np
import torch

from hms_train.data.reader import StoreReader, to_device
from hms_train.image.augment import Augmenter
from hms_train.image.transforms import part_time_flip, time_flip
from hms_train.image.compose import compose, eval_windows
from hms_train.model.kinds import IMAGE, model_kind
from hms_train.run.config import TrainConfig, check_device
from hms_train.run.inputs import InputPlan, augment_geometry
from hms_train.run.plan import RunPlan


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


def make_augmenter(plan: RunPlan, generator: torch.Generator | None) -> Augmenter:
    """The training augmenter of a planned run: its checked steps, with the layout's maps they need (the
    hemisphere swap's mirror of each part, ...) on the generator's device."""
    device = generator.device if generator is not None else "cpu"
    geometry = {name: None if values is None else torch.from_numpy(values).to(device)
                for name, values in augment_geometry(plan.augment, plan.inputs).items()}
    return Augmenter(plan.augment, generator, geometry)


def model_inputs(
    batch: dict[str, torch.Tensor], inputs: InputPlan, train: bool, generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The model's keyword inputs, those its kind declares: `image` composed on the device (training or
    evaluation crops; random crop starts from `generator`, None: torch's default), every other input
    (`signals`, a plug-in's `features`, ...) its array's rows as float32. With a sliding evaluation layout
    the image is the whole canvas; `predict_probabilities` runs the model on its windows."""
    out = {}
    for name in model_kind(inputs.config.model.name).inputs:
        if name == IMAGE:
            out[name] = _memory_format(compose(inputs.layout, batch, train, generator), inputs.config)
        else:
            out[name] = batch[inputs.arrays[name]].float()
    return out


def _memory_format(image: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    return image.contiguous(memory_format=torch.channels_last) if config.channels_last else image


def run_model(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of `model` on the inputs its kind declared, passed by keyword (`forward(image, signals)`...)."""
    return model(**inputs)


def evaluation_views(
    inputs: dict[str, torch.Tensor], plan: InputPlan, tta_hflip: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """The inputs the model sees at evaluation: each window of a sliding layout, each also time-flipped
    (every input along time together: image and signals; `InputPlan.flips`) with `tta_hflip`; their
    probabilities are averaged."""
    windows = eval_windows(plan.layout, inputs[IMAGE]) if IMAGE in inputs else [None]
    for window in windows:
        view = dict(inputs) if window is None else {**inputs, IMAGE: _memory_format(window, plan.config)}
        yield view
        if tta_hflip:
            yield {key: value.flip(-1) if key in plan.flips else value for key, value in view.items()}


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module,
    reader: StoreReader,
    rows: np.ndarray,
    plan: InputPlan,
    device: torch.device,
    batch_size: int = 64,
    tta_hflip: bool = False,
    flipped: np.ndarray | None = None,
) -> np.ndarray:
    """Softmax probabilities (len(rows), 6) in the order of `rows`, averaged over the layout's sliding
    windows (if any) and, with `tta_hflip`, over time-flipped inputs. `flipped` (a bool per store row,
    `eval_flips`): those rows' images are time-flipped as the recipe's time_flip flips them."""
    model.eval()
    out = np.zeros((len(rows), 6), dtype=np.float32)
    position = {int(r): i for i, r in enumerate(rows)}
    columns = None
    if flipped is not None and plan.config.augment.steps["time_flip"].per_part:
        columns = torch.from_numpy(plan.layout.part_flip_columns()).to(device)
    for batch in reader.batches(rows, batch_size, shuffle=False, pin_memory=device.type == "cuda"):
        batch = to_device(batch, device)
        inputs = model_inputs(batch, plan, train=False)
        if flipped is not None:
            mask = torch.from_numpy(flipped[batch["row"].cpu().numpy()]).to(device)
            image = inputs[IMAGE]
            inputs[IMAGE] = part_time_flip(image, mask, columns) if columns is not None else time_flip(image, mask)
        with autocast(plan.config, device):
            views = [run_model(model, view).float().softmax(1) for view in evaluation_views(inputs, plan, tta_hflip)]
        probs = torch.stack(views).mean(0)
        idx = [position[int(r)] for r in batch["row"]]
        out[idx] = probs.cpu().numpy()
    return out


def eval_flips(config: TrainConfig, fold: int, n_rows: int) -> np.ndarray | None:
    """Which store rows a fold's evaluation sees time-flipped (`eval_flip_p`), drawn once from (seed, fold)
    so that every epoch's validation and the out-of-fold predictions see the same images; None when off."""
    if config.eval_flip_p <= 0:
        return None
    return np.random.default_rng([config.seed, fold, 5]).random(n_rows) < config.eval_flip_p
