"""How fast the trainer gets its data: samples/s from the store to a ready batch on the device.

Three passes over one stream of shuffled full batches of every built row, epoch after epoch:
  (a) reader: `StoreReader.batches` -> `to_device` (pinned host memory and an asynchronous copy on CUDA)
  (b) the same + `compose_image` (the model's float32 image)
  (c) the same + the training augmentations (`Augmenter` with the default `AugmentConfig`), if asked
Each pass times how long the loop waited for the reader and how long each stage took; on CUDA every
stage is synchronised before its clock stops, so the figures are conservative (no overlap is counted).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from hms_train.augment import AugmentConfig, Augmenter
from hms_train.compose import compose_image
from hms_train.reader import RAW_WINDOW, Selection, StoreReader, to_device

WARMUP_BATCHES = 3  # thread pools, zarr's event loop, torch kernels: started before the clocks


def run_bench(
    store: str,
    inputs: Sequence[str],
    batch_size: int = 32,
    batches: int = 50,
    device: str = "auto",
    augment: bool = False,
    threads: int = 4,
    *,
    compose: bool = True,
) -> dict:
    """Measure the data path; returns a JSON-able dict (see the module docstring for the passes;
    `compose=False` runs pass (a) only, for repeated measurements of the headline):

    samples_per_s            (a) reader to a ready batch on the device: the headline
    cpu_us_per_sample        (a)'s CPU time (every thread of this process) per sample: what the rate would
                             cost on an idle machine, a figure that other work on a shared one disturbs less
    samples_per_s_composed   (b) + compose_image (None when no input is a spectrogram part, or not compose)
    samples_per_s_augmented  (c) + augmentations, None unless `augment` (and compose)
    seconds                  of the fullest pass: read_wait, to_device, compose, augment
    batch_size, batches, image_shape (C, H, W of the composed image), device, bytes_per_sample (as decoded)
    """
    torch_device = _device(device)
    reader = StoreReader(store, inputs, threads=threads)
    parts = [name for name in inputs if name != "raw"]
    stream = _stream(reader, batch_size, pin_memory=torch_device.type == "cuda")
    composed = augmented = None
    try:
        for _ in range(WARMUP_BATCHES):
            next(stream)
        reader_only = fullest = _timed_pass(stream, batches, torch_device, parts=None, augmenter=None)
        if parts and compose:
            composed = fullest = _timed_pass(stream, batches, torch_device, parts=parts, augmenter=None)
        if parts and compose and augment:
            generator = torch.Generator(device=torch_device).manual_seed(0)
            augmenter = Augmenter(AugmentConfig(), generator)
            augmented = fullest = _timed_pass(stream, batches, torch_device, parts, augmenter)
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
        "image_shape": composed["image_shape"] if composed else None,
        "device": str(torch_device),
        "bytes_per_sample": _bytes_per_sample(reader),
    }


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _stream(reader: StoreReader, batch_size: int, pin_memory: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Full shuffled batches of every built row, epoch after epoch, as training reads them."""
    rows = reader.select(Selection())
    if len(rows) < batch_size:
        raise ValueError(f"{reader.url}: {len(rows)} usable rows, fewer than one batch of {batch_size}")
    epoch = 0
    while True:
        yield from reader.batches(rows, batch_size, shuffle=True, epoch=epoch, drop_last=True, pin_memory=pin_memory)
        epoch += 1


def _timed_pass(stream, batches: int, device: torch.device, parts, augmenter) -> dict:
    """Run `batches` batches through the stages; wall time and seconds spent per stage."""
    spent = {"read_wait": 0.0, "to_device": 0.0, "compose": 0.0, "augment": 0.0}
    image_shape = None
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        clock = time.perf_counter()
        batch = next(stream)
        clock = _lap(spent, "read_wait", clock, device)
        batch = to_device(batch, device)
        clock = _lap(spent, "to_device", clock, device)
        if parts is None:
            continue
        images = compose_image(batch, parts)
        image_shape = list(images.shape[1:])
        clock = _lap(spent, "compose", clock, device)
        if augmenter is not None:
            augmenter(images, batch["targets"])
            _lap(spent, "augment", clock, device)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"wall": wall, "cpu": cpu, "image_shape": image_shape, **spent}


def _lap(spent: dict, stage: str, since: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    now = time.perf_counter()
    spent[stage] += now - since
    return now


def _bytes_per_sample(reader: StoreReader) -> int:
    total = 0
    for name, array in reader.arrays.items():
        values = RAW_WINDOW * array.shape[0] if name == "raw" else int(np.prod(array.shape[1:]))
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
        lines.append(f"  + compose_image            {result['samples_per_s_composed']:9,.0f} samples/s")
    if result["samples_per_s_augmented"] is not None:
        lines.append(f"  + augmentations            {result['samples_per_s_augmented']:9,.0f} samples/s")
    spent = ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in result["seconds"].items())
    lines.append(f"  seconds in the last pass: {spent}")
    return "\n".join(lines)
