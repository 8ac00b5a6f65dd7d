"""What a corrected train.csv costs: the build that applies it against building the store again.

Builds a store from a synthetic Kaggle folder (`--eegs` recordings, eeg_10s + eeg_30s + kaggle + raw), then
corrects train.csv the way a data fix does (one line's offset moved 2 s earlier, one line removed, one new
line), and times, in the same run on the same machine:
  change    `hms-prep build` on the existing store: the changed and new rows computed, the rest reused
  rebuild   a new store built from the corrected train.csv (what the only way used to be)
Printed: rows computed and wall seconds of each, the ratio rebuild / change, and the store's bytes before
and after the change (the relocated raw segments leave their old region unread).

Both builds run in this process on one thread (`--workers 1`, in process), so the ratio compares work,
not cluster start-up.

Example:
  python benchmarks/row_change.py --eegs 120
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from hms_prep.building.run import BuildConfig, run_build  # noqa: E402
from hms_prep.synth.dataset import synthesize  # noqa: E402


def correct(train_csv: Path) -> None:
    """The latest-offset line 2 s earlier, the middle line removed, a copy of line 3 under a new label_id."""
    with open(train_csv) as f:
        lines = list(csv.DictReader(f))
    latest = max(range(len(lines)), key=lambda i: float(lines[i]["eeg_label_offset_seconds"]))
    lines[latest]["eeg_label_offset_seconds"] = str(float(lines[latest]["eeg_label_offset_seconds"]) - 2)
    lines = [line for i, line in enumerate(lines) if i != len(lines) // 2] + [dict(lines[3], label_id="1")]
    with open(train_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(lines[0]))
        writer.writeheader()
        writer.writerows(lines)


def timed_build(data: Path, store: Path) -> dict:
    started = time.perf_counter()
    summary = run_build(BuildConfig(data_dir=str(data), store=str(store), windows=(10, 30), workers=1,
                                    in_process=True))
    if not summary.complete or summary.crashed:
        raise SystemExit(f"the build did not finish: {summary.crash_line()}")
    return {"rows_computed": summary.rows_computed, "seconds": round(time.perf_counter() - started, 2),
            "store_bytes": summary.store_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eegs", type=int, default=120, help="synthetic recordings (about 6 label rows each)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = folder / "data"
        synthesize(data, n_eegs=args.eegs, seed=11, n_test=1)
        store = folder / "specs.zarr"
        first = timed_build(data, store)
        correct(data / "train.csv")
        change = timed_build(data, store)
        rebuild = timed_build(data, folder / "rebuilt.zarr")
        shutil.rmtree(folder / "rebuilt.zarr")
    result = {"eegs": args.eegs, "rows": first["rows_computed"], "first_build": first, "change": change,
              "rebuild": rebuild, "rebuild_over_change": round(rebuild["seconds"] / change["seconds"], 1),
              "extra_bytes": change["store_bytes"] - first["store_bytes"]}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"store of {result['rows']} rows ({args.eegs} EEGs), one thread, in process")
    print(f"  change  : {change['rows_computed']:5d} rows computed in {change['seconds']:7.2f} s")
    print(f"  rebuild : {rebuild['rows_computed']:5d} rows computed in {rebuild['seconds']:7.2f} s")
    print(f"  rebuild / change: {result['rebuild_over_change']}x; the change grew the store by "
          f"{result['extra_bytes'] / 2**20:.1f} MiB ({first['store_bytes'] / 2**20:.1f} MiB before)")


if __name__ == "__main__":
    main()
