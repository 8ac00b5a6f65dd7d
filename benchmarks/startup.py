"""What a user waits for before and around the work: `--help`, a repeated build, and where a small
build is faster in this process than on a local Dask cluster (the crossover behind
hms_prep.building.execute.IN_PROCESS_ROWS).

Every figure is the wall time of a new Python process, as a user starts it:
  help            `python -m hms_prep.cli build --help` (median of --repeat)
  start-up        a process importing what a build that computes imports (the CLI, the build, torch,
                  scipy.signal): the fixed cost of an in-process build (median of --repeat)
  build, N rows   a whole first build of N label rows (default arrays: --windows 10,30, Kaggle, raw),
                  forced in this process (serially, one core) and forced onto a local cluster of
                  --workers processes, side by side on the same data, alternating
  no-op build     the same build again: nothing to compute (median of --repeat)

Examples:
  python benchmarks/startup.py                      # 20, 50, 100 synthetic EEGs
  python benchmarks/startup.py --eegs 10,40 --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# A build forced onto one path; the CLI chooses by IN_PROCESS_ROWS itself.
FORCED_BUILD = """
import sys
from hms_prep.building.run import BuildConfig, run_build
data, store, workers, in_process = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
summary = run_build(BuildConfig(data_dir=data, store=store, workers=workers, in_process=in_process))
print(summary.rows_computed)
"""


COMPUTING_IMPORTS = "import hms_prep.cli, hms_prep.building.run, hms_prep.building.task, torch, scipy.signal"


def wall(command: list[str]) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - began, done.stdout


def median_wall(command: list[str], repeat: int) -> float:
    return float(np.median([wall(command)[0] for _ in range(repeat)]))


def ensure_data(folder: Path, eegs: int) -> Path:
    data = folder / f"eegs{eegs}"
    if not (data / "train.csv").is_file():
        subprocess.run([sys.executable, "-m", "hms_prep.cli", "synth", str(data), "--eegs", str(eegs)], check=True,
                       stdout=subprocess.DEVNULL)
    return data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eegs", default="20,50,100", help="dataset sizes, synthetic train EEGs")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/hms-bench/startup"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    cli = [sys.executable, "-m", "hms_prep.cli"]
    result = {"help_s": median_wall([*cli, "build", "--help"], args.repeat),
              "startup_s": median_wall([sys.executable, "-c", COMPUTING_IMPORTS], args.repeat), "sizes": []}
    for eegs in (int(e) for e in args.eegs.split(",")):
        data = ensure_data(args.folder, eegs)
        row = {"eegs": eegs}
        for path, in_process in (("in_process", "1"), ("cluster", "0")):
            store = args.folder / f"eegs{eegs}_{path}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            seconds, out = wall([sys.executable, "-c", FORCED_BUILD, str(data), str(store), str(args.workers),
                                 in_process])
            row["rows"] = int(out.split()[-1])
            row[f"{path}_s"] = seconds
        store = args.folder / f"eegs{eegs}_cluster.zarr"
        row["noop_s"] = median_wall([*cli, "build", "--data", str(data), "--store", str(store), "--quiet"],
                                    args.repeat)
        result["sizes"].append(row)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"`hms-prep build --help`   {result['help_s']:.2f} s")
    print(f"start-up of a computing build (imports) {result['startup_s']:.2f} s")
    print(f"{'rows':>6} {'in process':>11} {'cluster':>9} {'faster':>11} {'no-op build':>12}   (whole-process wall seconds, "
          f"cluster of {args.workers} workers)")
    for row in result["sizes"]:
        faster = "in process" if row["in_process_s"] < row["cluster_s"] else "cluster"
        print(f"{row['rows']:6d} {row['in_process_s']:10.1f}s {row['cluster_s']:8.1f}s {faster:>11} {row['noop_s']:11.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
