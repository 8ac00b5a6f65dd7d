"""The public-notebook data path, as a baseline for the store reader: one `.npy` file per sample.

The Kaggle notebooks precomputed spectrograms, saved one NumPy array per sample, and read them back in a
torch `Dataset` (`np.load` in `__getitem__`) through a `DataLoader` with 2 workers. This script exports
the store's rows that way and times it:

  export  one file per row, uncompressed, in one of two formats:
            parts16  the row's parts (e.g. eeg_10s, eeg_30s, kaggle) side by side along time, float16 as
                     stored: (4, F, sum of widths), e.g. (4, 100, 812) = 650 KB. The same bytes the
                     reader delivers, so the fair comparison for the reader's headline figure.
            image32  the composed model image (`compose_image`: kaggle part standardised), float32
                     (1, 4F, width), e.g. (1, 400, 812) = 1.3 MB: what most notebooks saved and fed.
  read    shuffled DataLoader(batch_size=32, num_workers=2), `np.load` per sample, default collate;
          timed from the first batch on (worker start-up excluded) to `--batches` batches later

Example:
  python benchmarks/npy_baseline.py --store /tmp/hms-reader-bench/specs.zarr --out /tmp/hms-reader-bench/npy
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hms_train.image.compose import compose_image
from hms_train.data.reader import Selection, StoreReader

DEFAULT_INPUTS = "eeg_10s,eeg_30s,kaggle"
FORMATS = ("parts16", "image32")


def export_npy(store: str, inputs: Sequence[str], out: Path, file_format: str = "parts16",
               max_rows: int | None = None) -> list[Path]:
    """One `{row}.npy` per built row (the first `max_rows` if given) in `file_format` (parts16 or
    image32, see the module docstring); reuses files already there. Returns the files."""
    if file_format not in FORMATS:
        raise ValueError(f"unknown format {file_format!r}; one of {FORMATS}")
    reader = StoreReader(store, inputs)
    rows = reader.select(Selection())[:max_rows]
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{row}.npy" for row in rows]
    if all(f.exists() for f in files):
        return files
    for batch in reader.batches(rows, 64, shuffle=False):
        if file_format == "parts16":
            samples = np.concatenate([batch[name].numpy() for name in inputs], axis=-1)
        else:
            samples = compose_image(batch, inputs, {name: reader.descriptions[name].normalise for name in inputs}).numpy()
        for row, sample in zip(batch["row"].tolist(), samples):
            np.save(out / f"{row}.npy", sample)
    return files


class NpyDataset(Dataset):
    """The notebooks' dataset: one `np.load` per sample."""

    def __init__(self, files: Sequence[Path]):
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.load(self.files[index]))


def run_npy_baseline(files: Sequence[Path], batch_size: int = 32, batches: int = 50, workers: int = 2) -> dict:
    """Samples/s of a shuffled DataLoader over `files`, epoch after epoch as needed, and its CPU time per
    sample: this process's during the timed batches plus its workers' whole lives (start-up and the
    untimed first batch included, a few per cent here)."""
    pin = torch.cuda.is_available()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    loader = DataLoader(NpyDataset(files), batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    stream = _endless(loader)
    next(stream)  # workers started, first batch in: the clock starts here
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(stream)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    stream.close()
    del stream, loader  # shuts the workers down and reaps them, so that their CPU time is counted
    cpu += _cpu_seconds(resource.getrusage(resource.RUSAGE_CHILDREN)) - _cpu_seconds(children_before)
    samples = batches * batch_size
    return {"samples_per_s": samples / seconds, "cpu_us_per_sample": cpu / samples * 1e6, "seconds": seconds,
            "batch_size": batch_size, "batches": batches, "workers": workers, "files": len(files),
            "bytes_per_sample": int(np.load(files[0], mmap_mode="r").nbytes)}


def _cpu_seconds(usage) -> float:
    return usage.ru_utime + usage.ru_stime


def _endless(loader: DataLoader):
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="Store built by hms-prep build.")
    parser.add_argument("--out", type=Path, required=True, help="Folder for the .npy files (reused if complete).")
    parser.add_argument("--inputs", default=DEFAULT_INPUTS, help="Parts to export, comma-separated.")
    parser.add_argument("--format", choices=FORMATS, default="parts16", help="File contents (see above).")
    parser.add_argument("--rows", type=int, default=None, help="Export only the first ROWS built rows.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=50, help="Timed batches.")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args()
    files = export_npy(args.store, args.inputs.split(","), args.out, args.format, args.rows)
    result = run_npy_baseline(files, args.batch_size, args.batches, args.workers)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{len(files)} {args.format} .npy files of {result['bytes_per_sample'] / 1024:.0f} KiB, DataLoader with "
              f"{args.workers} workers, batch {args.batch_size}: {result['samples_per_s']:,.0f} samples/s "
              f"({result['cpu_us_per_sample']:.0f} us CPU per sample)")


if __name__ == "__main__":
    main()
