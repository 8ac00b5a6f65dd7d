"""Growth: a build of >= 10,000 label rows, and what a user does with the store after it.

Synthesizes a Kaggle-layout folder big enough (hms-prep synth makes about 5 label rows per EEG; the
folder is reused when it has a train.csv), builds it with the default arrays (--windows 10,30, Kaggle,
raw) on a local cluster started by the build itself, then times `info`, `verify` and the trainer's
reader start (`hms_train.data.reader.StoreReader(url, inputs)`: opening the store, labels.parquet, decoders).

What is printed, and how it is measured:
  rows/s          label rows / `run_build` wall seconds (cluster start included: the build starts it)
  peak memory     the largest resident set size (RSS) each process reached, sampled every 0.2 s: the
                  driver (this process) and every Dask worker process by pid
  store           bytes on disk; the driver's peak is compared with it (it must stay far below)
  info, verify    `hms_prep.store.audit.store_info` and `verify_store` in this process, wall seconds
  reader start    StoreReader construction for eeg_10s, eeg_30s, kaggle, wall seconds

Examples:
  python benchmarks/growth.py                         # 2,050 EEGs, about 10,200 rows, 2 workers
  python benchmarks/growth.py --eegs 400 --json       # a smaller run
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # as in the Dask workers; must precede numpy

import argparse  # noqa: E402  (after the thread settings)
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from hms_prep.store.audit import store_info, verify_store  # noqa: E402
from hms_prep.building.run import BuildConfig, run_build  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak_memory import PeakMemory  # noqa: E402

READER_INPUTS = ("eeg_10s", "eeg_30s", "kaggle")


def timed(function, *args):
    began = time.perf_counter()
    value = function(*args)
    return time.perf_counter() - began, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eegs", type=int, default=2050, help="train EEGs to synthesize (about 5 rows each)")
    parser.add_argument("--data", type=Path, default=None, help="Kaggle-layout folder (default /tmp/hms-bench/growth-N)")
    parser.add_argument("--store", type=Path, default=None, help="store to build (deleted first)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    data = args.data or Path(f"/tmp/hms-bench/growth-{args.eegs}")
    store = args.store or data.with_name(data.name + ".zarr")

    result: dict = {"data": str(data), "store": str(store), "workers": args.workers}
    if not (data / "train.csv").is_file():
        from hms_prep.synth.dataset import synthesize

        print(f"synthesizing {args.eegs} EEGs into {data} ...", file=sys.stderr)
        result["synth_s"], _ = timed(synthesize, data, args.eegs)
    shutil.rmtree(store, ignore_errors=True)
    config = BuildConfig(data_dir=str(data), store=str(store), workers=args.workers, in_process=False)
    with PeakMemory() as memory:
        build_s, summary = timed(run_build, config)
    result.update(rows=summary.rows_computed, rows_failed=len(summary.failed_rows()), build_s=build_s,
                  rows_per_s=summary.rows_computed / build_s, store_bytes=summary.store_bytes,
                  stage_worker_s=summary.stage_seconds, driver_peak_bytes=memory.driver_bytes,
                  worker_peak_bytes=sorted(memory.dask_workers().values(), reverse=True))
    result["info_s"], _ = timed(store_info, str(store))
    result["verify_s"], problems = timed(verify_store, str(store))
    result["verify_problems"] = len(problems)
    from hms_train.data.reader import StoreReader  # the trainer's side, as a user would start it

    result["reader_start_s"], _ = timed(StoreReader, str(store), READER_INPUTS)

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        mib = 2**20
        print(f"{data}: {result['rows']} label rows built, {result['rows_failed']} failed, {args.workers} workers")
        print(f"build                {build_s:8.1f} s  {result['rows_per_s']:.1f} rows/s (cluster start included)")
        print(f"store                {summary.store_bytes / mib:8.0f} MiB")
        print(f"driver peak RSS      {memory.driver_bytes / mib:8.0f} MiB")
        for i, peak in enumerate(result["worker_peak_bytes"]):
            print(f"worker {i} peak RSS    {peak / mib:8.0f} MiB")
        print(f"info                 {result['info_s']:8.2f} s")
        print(f"verify               {result['verify_s']:8.2f} s  ({len(problems)} problems)")
        print(f"reader start         {result['reader_start_s']:8.2f} s  (StoreReader(url, {list(READER_INPUTS)}))")
    return 0 if summary.ok and not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
