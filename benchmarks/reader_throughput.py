"""The trainer's data path against the public-notebook baseline, on one store.

Builds a synthetic store (`hms-prep synth` data, >= 300 EEGs; a minute or two on 2 cores) unless
`--store` names one, then prints:
  reader      samples/s from the store to a ready batch on the device (`hms-train bench`'s headline)
  composed    the same + compose_image (the model's float32 image, 400 x 812 for eeg_10s,eeg_30s,kaggle)
  augmented   the same + the training augmentations
  baselines   one .npy file per sample through a 2-worker torch DataLoader (benchmarks/npy_baseline.py):
              parts16, the same float16 bytes the reader delivers, and image32, the composed float32
              image most notebooks saved
and the ratios reader / parts16 baseline (like for like) and composed / image32 baseline (both deliver
the model's float32 image). Both read files the operating system has just written or read, so both
come from the page cache; `--cold` evicts the store's and the .npy files from it first (posix_fadvise)
so that both read from disk (only the first epoch is cold: keep --batches + 3 below one epoch's batches).

Examples:
  python benchmarks/reader_throughput.py                              # build /tmp/hms-reader-bench, run all
  python benchmarks/reader_throughput.py --store cache/specs.zarr --batches 200 --augment
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from statistics import median

from hms_train.run.bench import run_bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
from npy_baseline import DEFAULT_INPUTS, FORMATS, export_npy, run_npy_baseline  # noqa: E402


def build_store(workdir: Path, eegs: int, workers: int) -> str:
    """A synthetic train store in `workdir` (reused when already built)."""
    from hms_prep.building.run import BuildConfig, run_build
    from hms_prep.store.layout import store_exists
    from hms_prep.synth.dataset import synthesize

    data, store = workdir / "data", str(workdir / "specs.zarr")
    if not (data / "train.csv").exists():
        synthesize(data, n_eegs=eegs, seed=0)
    if not store_exists(store) or not (Path(store) / "labels.parquet").exists():
        started = time.perf_counter()
        run_build(BuildConfig(data_dir=str(data), store=store, windows=(10, 30), workers=workers))
        print(f"built {store} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return store


def evict_from_page_cache(folder: Path) -> None:
    """Ask the kernel to drop these files' cached pages, so the next read comes from disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=None, help="Use this store instead of building a synthetic one.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hms-reader-bench"),
                        help="Where the synthetic data, store and .npy files go.")
    parser.add_argument("--eegs", type=int, default=320, help="Synthetic EEGs to build (>= 300).")
    parser.add_argument("--build-workers", type=int, default=2)
    parser.add_argument("--inputs", default=DEFAULT_INPUTS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=100, help="Timed batches per figure.")
    parser.add_argument("--threads", type=int, default=4, help="Reader decoding threads.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeat", type=int, default=1,
                        help="Measure the reader and the parts16 baseline this many times, alternating, and "
                             "report the medians (for shared, noisy machines).")
    parser.add_argument("--cold", action="store_true", help="Evict the files from the page cache before each run.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    store = args.store or build_store(args.workdir, args.eegs, args.build_workers)
    inputs = args.inputs.split(",")
    files = {fmt: export_npy(store, inputs, args.workdir / f"npy_{fmt}", fmt) for fmt in FORMATS}

    def measure_reader(compose: bool) -> dict:
        if args.cold:
            evict_from_page_cache(Path(store))
        return run_bench(store, inputs, args.batch_size, args.batches, args.device, args.augment, args.threads,
                         compose=compose)

    def measure_baseline(fmt: str) -> dict:
        if args.cold:
            evict_from_page_cache(args.workdir / f"npy_{fmt}")
        return run_npy_baseline(files[fmt], args.batch_size, args.batches, workers=2)

    # Alternate the like-for-like pair so that both see the same background load; the headline figures
    # become the medians over the pairs, the ratio the median of the pairs' ratios.
    pairs = [(measure_reader(compose=False), measure_baseline("parts16")) for _ in range(args.repeat - 1)]
    reader = measure_reader(compose=True)
    baselines = {fmt: measure_baseline(fmt) for fmt in FORMATS}
    pairs.append((reader, baselines["parts16"]))
    runs = [{"reader": r["samples_per_s"], "baseline": b["samples_per_s"], "reader_cpu_us": r["cpu_us_per_sample"],
             "baseline_cpu_us": b["cpu_us_per_sample"]} for r, b in pairs]
    for key in ("samples_per_s", "cpu_us_per_sample"):
        reader[key] = median([r[key] for r, _ in pairs])
        baselines["parts16"][key] = median([b[key] for _, b in pairs])
    ratio = median([run["reader"] / run["baseline"] for run in runs])
    composed_ratio = reader["samples_per_s_composed"] / baselines["image32"]["samples_per_s"]

    if args.json:
        print(json.dumps({"reader": reader, "npy_baseline": baselines, "ratio": ratio,
                          "composed_ratio": composed_ratio, "runs": runs, "cold": args.cold}))
        return
    print(f"{store}: {','.join(inputs)}, batch {args.batch_size}, {args.batches} batches, device {reader['device']}, "
          f"{'cold' if args.cold else 'page-cached'} files, {os.cpu_count()} CPUs, "
          f"reader and parts16: medians of {args.repeat}")
    rows = [
        ("reader -> batch on device", reader["samples_per_s"], reader["cpu_us_per_sample"]),
        ("  + compose_image", reader["samples_per_s_composed"], None),
        ("  + augmentations", reader["samples_per_s_augmented"], None),
        *((f"npy baseline, {fmt} files", baselines[fmt]["samples_per_s"], baselines[fmt]["cpu_us_per_sample"])
          for fmt in FORMATS),
    ]
    print(f"  {'':36s} {'samples/s':>9s}  CPU us/sample")
    for name, value, cpu in rows:
        if value is not None:
            print(f"  {name:36s} {value:9,.0f}  {'' if cpu is None else f'{cpu:13.0f}'}")
    cpu_ratio = baselines["parts16"]["cpu_us_per_sample"] / reader["cpu_us_per_sample"]
    print(f"  reader / parts16 baseline            {ratio:9.2f} x  {cpu_ratio:12.2f} x less CPU per sample")
    if len(runs) > 1:
        print("  pairs (reader, baseline samples/s): "
              + ", ".join(f"({run['reader']:,.0f}, {run['baseline']:,.0f})" for run in runs))
    print(f"  composed / image32 baseline          {composed_ratio:9.2f} x")
    print("  seconds in the reader's last pass: "
          + ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in reader["seconds"].items()))


if __name__ == "__main__":
    main()
