"""Throughput of `hms-prep build`: label rows/s, where the time goes, peak memory and bytes per row.

Builds a store from a synthetic Kaggle folder (made with `hms_prep.synth` unless `--data` already
has a train.csv), then builds it again with the same parameters, which must compute nothing but
retries of the rows that failed (the exit status is 1 otherwise).

What is printed, and how it is measured:
  cluster start   the build's local Dask cluster (hms_prep.building.execute.OnDask) is started here and
                  handed to the build as its scheduler, so the build's seconds exclude worker start-up
  build           `run_build`'s wall seconds (plan, tasks, labels.parquet) and label rows/s from them
  stages          seconds summed over all tasks: worker-seconds, not wall time; divided by the
                  workers they estimate the wall time of a perfectly balanced, start-up-free build
  peak RSS        resident memory of this process plus every descendant (the Dask worker processes),
                  sampled every 0.2 s; a sum of RSS counts shared library pages once per process
  bytes per row   bytes of each array's folder on disk (file sizes) / store rows; MB = 10^6 bytes
  --baseline N    the public-notebook way on N rows spread evenly over the rows just built (0: all of
                  them), one process: per row, read its EEG and its Kaggle spectrogram with pyarrow,
                  16 bipolar signals, librosa mel + dB per signal for the 10 s and 30 s windows, the
                  Kaggle crop; nothing is written. The ratio build rows/s / notebook rows/s comes
                  from this one run, on the same data and the same machine load
  no-op build     `hms-prep build` with the same parameters as a fresh process (python start, imports,
                  planning, nothing to compute): the wall time a user waits for a repeated build

Examples:
  python benchmarks/build_throughput.py                     # 300 EEGs, 2 workers, --windows 10,30
  python benchmarks/build_throughput.py --baseline 200 --json
"""

from __future__ import annotations

import os

# One BLAS thread per process, as in the Dask workers (their nanny sets the same variables): on a
# shared 2-core machine a multi-threaded OpenBLAS spins, and made the baseline's librosa 20x slower.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # everything below imports after the thread settings, as they must precede numpy
import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from hms_prep.building.execute import OnDask
from hms_prep.building.run import BuildConfig, run_build
from hms_prep.cli import ROWS_FAILED_EXIT
from hms_prep.domain import CHAINS, LABEL_WINDOW_S, SAMPLE_RATE, SPEC_WINDOW_S
from hms_prep.sources.kaggle import EEG_COLUMNS, eeg_path, spectrogram_path
from hms_prep.sources.montage import BIPOLAR_PAIRS
from hms_prep.store.codecs import AUTO, CODECS, POLICIES
from hms_prep.store.arrays import data_array_names
from hms_prep.store.layout import open_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak_memory import PeakMemory  # noqa: E402

STAGE_ORDER = ("read", "montage", "spectrogram", "kaggle", "write")
MB = 1e6


def ensure_data(data: Path, eegs: int) -> int:
    """Reuse `data` if it has a train.csv, else synthesize `eegs` EEGs into it; returns its train EEGs."""
    if not (data / "train.csv").is_file():
        from hms_prep.synth.dataset import synthesize

        print(f"synthesizing {eegs} EEGs into {data} ...", file=sys.stderr)
        summary = synthesize(data, n_eegs=eegs)
        print(f"  {summary.train_rows} label rows in {summary.seconds:.1f} s", file=sys.stderr)
    return len(list((data / "train_eegs").glob("*.parquet")))


def array_bytes(store: Path) -> dict[str, int]:
    """Bytes on disk (file sizes) of each top-level entry of the store: arrays, _build, labels.parquet."""
    sizes = {}
    for entry in sorted(store.iterdir()):
        files = [entry] if entry.is_file() else [f for f in entry.rglob("*") if f.is_file()]
        sizes[entry.name] = sum(f.stat().st_size for f in files)
    return sizes


def run_benchmark(config: BuildConfig) -> dict:
    """Start a local cluster, build, build again; returns every measured figure."""
    workers = config.workers
    with PeakMemory() as memory:
        began = time.perf_counter()
        if config.device is not None:  # no cluster: this process computes
            cluster_s, first, second = 0.0, run_build(config), run_build(config)
        else:
            # The build's own cluster set-up, started here so that its start-up is timed apart.
            dask = OnDask(config, say=lambda message: None)
            try:
                dask.start()
                address = dask.client.scheduler.address
                cluster_s = time.perf_counter() - began
                built = replace(config, scheduler=address)
                first = run_build(built)
                second = run_build(built)
            finally:
                dask.close()
    rows = first.rows_computed
    rank = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    stages = dict(sorted(first.stage_seconds.items(), key=lambda item: rank.get(item[0], len(rank))))
    worker_s = sum(stages.values())
    sizes = array_bytes(Path(config.store_url))
    arrays = {n: sizes[n] for n in data_array_names(open_store(config.store_url)[0])}
    return {
        "store": config.store_url,
        "workers": workers,
        "device": config.device,
        "windows": list(config.windows),
        "codec": config.codec,
        "chunk_rows": config.chunk_rows,
        "store_rows": first.rows,
        "rows_computed": rows,
        "rows_failed": len(first.failed_rows()),
        "cluster_start_s": cluster_s,
        "build_s": first.seconds,
        "rows_per_s": rows / first.seconds,
        "rows_per_s_with_cluster_start": rows / (first.seconds + cluster_s),
        "stage_worker_s": stages,
        "stage_ms_per_row": {s: 1000 * v / rows for s, v in stages.items()},
        "worker_s_total": worker_s,
        "rows_per_s_from_worker_s": rows * workers / worker_s,
        "peak_rss_bytes": memory.peak_bytes,
        "peak_rss_processes": memory.peak_processes,
        "peak_rss_driver_bytes": memory.driver_bytes,
        "bytes_per_row": {n: b / first.rows for n, b in arrays.items()},
        "array_mb_per_row": sum(arrays.values()) / first.rows / MB,
        "store_mb_per_row": first.store_bytes / first.rows / MB,
        "second_build_s": second.seconds,
        "second_build_rows_computed": second.rows_computed,
        "second_build_computed": second.computed,
    }


def noop_build_seconds(config: BuildConfig, repeat: int = 3) -> float:
    """Median wall seconds of `hms-prep build` as a new process on a complete store (nothing to do but
    retry the rows that failed: exit status 3, hms_prep.cli.ROWS_FAILED_EXIT)."""
    command = [sys.executable, "-m", "hms_prep.cli", "build", "--data", config.data_dir, "--store", config.store_url,
               "--windows", ",".join(map(str, config.windows)), "--codec", config.codec,
               *(["--chunk-rows", str(config.chunk_rows)] if config.chunk_rows else []), "--quiet"]
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode not in (0, ROWS_FAILED_EXIT):
            raise RuntimeError(f"the repeated build failed (exit {done.returncode}): {done.stderr[-2000:]}")
        seconds.append(time.perf_counter() - began)
    return float(np.median(seconds))


def baseline(data: Path, n_rows: int) -> dict:
    """Rows/s of the public-notebook loop on `n_rows` rows spread evenly over train.csv (0: every
    row), one process."""
    import warnings

    import librosa
    import pyarrow.csv as pacsv

    # The notebook's 100 mel bands under 20 Hz leave some filters empty: librosa warns on every call.
    warnings.filterwarnings("ignore", message="Empty filters detected")

    table = pacsv.read_csv(data / "train.csv")
    if 0 < n_rows < table.num_rows:
        table = table.take(np.linspace(0, table.num_rows - 1, n_rows).round().astype(np.int64))
    columns = {c: table.column(c).to_numpy() for c in
               ("eeg_id", "eeg_label_offset_seconds", "spectrogram_id", "spectrogram_label_offset_seconds")}
    began = time.perf_counter()
    for i in range(table.num_rows):
        eeg = _read_matrix(eeg_path(data, "train", int(columns["eeg_id"][i])), EEG_COLUMNS)
        centre = int((columns["eeg_label_offset_seconds"][i] + LABEL_WINDOW_S / 2) * SAMPLE_RATE)
        for window_s in (10, 30):
            _notebook_mel(librosa, eeg, centre, window_s)
        _notebook_kaggle_crop(spectrogram_path(data, "train", int(columns["spectrogram_id"][i])),
                              float(columns["spectrogram_label_offset_seconds"][i]))
    seconds = time.perf_counter() - began
    return {"rows": table.num_rows, "seconds": seconds, "rows_per_s": table.num_rows / seconds}


def _read_matrix(path: Path, names) -> np.ndarray:
    table = pq.read_table(path)
    return np.stack([table.column(n).to_numpy(zero_copy_only=False) for n in names], axis=1).astype(np.float32)


_ELECTRODE = {name: i for i, name in enumerate(EEG_COLUMNS)}


def _notebook_mel(librosa, eeg: np.ndarray, centre: int, window_s: int) -> np.ndarray:
    """(4, 100, 256): per bipolar signal mel + dB ref max, (dB+40)/40, the chain's 4 signals averaged."""
    half = window_s * SAMPLE_RATE // 2
    image = np.zeros((len(CHAINS), 100, 256), dtype=np.float32)
    for k, (a, b) in enumerate(BIPOLAR_PAIRS):
        x = eeg[centre - half : centre + half, _ELECTRODE[a]] - eeg[centre - half : centre + half, _ELECTRODE[b]]
        mean = np.nanmean(x) if np.isfinite(x).any() else 0.0
        x = np.nan_to_num(x, nan=mean)
        mel = librosa.feature.melspectrogram(y=x, sr=SAMPLE_RATE, hop_length=len(x) // 256, n_fft=1024,
                                             n_mels=100, fmin=0, fmax=20, win_length=128)
        db = librosa.power_to_db(mel, ref=np.max).astype(np.float32)[:, :256]
        image[k // 4] += (db + 40) / 40 / 4
    return image


def _notebook_kaggle_crop(path: Path, offset: float) -> np.ndarray:
    table = pq.read_table(path)
    time_s = table.column("time").to_numpy()
    power = np.stack([table.column(i).to_numpy(zero_copy_only=False) for i in range(1, table.num_columns)], axis=1)
    crop = power[(time_s >= offset) & (time_s < offset + SPEC_WINDOW_S)]
    return np.log1p(np.nan_to_num(crop, nan=0.0)).T.reshape(len(CHAINS), 100, -1)


def print_report(result: dict) -> None:
    rows = result["rows_computed"]
    print(f"store {result['store']}: {result['store_rows']} rows, windows {result['windows']}, kaggle + raw, "
          f"codec {result['codec']}, chunk_rows {result['chunk_rows']}, {result['workers']} workers")
    print(f"cluster start        {result['cluster_start_s']:7.1f} s")
    print(f"build                {result['build_s']:7.1f} s  {rows} rows computed, {result['rows_failed']} failed")
    print(f"label rows/s         {result['rows_per_s']:7.1f}  (build wall time, cluster start excluded)")
    print(f"                     {result['rows_per_s_with_cluster_start']:7.1f}  (cluster start included)")
    print(f"                     {result['rows_per_s_from_worker_s']:7.1f}  (rows / (worker-seconds / workers))")
    print("stage      worker-s   ms/row   share")
    for stage, seconds in result["stage_worker_s"].items():
        print(f"  {stage:<11}{seconds:7.1f}  {result['stage_ms_per_row'][stage]:7.2f}  "
              f"{100 * seconds / result['worker_s_total']:5.1f} %")
    print(f"  {'total':<11}{result['worker_s_total']:7.1f}  {1000 * result['worker_s_total'] / rows:7.2f}")
    print(f"peak RSS             {result['peak_rss_bytes'] / 2**20:7.0f} MiB  "
          f"(sum over {result['peak_rss_processes']} processes: this one and its descendants; "
          f"this one alone {result['peak_rss_driver_bytes'] / 2**20:.0f} MiB)")
    print("bytes per row")
    for name, value in result["bytes_per_row"].items():
        print(f"  {name:<11}{value / MB:7.3f} MB")
    print(f"  {'arrays':<11}{result['array_mb_per_row']:7.3f} MB  (whole store {result['store_mb_per_row']:.3f} MB)")
    again = result["second_build_rows_computed"]
    retried = f" ({', '.join(result['second_build_computed'])}: failed rows are retried by design)" if again else ""
    print(f"second build         {result['second_build_s']:7.2f} s  {again} rows computed{retried}")
    if "noop_build_s" in result:
        print(f"no-op build, new process {result['noop_build_s']:7.2f} s  (hms-prep build again: start, imports, plan)")
    if "baseline" in result:
        b = result["baseline"]
        print(f"baseline (notebook loop, 1 process): {b['rows']} of the same rows in {b['seconds']:.1f} s = "
              f"{b['rows_per_s']:.2f} rows/s")
        print(f"build / notebook     {result['rows_per_s'] / b['rows_per_s']:7.1f} x  (cluster start excluded)")
        print(f"                     {result['rows_per_s_with_cluster_start'] / b['rows_per_s']:7.1f} x  "
              f"(cluster start included)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eegs", type=int, default=300, help="train EEGs to synthesize if --data has no train.csv")
    parser.add_argument("--data", type=Path, default=Path("/tmp/hms-bench/data"), help="Kaggle-layout folder")
    parser.add_argument("--store", type=Path, default=Path("/tmp/hms-bench/specs.zarr"),
                        help="store to build (deleted first unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep an existing store (the build completes it)")
    parser.add_argument("--workers", type=int, default=2, help="local Dask worker processes")
    parser.add_argument("--windows", default="10,30", help="EEG window lengths in seconds")
    parser.add_argument("--codec", default=AUTO, choices=[*POLICIES, *sorted(CODECS)])
    parser.add_argument("--chunk-rows", type=int, default=BuildConfig.chunk_rows)
    parser.add_argument("--baseline", type=int, default=None, metavar="N",
                        help="also time the public-notebook loop on N of the same rows, 0 = all (needs librosa)")
    parser.add_argument("--device", default=None, help="build with --device (cpu, cuda): in this process")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)

    n_eegs = ensure_data(args.data, args.eegs)
    if args.store.exists() and not args.keep:
        shutil.rmtree(args.store)
    config = BuildConfig(data_dir=str(args.data), store=str(args.store),
                         windows=tuple(int(w) for w in args.windows.split(",")),
                         chunk_rows=args.chunk_rows, codec=args.codec, workers=args.workers, device=args.device,
                         in_process=False if args.device is None else None)
    result = {"data": str(args.data), "train_eegs": n_eegs, **run_benchmark(config)}
    result["noop_build_s"] = noop_build_seconds(config)
    if args.baseline is not None:
        result["baseline"] = baseline(args.data, args.baseline)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"data {args.data}: {n_eegs} train EEGs")
        print_report(result)
    # The second build may only retry the rows that failed; anything more is a bug.
    return 0 if result["second_build_rows_computed"] <= result["rows_failed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
