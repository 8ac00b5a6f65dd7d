"""The competition's size, rehearsed: every user command on the real table's structure (issue 27).

Synthesizes `hms-prep synth --like competition --fraction F` data, then runs each user command as a
process of its own, recording its wall time, the peak RSS of its own process (the driver) and of each
Dask worker under it, and the disk the data and stores take afterwards:
  synth        hms-prep synth WORK/data --like competition --fraction F --jobs J
  build        hms-prep build --windows 10,30 (eeg_10s, eeg_30s, kaggle, raw)
  noop         the same build again (nothing to do)
  verify       hms-prep verify;  info: hms-prep info
  david        hms-prep build --windows 10,14,30,44 --n-mels 50 (adds David's four arrays)
  show         hms-prep show --row 0
  row_change   a train.csv with one offset moved 2 s and one line removed (a folder of links to the same
               signal files), built into the same store
  plan:NAME    hms-train plan --json for every bundled recipe (the store holds Richard's and David's arrays;
               a recipe needing an array not built is reported as such)
  bench_warm   hms-train bench --config seed_richard_b0 (reader to a ready batch; the store just read:
               page cache warm);  bench_cold: the same after evicting the store's files from the page cache
               (posix_fadvise DONTNEED on its own files: no root needed, other sessions' cache untouched)
  train        hms-train train seed_richard_b0, fold 0, one epoch capped at --batches batches, no stage 2, on
               CPU, random init; step times recorded (benchmarks/step_times): trainer start to its first
               batch, then steady samples/s over the later batches
  test_build   hms-prep build --split test;  predict: hms-train predict with that run;  export: hms-train export
Then prints the issue's budget table (budget, measured, met?) and writes WORK/result.json.

`--fit A.json B.json C.json` instead reads results of three or more fractions, fits each figure as
a + b * F by least squares and prints the fit's worst relative residual and its value at F = 1.

Examples:
  python benchmarks/full_scale.py --fraction 0.01 --work /tmp/fs01
  python benchmarks/full_scale.py --fit /tmp/fs01/result.json /tmp/fs03/result.json /tmp/fs10/result.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEP_TIMES = Path(__file__).resolve().parent / "step_times"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reader_throughput import evict_from_page_cache  # noqa: E402

MB = 1 << 20


@dataclass
class Step:
    """One command's measurement."""

    name: str
    argv: list[str]
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # user + system of the command and every descendant it waited for (Dask workers)
    returncode: int = 0
    driver_mb: float = 0.0  # the command's own process
    worker_mb: list[float] = field(default_factory=list)  # each Dask worker's peak
    output_tail: str = ""


def measure(name: str, argv: list[str], env: dict | None = None, cwd: Path | None = None) -> Step:
    """Run `argv` as its own process; sample RSS of it and its descendants every 0.1 s until it ends.
    The whole output is kept in `step.output` (not recorded in the result)."""
    step = Step(name, [str(a) for a in argv])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    step.started = time.time()
    started = time.perf_counter()
    process = subprocess.Popen(step.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**command_env(), **(env or {})}, cwd=cwd)
    peaks: dict[int, tuple[int, str]] = {}
    root = psutil.Process(process.pid)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                step.driver_mb = max(step.driver_mb, root.memory_info().rss / MB)
                for child in root.children(recursive=True):
                    rss = child.memory_info().rss
                    peaks[child.pid] = (max(peaks.get(child.pid, (0, ""))[0], rss),
                                        peaks.get(child.pid, (0, ""))[1] or " ".join(child.cmdline()))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        output, _ = process.communicate()
    except BaseException:  # Ctrl-C: the command ends with the benchmark
        process.kill()
        raise
    step.seconds = round(time.perf_counter() - started, 2)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    step.cpu_seconds = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)
    stop.set()
    sampler.join()
    step.returncode = process.returncode
    step.worker_mb = sorted((round(rss / MB) for rss, line in peaks.values()
                             if "spawn_main" in line and "resource_tracker" not in line), reverse=True)
    step.driver_mb = round(step.driver_mb)
    step.output_tail = output[-2000:]
    step.output = output
    status = "ok" if step.returncode == 0 else f"EXIT {step.returncode}"
    workers = f", workers {step.worker_mb} MB" if step.worker_mb else ""
    print(f"{name:24s} {step.seconds:8.2f} s ({step.cpu_seconds:7.2f} CPU s)  driver {step.driver_mb:5.0f} MB{workers}  {status}", flush=True)
    if step.returncode != 0:
        print(output[-1500:], flush=True)
    return step


def command_env() -> dict:
    """The environment of every command: a user's Python caches compiled modules (.pyc), so the commands
    may write them even where this shell says PYTHONDONTWRITEBYTECODE (without them every process here
    compiled its imports again: 12 of a no-op build's 21 s under load)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


WARM_IMPORTS = ("hms_prep.cli", "hms_prep.building.run", "hms_prep.building.execute", "hms_prep.synth.dataset", "hms_prep.show",
                "hms_train.cli", "hms_train.run.train", "hms_train.run.bench", "hms_train.run.predict",
                "hms_train.export", "torch", "timm", "scipy.signal", "pandas", "dask.distributed",
                "matplotlib.pyplot")


def warm_bytecode() -> None:
    """Import what the commands import once, untimed, so each module's .pyc exists as after an install."""
    code = "import importlib\nfor m in %r:\n    importlib.import_module(m)" % (WARM_IMPORTS,)
    subprocess.run([sys.executable, "-c", code], check=True, env=command_env())


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def changed_data(data: Path, out: Path) -> None:
    """A Kaggle folder linking to `data`'s files, whose train.csv has one offset moved and one line removed."""
    out.mkdir()
    for entry in data.iterdir():
        if entry.name != "train.csv":
            (out / entry.name).symlink_to(entry.resolve())
    with open(data / "train.csv") as f:
        lines = list(csv.DictReader(f))
    moved = max(range(len(lines)), key=lambda i: float(lines[i]["eeg_label_offset_seconds"]))
    lines[moved]["eeg_label_offset_seconds"] = str(float(lines[moved]["eeg_label_offset_seconds"]) - 2)
    del lines[len(lines) // 2]
    with open(out / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(lines[0]))
        writer.writeheader()
        writer.writerows(lines)


def recipes() -> list[str]:
    return sorted(p.stem for p in (ROOT / "hms_train" / "configs").glob("*.toml"))


TRAINING_STEPS = ("train", "test_build", "predict", "export")


def rehearse(fraction: float, work: Path, jobs: int, workers: int | None, batches: int, plans: list[str],
             training: bool = True, david: bool = True) -> dict:
    prep, train = [BIN / "hms-prep"], [BIN / "hms-train"]
    data, store, test_store = work / "data", work / "specs.zarr", work / "test.zarr"
    run, times = work / "run", work / "step_times.txt"
    cluster = ["--workers", workers] if workers else []
    steps: list[Step] = []
    figures: dict = {}

    warm_bytecode()
    steps.append(measure("synth", prep + ["synth", data, "--like", "competition", "--fraction", fraction,
                                          "--jobs", jobs]))
    figures["data_bytes"] = disk_bytes(data)
    rows = sum(1 for _ in open(data / "train.csv")) - 1
    build = prep + ["build", "--data", data, "--store", store, "--windows", "10,30", "-q"] + cluster
    # --on-dask: the first build takes the cluster path of a full-size build at every fraction (small builds
    # would otherwise run in this process), so the fractions scale alike; the no-op and the row change do not
    steps.append(measure("build", build + ["--on-dask"]))
    figures["store_bytes_build"] = disk_bytes(store)
    save_partial(work, summary(fraction, rows, figures, steps))
    steps.append(measure("noop", build))
    steps.append(measure("verify", prep + ["verify", store]))
    steps.append(measure("info", prep + ["info", store]))
    if david:  # at F >= 0.5 its 0.31 MB per row may not fit the disk beside the data and the first store
        steps.append(measure("david", prep + ["build", "--data", data, "--store", store, "--windows", "10,14,30,44",
                                              "--n-mels", "50", "-q", "--on-dask"] + cluster))
    figures["store_bytes"] = disk_bytes(store)
    save_partial(work, summary(fraction, rows, figures, steps))
    steps.append(measure("show", prep + ["show", store, "--row", 0, "--out", work / "row0.png"]))
    changed = work / "data_changed"
    shutil.rmtree(changed, ignore_errors=True)
    changed_data(data, changed)
    steps.append(measure("row_change", prep + ["build", "--data", changed, "--store", store, "--windows", "10,30",
                                               "-q"] + cluster))
    tables = {}
    for recipe in plans:
        step = measure(f"plan:{recipe}", train + ["plan", "--config", recipe, "--store", store, "--json"])
        steps.append(step)
        if step.returncode == 0:
            tables[recipe] = json.loads(step.output[step.output.index("{"):])["table_rows"]
    figures["table_rows"] = tables
    save_partial(work, summary(fraction, rows, figures, steps))
    bench = train + ["bench", "--store", store, "--config", "seed_richard_b0", "--device", "cpu", "--batches", 30,
                     "--json"]
    for name, cold in (("bench_warm", False), ("bench_cold", True)):
        if cold:
            evict_from_page_cache(store)
        step = measure(name, bench)
        steps.append(step)
        if step.returncode == 0:
            figures[f"{name}_samples_per_s"] = round(json.loads(step.output.strip().splitlines()[-1])["samples_per_s"])
            figures[f"{name}_cpu_us_per_sample"] = round(json.loads(step.output.strip().splitlines()[-1])["cpu_us_per_sample"])
    save_partial(work, summary(fraction, rows, figures, steps))
    if training:
        training_steps(work, batches, steps, figures)
    return summary(fraction, rows, figures, steps)


def save_partial(work: Path, result: dict) -> None:
    """The figures so far, so that a long rehearsal stopped early still leaves what it measured."""
    (work / "result.partial.json").write_text(json.dumps(result, indent=1))


def training_steps(work: Path, batches: int, steps: list[Step], figures: dict) -> None:
    """train (capped), test_build, predict, export on the rehearsal's WORK/data and WORK/specs.zarr."""
    prep, train = [BIN / "hms-prep"], [BIN / "hms-train"]
    data, store, test_store = work / "data", work / "specs.zarr", work / "test.zarr"
    run, times = work / "run", work / "step_times.txt"
    times.unlink(missing_ok=True)
    shutil.rmtree(run, ignore_errors=True)
    step = measure("train", train + ["train", "--store", store, "--config", "seed_richard_b0", "--out", run,
                                     "--folds", 0, "--epochs", 1, "--device", "cpu", "--no-pretrained", "-q",
                                     "--set", f"max_batches_per_epoch={batches}", "--set", "stage2_epochs=0"],
                   env={"HMS_STEP_TIMES": str(times), "PYTHONPATH": str(STEP_TIMES)})
    steps.append(step)
    stamps = [tuple(map(float, line.split())) for line in times.read_text().splitlines()] if times.exists() else []
    if stamps:
        figures["train_first_batch_s"] = round(stamps[0][0] - step.started, 2)  # the first step has its batch
        figures["train_first_step_s"] = round(stamps[0][1] - stamps[0][0], 2)
        if len(stamps[0]) > 2:  # the trainer's CPU seconds to its first batch: what a quiet machine's wall is
            figures["train_first_batch_cpu_s"] = round(stamps[0][2], 2)
    if len(stamps) >= 3:  # the steps after the first, batch 16 each
        figures["train_samples_per_s"] = round((len(stamps) - 1) * 16 / (stamps[-1][1] - stamps[0][1]), 2)
    steps.append(measure("test_build", prep + ["build", "--data", data, "--split", "test", "--store", test_store,
                                               "-q"]))
    steps.append(measure("predict", train + ["predict", "--store", test_store, "--run", run, "--out",
                                             work / "submission.csv", "--device", "cpu"]))
    shutil.rmtree(work / "export", ignore_errors=True)
    steps.append(measure("export", train + ["export", run, "--out", work / "export"]))


def summary(fraction: float, rows: int, figures: dict, steps: list[Step]) -> dict:
    return {"fraction": fraction, "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.node()}: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GB",
            "load_average": os.getloadavg(), "figures": figures, "steps": [asdict(s) for s in steps]}


# issue 27's budgets: (what, budget, measured wall or figure, CPU seconds where it is a command's time, test)
def budget_rows(result: dict) -> list[tuple[str, str, str, str, bool | None]]:
    by = {s["name"]: s for s in result["steps"]}
    fig = result["figures"]

    def timed(name):
        step = by.get(name)
        return (step["seconds"], step["cpu_seconds"]) if step and step["returncode"] == 0 else (None, None)

    plans = [s for s in result["steps"] if s["name"].startswith("plan:") and s["returncode"] == 0]
    slowest_plan = max(plans, key=lambda s: s["seconds"]) if plans else None
    drivers = [s["driver_mb"] for s in result["steps"]]
    workers = [w for s in result["steps"] for w in s["worker_mb"]]
    per_row = fig["store_bytes"] / result["rows"] / MB
    rows = [
        ("build --windows 10,30", "<= 20 min", *timed("build"), lambda v: v <= 1200),
        ("no-op build", "<= 2 s", *timed("noop"), lambda v: v <= 2),
        ("info", "<= 2 s", *timed("info"), lambda v: v <= 2),
        ("verify", "<= 3 min", *timed("verify"), lambda v: v <= 180),
        ("plan (slowest recipe)", "<= 10 s", *((slowest_plan["seconds"], slowest_plan["cpu_seconds"]) if plans
                                               else (None, None)), lambda v: v <= 10),
        ("one-line train.csv change", "<= 60 s", *timed("row_change"), lambda v: v <= 60),
        ("trainer start to first batch", "<= 20 s", fig.get("train_first_batch_s"), fig.get("train_first_batch_cpu_s"),
         lambda v: v <= 20),
        ("driver peak RSS (MB)", "<= 2048", max(drivers), None, lambda v: v <= 2048),
        ("worker peak RSS (MB)", "<= 3072", max(workers) if workers else None, None, lambda v: v <= 3072),
        ("store MB per row", "<= 0.5", round(per_row, 3), None, lambda v: v <= 0.5),
        ("reader samples/s warm", ">= 2000", fig.get("bench_warm_samples_per_s"), None, lambda v: v >= 2000),
    ]
    return [(name, budget, "-" if value is None else str(value), "" if cpu is None else str(cpu),
             None if value is None else test(value)) for name, budget, value, cpu, test in rows]


def print_report(result: dict) -> None:
    print(f"\nfraction {result['fraction']}: {result['rows']} rows; {result['machine']}; {result['date']}; "
          f"load average at the end {', '.join(f'{v:.1f}' for v in result['load_average'])}")
    print(f"data {result['figures']['data_bytes'] / 2**30:.2f} GiB, store {result['figures']['store_bytes'] / 2**30:.2f} GiB; "
          f"seed tables: {result['figures']['table_rows']}")
    print(f"{'budget (at this fraction)':32s} {'budget':>10s} {'measured':>10s} {'CPU s':>8s}  met?")
    for name, budget, measured, cpu, met in budget_rows(result):
        print(f"{name:32s} {budget:>10s} {measured:>10s} {cpu:>8s}  {'-' if met is None else 'yes' if met else 'NO'}")


def fit(paths: list[str]) -> None:
    """Least-squares a + b * F of every step's time and peak RSS and of the disk figures, over the results."""
    import numpy as np

    results = sorted((json.loads(Path(p).read_text()) for p in paths), key=lambda r: r["fraction"])
    fractions = np.array([r["fraction"] for r in results])
    series: dict[str, list] = {}
    for r in results:
        for s in r["steps"]:
            series.setdefault(f"{s['name']} s", []).append(s["seconds"])
            series.setdefault(f"{s['name']} CPU s", []).append(s["cpu_seconds"])
            series.setdefault(f"{s['name']} driver MB", []).append(s["driver_mb"])
            if s["worker_mb"]:
                series.setdefault(f"{s['name']} worker MB", []).append(max(s["worker_mb"]))
        for key in ("data_bytes", "store_bytes", "store_bytes_build"):
            series.setdefault(f"{key[:-6]} GiB", []).append(r["figures"][key] / 2**30)
        for key in ("bench_warm_samples_per_s", "bench_cold_samples_per_s", "bench_warm_cpu_us_per_sample",
                    "bench_cold_cpu_us_per_sample", "train_first_batch_s", "train_first_batch_cpu_s",
                    "train_samples_per_s"):
            if key in r["figures"]:
                series.setdefault(key, []).append(r["figures"][key])
    print(f"fractions {list(fractions)}; each figure fitted as a + b*F (least squares); worst residual / value")
    print(f"{'figure':34s} " + " ".join(f"{f:>9g}" for f in fractions) + f" {'a':>9s} {'b':>10s} {'resid':>6s} {'at F=1':>10s}")
    for name, values in series.items():
        if len(values) != fractions.size:
            continue
        y = np.array(values, dtype=float)
        b, a = np.polyfit(fractions, y, 1)
        resid = np.max(np.abs(a + b * fractions - y) / np.maximum(np.abs(y), 1e-9))
        print(f"{name:34s} " + " ".join(f"{v:9.2f}" for v in y) + f" {a:9.2f} {b:10.2f} {resid:6.1%} {a + b:10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, help="Share of the competition's EEGs, in (0, 1].")
    parser.add_argument("--work", type=Path, help="Working folder (default /tmp/hms-full-scale-F); must not exist.")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="synth processes (default: one per core)")
    parser.add_argument("--workers", type=int, default=None, help="Dask workers of the builds (default: the build's)")
    parser.add_argument("--batches", type=int, default=8, help="Training batches of the capped epoch (default 8)")
    parser.add_argument("--plans", default="all",
                        help="Recipes to plan, comma-separated (default all; each plan costs the same imports)")
    parser.add_argument("--no-training", action="store_true",
                        help=f"Leave out {', '.join(TRAINING_STEPS)} (their cost per batch or per test EEG does not grow with F)")
    parser.add_argument("--no-david", action="store_true",
                        help="Leave out David's windows (their arrays take 0.31 MB per row more disk)")
    parser.add_argument("--training-on", type=Path, metavar="WORK",
                        help=f"Run only {', '.join(TRAINING_STEPS)} on an earlier --no-training rehearsal's folder")
    parser.add_argument("--fit", nargs="+", metavar="RESULT", help="Fit result.json files of three or more fractions.")
    args = parser.parse_args()
    if args.fit:
        if len(args.fit) < 3:
            parser.error("--fit needs result.json files of at least three fractions")
        fit(args.fit)
        return
    if args.training_on:
        saved = json.loads((args.training_on / "result.json").read_text())
        steps, figures = [], saved["figures"]
        shutil.rmtree(args.training_on / "test.zarr", ignore_errors=True)
        training_steps(args.training_on, args.batches, steps, figures)
        saved["steps"] = [s for s in saved["steps"] if s["name"] not in TRAINING_STEPS] + [asdict(s) for s in steps]
        (args.training_on / "result.json").write_text(json.dumps(saved, indent=1))
        print_report(saved)
        return
    if args.fraction is None or not 0 < args.fraction <= 1:
        parser.error(f"--fraction must be in (0, 1], got {args.fraction}")
    if args.batches < 3:
        parser.error(f"--batches must be at least 3 (a first batch and two steady ones), got {args.batches}")
    work = args.work or Path(f"/tmp/hms-full-scale-{args.fraction:g}")
    plans = recipes() if args.plans == "all" else [name.strip() for name in args.plans.split(",") if name.strip()]
    unknown = sorted(set(plans) - set(recipes()))
    if unknown or not plans:
        parser.error(f"--plans: unknown recipe {', '.join(unknown) or '(none given)'}; bundled: {', '.join(recipes())}")
    if work.exists():
        parser.error(f"--work {work}: exists; give a new folder (the rehearsal starts from nothing)")
    work.mkdir(parents=True)
    result = rehearse(args.fraction, work, args.jobs, args.workers, args.batches, plans, not args.no_training,
                      not args.no_david)
    (work / "result.json").write_text(json.dumps(result, indent=1))
    print_report(result)
    print(f"\n{work / 'result.json'}")


if __name__ == "__main__":
    main()
