"""Three figures that slipped once (issue 27), this code against another checkout, alternating, with the CPU
time of each command beside its wall time (CPU time moves far less than wall time on a shared machine):
  noop        `hms-prep build` again on a built train store: nothing to compute (a new process)
  test1       `hms-prep build --split test` of a folder with one test EEG into a new store (a new process)
  state       reading a build-state array of the competition's size (3,338 chunk files, as `read_state`
              does 20-28 times in a no-op build there): CPU ms per array, in a process of its own
  reader      `hms-train bench --inputs eeg_10s,eeg_30s,kaggle --batch-size 32 --device cpu`: samples/s and
              CPU us per sample, reader to a ready batch (the page cache warm: the store was just read)
With `--store DATA:STORE` (repeatable: built train stores of different sizes, e.g. `synth --like competition
--fraction 0.01` and `0.05`) only the two commands that must not grow with the rows are timed, each code on
the same store (the store's format is the same): `build` again (no-op) and `info`; CPU seconds per store, and
the growth in CPU ms per 1,000 rows between the smallest and largest store, with the figure it extrapolates
to at the competition's 106,800 rows (docs/performance.md, "At the competition's size").

Each code builds its own train store from the same synthetic data (a store of one code may not open with
the other). `--old DIR` is a checkout of the other code (`git worktree add /tmp/old <commit>`); it runs
with this virtual environment's packages (PYTHONPATH=DIR first). Without --old only this code is measured.

Examples:
  python benchmarks/side_by_side.py --old /tmp/old --repeat 3
  python benchmarks/side_by_side.py --work /tmp/sbs --repeat 5     # this code alone
  python benchmarks/side_by_side.py --old /tmp/old --store d0.01:s0.01.zarr --store d0.05:s0.05.zarr
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def run(argv: list, code: Path | None) -> tuple[float, float, str]:
    """Wall and CPU seconds (the command and what it waited for) of one new process, and its output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # .pyc cached, as installed
    if code is not None:
        env["PYTHONPATH"] = str(code)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))}: exit {done.returncode}\n{done.stdout[-1500:]}{done.stderr[-1500:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, done.stdout


# The build state of one array at the competition's size (106,800 rows in 32-row chunks), made once per code
# by that code's own `create_build_state`, then read whole as a no-op build does; prints CPU ms per array.
STATE_READ = """
import os, sys, time
import zarr
from hms_prep.store.build_state import create_build_state, open_build_state, read_state
from hms_prep.store.layout import StoreLayout
path = sys.argv[1]
if not os.path.exists(path):
    state = create_build_state(zarr.open_group(path, mode="w"), "eeg_10s", StoreLayout("train", 106_800, 32, "", 5, "auto", 2000))
    state.done[:], state.status[:], state.repaired[:] = 1, 1, 0.0
state = open_build_state(zarr.open_group(path, mode="r"), "eeg_10s")
started = time.process_time()
for array in (state.done, state.status, state.repaired):
    read_state(array)
print((time.process_time() - started) / 3 * 1e3)
"""


FULL_ROWS = 106_800  # the competition's train.csv


def growth(stores: list[str], codes: dict, repeat: int, as_json: bool) -> None:
    """No-op build and `info` CPU seconds per store and code (median of `repeat`, alternating), and their
    growth per 1,000 rows."""
    from hms_prep.store.layout import open_store

    prep = BIN / "hms-prep"
    sized = []
    for given in stores:
        data, _, store = given.partition(":")
        if not store or not (Path(data) / "train.csv").is_file():
            raise SystemExit(f"--store {given}: give DATA:STORE, a Kaggle folder with train.csv and the store "
                             "built from it")
        sized.append((open_store(store)[1].n_rows, data, store))
    sized.sort()
    results: dict = {name: {} for name in codes}
    for _ in range(repeat):
        for rows, data, store in sized:
            for name, code in codes.items():  # alternating, so both see the same load
                got = results[name].setdefault(rows, {})
                for command, argv in (("noop", [prep, "build", "--data", data, "--store", store, "-q"]),
                                      ("info", [prep, "info", store])):
                    wall, cpu, _ = run(argv, code)
                    got.setdefault(f"{command} CPU s", []).append(cpu)
                    got.setdefault(f"{command} wall s", []).append(wall)
                    print(f"{name} {rows} rows {command} {wall:.2f} s, {cpu:.2f} CPU s", file=sys.stderr, flush=True)
    load = os.getloadavg()
    if as_json:
        print(json.dumps({"results": results, "load_average": load}))
        return
    print(f"median of {repeat}, alternating; load average {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}")
    (small, *_), (large, *_) = sized[0], sized[-1]
    for command in ("noop", "info"):
        for name in codes:
            cpu = {rows: statistics.median(results[name][rows][f"{command} CPU s"]) for rows, *_ in sized}
            cells = ", ".join(f"{rows} rows {cpu[rows]:.2f}" for rows in sorted(cpu))
            line = f"{command:5s} {name:5s} CPU s: {cells}"
            if large > small:
                slope = (cpu[large] - cpu[small]) / (large - small)
                line += (f"; {slope * 1e6:.1f} CPU ms per 1,000 rows, {cpu[small] + slope * (FULL_ROWS - small):.2f} "
                         f"CPU s at {FULL_ROWS:,} rows")
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, help="A checkout of the code to compare with.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hms-side-by-side"))
    parser.add_argument("--eegs", type=int, default=150, help="Train EEGs of the synthetic data (default 150)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--store", action="append", default=[], metavar="DATA:STORE",
                        help="A built train store and its data folder (repeatable): time only the no-op build and info")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.old is not None and not (args.old / "hms_prep").is_dir():
        parser.error(f"--old {args.old}: no hms_prep/ there; give a checkout of the project")
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    codes = {"this": None} | ({"old": args.old.resolve()} if args.old else {})
    if args.store:
        growth(args.store, codes, args.repeat, args.json)
        return
    prep, train = BIN / "hms-prep", BIN / "hms-train"
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data, one = work / "data", work / "one_test_eeg"
    if not (data / "train.csv").exists():
        run([prep, "synth", data, "--eegs", args.eegs, "--seed", 0], None)
    if not (one / "test.csv").exists():
        run([prep, "synth", one, "--eegs", 2, "--test-eegs", 1, "--seed", 1], None)
    for name, code in codes.items():
        store = work / f"{name}.zarr"
        if not (store / "zarr.json").exists():
            run([prep, "build", "--data", data, "--store", store, "-q"], code)
    results: dict[str, dict[str, list]] = {name: {} for name in codes}
    for _ in range(args.repeat):
        for name, code in codes.items():  # alternating, so both see the same load
            got = results[name]
            wall, cpu, _ = run([prep, "build", "--data", data, "--store", work / f"{name}.zarr", "-q"], code)
            got.setdefault("noop wall s", []).append(wall)
            got.setdefault("noop CPU s", []).append(cpu)
            print(f"{name} noop {wall:.2f} s, {cpu:.2f} CPU s", file=sys.stderr, flush=True)
            test_store = work / f"{name}-test.zarr"
            shutil.rmtree(test_store, ignore_errors=True)
            wall, cpu, _ = run([prep, "build", "--data", one, "--split", "test", "--store", test_store, "-q"], code)
            got.setdefault("test1 wall s", []).append(wall)
            got.setdefault("test1 CPU s", []).append(cpu)
            print(f"{name} test1 {wall:.2f} s, {cpu:.2f} CPU s", file=sys.stderr, flush=True)
            _, _, out = run([sys.executable, "-P", "-c", STATE_READ, work / f"{name}-state.zarr"], code)  # -P: not cwd
            got.setdefault("state read CPU ms", []).append(float(out.strip().splitlines()[-1]))
            print(f"{name} state read {got['state read CPU ms'][-1]:.0f} CPU ms", file=sys.stderr, flush=True)
            _, _, out = run([train, "bench", "--store", work / f"{name}.zarr", "--inputs", "eeg_10s,eeg_30s,kaggle",
                             "--batch-size", 32, "--device", "cpu", "--json"], code)
            bench = json.loads(out.strip().splitlines()[-1])
            got.setdefault("reader samples/s", []).append(bench["samples_per_s"])
            got.setdefault("reader CPU us/sample", []).append(bench["cpu_us_per_sample"])
            print(f"{name} reader {bench['samples_per_s']:.0f} samples/s, {bench['cpu_us_per_sample']:.0f} CPU us/sample",
                  file=sys.stderr, flush=True)
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"results": results, "load_average": load}))
        return
    print(f"median of {args.repeat}, alternating; load average {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}")
    names = list(codes)
    print(f"{'figure':24s}" + "".join(f"{n:>26s}" for n in names))
    for figure in results["this"]:
        cells = []
        for n in names:
            values = results[n][figure]
            cells.append(f"{statistics.median(values):9.3g} ({', '.join(f'{v:.3g}' for v in values)})")
        print(f"{figure:24s}" + "".join(f"{c:>26s}" for c in cells))


if __name__ == "__main__":
    main()
