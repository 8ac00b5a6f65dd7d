"""Every script in benchmarks/ runs to its end at toy size and prints its figures as JSON.

No timing is asserted: the figures are only checked to be there. What this catches is a benchmark that
no longer runs against today's code (two did, after the lazy cluster and the optional --chunk-rows).
Each runs at its smallest size: a cluster of one worker process (each worker's start imports torch and
scipy; the builds' two-worker cluster is tests/conftest.py's train_store), one repeat, a few EEGs.
All of them run in one process (`python -c DRIVER`: each script as `python benchmarks/NAME.py ARGS` would
run it, through runpy), which imports torch once instead of eight times; the processes the benchmarks
start themselves (startup.py's, the clusters' workers) are still started.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow
BENCHMARKS = ROOT / "benchmarks"
# Runs each [name, script, args...] as `python benchmarks/script args...` (its folder first on sys.path, its
# stdout captured, SystemExit its exit status), and prints {name: {"code", "stdout", "error"}} as JSON.
DRIVER = """
import contextlib, io, json, runpy, sys, traceback
scripts, results = json.loads(sys.argv[1]), {}
sys.path.insert(0, sys.argv[2])
for name, script, *args in scripts:
    sys.argv, out, code, error = [script, *args], io.StringIO(), 0, ""
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        error = "" if isinstance(done.code, int) or done.code is None else str(done.code)
    except BaseException:
        code, error = 1, traceback.format_exc()
    results[name] = {"code": code, "stdout": out.getvalue(), "error": error}
print("RESULTS" + json.dumps(results))
"""


def test_every_benchmark_runs_at_toy_size_and_prints_its_figures(tmp_path):
    data, store = tmp_path / "data", tmp_path / "specs.zarr"

    def script(name: str, *args) -> list[str]:
        return [name, str(BENCHMARKS / f"{name}.py"), *map(str, args)]

    scripts = [  # build_throughput.py synthesizes the toy data and builds the store the next three read
        script("build_throughput", "--eegs", 4, "--data", data, "--store", store, "--baseline", 2, "--workers", 1,
               "--json"),
        script("chunk_cpu", "--data", data, "--chunks", 3, "--chunk-rows", 4),
        script("codecs", "--store", store, "--chunks", 1, "--repeats", 1, "--json"),
        script("reader_throughput", "--store", store, "--workdir", tmp_path / "reader", "--batches", 2,
               "--batch-size", 4, "--no-augment", "--json"),
        script("growth", "--data", data, "--store", tmp_path / "growth.zarr", "--workers", 1, "--json"),
        script("startup", "--eegs", 3, "--folder", tmp_path / "startup", "--repeat", 1, "--workers", 1, "--json"),
        script("kaggle_inference", "--recipe", "seed_david_b0", "--eegs", 2, "--folds", 1, "--json"),
        script("row_change", "--eegs", 4, "--json"),  # at this size the change touches every chunk
    ]
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(scripts), str(BENCHMARKS)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and "RESULTS" in done.stdout, done.stderr[-3000:]
    results = json.loads(done.stdout[done.stdout.rindex("RESULTS") + len("RESULTS"):])
    for name, result in results.items():
        assert result["code"] == 0, (name, result["error"][-3000:], done.stderr[-3000:])

    def figures(name: str) -> dict:
        stdout = results[name]["stdout"]
        return json.loads(stdout[stdout.index("{"):])  # after any progress lines

    built = figures("build_throughput")
    for key in ("rows_per_s", "rows_per_s_with_cluster_start", "stage_ms_per_row", "peak_rss_driver_bytes",
                "store_mb_per_row", "noop_build_s"):
        assert built[key], key
    assert built["baseline"]["rows"] == 2 and built["baseline"]["rows_per_s"] > 0
    assert built["second_build_rows_computed"] == 0
    assert "ms/row" in results["chunk_cpu"]["stdout"]
    assert figures("codecs")
    reader = figures("reader_throughput")
    assert reader["reader"]["samples_per_s"] > 0 and reader["ratio"] > 0
    growth = figures("growth")
    assert growth["rows"] > 0 and growth["driver_peak_bytes"] > 0 and growth["verify_problems"] == 0
    startup = figures("startup")
    assert startup["startup_s"] > 0 and startup["sizes"][0]["noop_s"] > 0
    inference = figures("kaggle_inference")
    assert inference["seconds_per_eeg"]["build"] > 0 and inference["seconds_per_eeg"]["predict"] > 0
    change = figures("row_change")
    assert change["change"]["rows_computed"] > 0 and change["rebuild"]["rows_computed"] == change["rows"]
    assert change["rebuild_over_change"] > 0
