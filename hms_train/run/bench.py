"""How fast the trainer gets its data, and how fast a recipe's model trains on it.

`run_bench`: three passes over one stream of shuffled full batches of every built row, epoch after epoch:
  (a) reader: `StoreReader.batches` -> `to_device` (pinned host memory and an asynchronous copy on CUDA)
  (b) the same + the composed image of the config's layout (`forward.model_inputs`)
  (c) the same + the config's training augmentations (`forward.make_augmenter`), if asked
Each pass times how long the loop waited for the reader and how long each stage took; on CUDA every
stage is synchronised before its clock stops, so the figures are conservative (no overlap is counted).
Without a config the inputs are composed side by side with the default augmentations.

`run_train_bench`: a recipe's model trained on the device (forward + backward + optimizer step, bf16
autocast and channels_last on CUDA as training runs, optionally `torch.compile`): its images/s on one
batch resident on the device (the model alone), the data path's samples/s to the device (pass (b)), and
the whole loop's images/s with fresh batches, whose ratio to the model alone is how busy the GPU was.
The loop reads nothing back from the device per step, as training does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from hms_prep.store.arrays import describe_arrays
from hms_prep.store.layout import open_store
from hms_train.data.reader import Selection, StoreReader, to_device
from hms_train.data.sampler import SamplerState
from hms_train.model.kinds import DEFAULT_MODEL, IMAGE, MODELS, kinds_taking, model_kind
from hms_train.model.settings import ModelConfig
from hms_train.run.parts import build_model, training_parts
from hms_train.run.config import TrainConfig, load_config
from hms_train.run.forward import make_augmenter, model_inputs, resolve_device
from hms_train.run.inputs import check_augment, input_item_shape, plan_inputs
from hms_train.run.plan import RunPlan, loss_of
from hms_train.run.stages import RowScope
from hms_train.run.step import RowLabels, TrainStep

WARMUP_BATCHES = 3  # thread pools, torch kernels (and compilation): started before the clocks


def bench_config(store: str, inputs: Sequence[str] | None = None, config: TrainConfig | None = None) -> TrainConfig:
    """The config a benchmark runs: `config` on `store`, or the default recipe reading `inputs` (its image
    parts side by side) with the model kind that takes the inputs' roles (the model registry's first such:
    the default kind where it fits, the 1D net for signals alone, the multimodal one for both, a plug-in's
    for its own role)."""
    if config is not None:
        return dataclasses.replace(config, store=store)
    if not inputs:
        return dataclasses.replace(load_config(None), store=store)
    group, _ = open_store(store)
    described = describe_arrays(group)
    missing = [name for name in inputs if name not in described]
    if missing:
        raise ValueError(f"--inputs {missing}: not in {store}; it has {sorted(described)}")
    roles = {described[name].role for name in inputs}  # every "image" array feeds the one composed image
    kinds = kinds_taking(roles)
    if not kinds:
        raise ValueError(f"--inputs {list(inputs)}: no model kind takes {sorted(roles)}; registered: "
                         f"{ {name: model_kind(name).inputs for name in MODELS} }")
    model = DEFAULT_MODEL if DEFAULT_MODEL in kinds else kinds[0]
    return dataclasses.replace(load_config(None), store=store, inputs=list(inputs), model=ModelConfig(model),
                               layout=None)


def bench_plan(config: TrainConfig, reader: StoreReader) -> RunPlan:
    """The planned inputs, loss, augmentations and row table (its targets and votes) of `config` (no folds:
    a benchmark trains on every row)."""
    inputs = plan_inputs(config, reader.descriptions)
    return RunPlan(inputs, loss_of(config), check_augment(config, inputs), folds={}, scope=RowScope.of(config, reader))


def bench_labels(plan: RunPlan, device: torch.device) -> RowLabels:
    """The targets and votes a benchmark's steps train on: the run's row table's, as the loop's first stage."""
    return RowLabels.of(plan.scope.targets, plan.scope.target_votes, device)


def run_bench(
    store: str,
    inputs: Sequence[str] | None = None,
    batch_size: int = 32,
    batches: int = 50,
    device: str = "auto",
    augment: bool = False,
    threads: int = 4,
    *,
    compose: bool = True,
    config: TrainConfig | None = None,
) -> dict:
    """Measure the data path; returns a JSON-able dict (see the module docstring for the passes;
    `compose=False` runs pass (a) only, for repeated measurements of the headline):

    samples_per_s            (a) reader to a ready batch on the device: the headline
    cpu_us_per_sample        (a)'s CPU time (every thread of this process) per sample: what the rate would
                             cost on an idle machine, a figure that other work on a shared one disturbs less
    samples_per_s_composed   (b) + the composed image (None when the model takes no image, or not compose)
    samples_per_s_augmented  (c) + augmentations, None unless `augment` (and compose)
    seconds                  of the fullest pass: read_wait, to_device, compose, augment
    batch_size, batches, image_shape (C, H, W of the model's image, from the layout), device,
    bytes_per_sample (as decoded)
    """
    config = bench_config(store, inputs, config)
    torch_device = resolve_device(device)
    reader = StoreReader(store, config.inputs, threads=threads)
    plan = bench_plan(config, reader)
    takes_image = plan.inputs.takes_image
    stream = _stream(reader, batch_size, pin_memory=torch_device.type == "cuda")
    composed = augmented = None
    try:
        for _ in range(WARMUP_BATCHES):
            next(stream)
        reader_only = fullest = _timed_pass(stream, batches, torch_device, None, None)
        if takes_image and compose:
            composed = fullest = _timed_pass(stream, batches, torch_device, plan, None)
        if takes_image and compose and augment:
            generator = torch.Generator(device=torch_device).manual_seed(0)
            augmented = fullest = _timed_pass(stream, batches, torch_device, plan, make_augmenter(plan, generator),
                                              bench_labels(plan, torch_device))
    finally:
        stream.close()  # stops the reader's threads now rather than when garbage collected
    samples = batches * batch_size
    return {
        "samples_per_s": samples / reader_only["wall"],
        "cpu_us_per_sample": reader_only["cpu"] / samples * 1e6,
        "samples_per_s_composed": samples / composed["wall"] if composed else None,
        "samples_per_s_augmented": samples / augmented["wall"] if augmented else None,
        "seconds": {stage: fullest[stage] for stage in ("read_wait", "to_device", "compose", "augment")},
        "batch_size": batch_size,
        "batches": batches,
        "image_shape": list(plan.inputs.image_shape) if takes_image else None,
        "inputs": list(config.inputs),
        "device": str(torch_device),
        "bytes_per_sample": _bytes_per_sample(reader),
    }


def run_train_bench(
    config: TrainConfig,
    store: str,
    batches: int = 50,
    device: str = "auto",
    batch_size: int | None = None,
    compile_model: bool = False,
    threads: int = 4,
) -> dict:
    """Train `config`'s model (random initialisation) for `batches` steps twice, on one resident batch
    and on fresh batches from the store; returns a JSON-able dict:

    model_images_per_s      forward + backward + step on one batch already on the device: the model alone
    data_samples_per_s      the data path to the composed image on the device (`run_bench` pass (b))
    train_images_per_s      the whole loop: fresh batches, composed, augmented, trained
    gpu_busy                model time / loop time: the fraction of the loop the device spent training
    data_over_model         data_samples_per_s / model_images_per_s (the target is >= 3)
    image_shape, batch_size, batches, device, dtype, channels_last, compiled
    """
    config = bench_config(store, config=config)
    config = dataclasses.replace(config, model=config.model.without_pretrained_weights(),
                                 batch_size=batch_size or config.batch_size)
    torch_device = resolve_device(device)
    reader = StoreReader(store, config.inputs, threads=threads)
    plan = bench_plan(config, reader)
    takes_image = plan.inputs.takes_image
    model = build_model(plan.inputs, torch_device)
    net = torch.compile(model) if compile_model else model
    optimizer = training_parts(config, model, config.lr, 1, batches, with_ema=False).optimizer  # the recipe's, as the loop's
    generator = torch.Generator(device=torch_device).manual_seed(config.seed)
    step = TrainStep(plan, model, net, optimizer, make_augmenter(plan, generator), torch_device,
                     bench_labels(plan, torch_device))  # the loop's step

    stream = _stream(reader, config.batch_size, pin_memory=torch_device.type == "cuda")
    try:
        resident = step.prepare(next(stream))
        net.train()
        for _ in range(WARMUP_BATCHES):
            step.optimise(*resident)
        model_seconds = _timed(lambda: [step.optimise(*resident) for _ in range(batches)], torch_device)
        data = _timed_pass(stream, batches, torch_device, plan if takes_image else None, None)
        loop_seconds = _timed(lambda: [step(next(stream)) for _ in range(batches)], torch_device)
    finally:
        stream.close()
    images = batches * config.batch_size
    model_rate, data_rate = images / model_seconds, images / data["wall"]
    return {
        "model_images_per_s": model_rate,
        "data_samples_per_s": data_rate,
        "train_images_per_s": images / loop_seconds,
        "gpu_busy": min(1.0, model_seconds / loop_seconds),
        "data_over_model": data_rate / model_rate,
        "image_shape": list(plan.inputs.image_shape) if takes_image else None,
        "batch_size": config.batch_size,
        "batches": batches,
        "device": str(torch_device),
        "dtype": "bfloat16" if config.amp and torch_device.type == "cuda" else "float32",
        "channels_last": bool(config.channels_last and takes_image),
        "compiled": compile_model,
    }


def _timed(work, device: torch.device) -> float:
    """Seconds for `work()`, the device drained before the clock stops (one synchronisation in all)."""
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _stream(reader: StoreReader, batch_size: int, pin_memory: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Full shuffled batches of every built row, epoch after epoch, as training reads them."""
    rows = reader.select(Selection())
    if len(rows) < batch_size:
        raise ValueError(f"{reader.url}: {len(rows)} usable rows, fewer than one batch of {batch_size}")
    epoch = 0
    while True:
        yield from reader.batches(rows, batch_size, SamplerState(epoch=epoch), shuffle=True, drop_last=True,
                                  pin_memory=pin_memory)
        epoch += 1


def _timed_pass(stream, batches: int, device: torch.device, plan: RunPlan | None, augmenter,
                labels: RowLabels | None = None) -> dict:
    """Run `batches` batches through the stages (the image of `plan` composed; None: the reader alone; with
    `augmenter`, augmented with the targets of `labels`); wall time and seconds spent per stage."""
    spent = {"read_wait": 0.0, "to_device": 0.0, "compose": 0.0, "augment": 0.0}
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        clock = time.perf_counter()
        batch = next(stream)
        clock = _lap(spent, "read_wait", clock, device)
        batch = to_device(batch, device)
        clock = _lap(spent, "to_device", clock, device)
        if plan is None:
            continue
        images = model_inputs(batch, plan.inputs, train=True)[IMAGE]
        clock = _lap(spent, "compose", clock, device)
        if augmenter is not None:
            augmenter(images, labels.targets[batch["row"]])
            _lap(spent, "augment", clock, device)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"wall": wall, "cpu": cpu, **spent}


def _lap(spent: dict, stage: str, since: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    now = time.perf_counter()
    spent[stage] += now - since
    return now


def _bytes_per_sample(reader: StoreReader) -> int:
    total = 0
    for name, array in reader.arrays.items():
        values = int(np.prod(input_item_shape(reader.descriptions[name])))
        total += values * array.dtype.itemsize
    return total


def format_report(result: dict, store: str, inputs: Sequence[str]) -> str:
    """The human-readable summary `hms-train bench` prints."""
    shape = "x".join(str(s) for s in result["image_shape"]) if result["image_shape"] else "none"
    lines = [
        f"{store}: {','.join(inputs)} -> image {shape}, {result['bytes_per_sample'] / 1024:.0f} KiB/sample, "
        f"{result['batches']} batches of {result['batch_size']} on {result['device']}",
        f"  reader -> batch on device  {result['samples_per_s']:9,.0f} samples/s  "
        f"({result['cpu_us_per_sample']:.0f} us CPU per sample)",
    ]
    if result["samples_per_s_composed"] is not None:
        lines.append(f"  + composed image           {result['samples_per_s_composed']:9,.0f} samples/s")
    if result["samples_per_s_augmented"] is not None:
        lines.append(f"  + augmentations            {result['samples_per_s_augmented']:9,.0f} samples/s")
    spent = ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in result["seconds"].items())
    lines.append(f"  seconds in the last pass: {spent}")
    return "\n".join(lines)


def format_train_report(result: dict, store: str, config_name: str) -> str:
    """The human-readable summary `hms-train bench --train` prints."""
    shape = "x".join(str(s) for s in result["image_shape"]) if result["image_shape"] else "none"
    return "\n".join([
        f"{store}: {config_name} -> image {shape}, {result['batches']} steps of {result['batch_size']} on "
        f"{result['device']} ({result['dtype']}, channels_last {result['channels_last']}, compiled {result['compiled']})",
        f"  model alone (fwd + bwd + step)  {result['model_images_per_s']:9,.0f} images/s",
        f"  data path to the device         {result['data_samples_per_s']:9,.0f} samples/s "
        f"({result['data_over_model']:.1f} x the model)",
        f"  whole training loop             {result['train_images_per_s']:9,.0f} images/s "
        f"(device busy {100 * result['gpu_busy']:.0f} % of the loop)",
    ])
