"""Every script in benchmarks/ runs to its end at toy size and prints its figures as JSON.

No timing is asserted: the figures are only checked to be there. What this catches is a benchmark that
no longer runs against today's code (two did, after the lazy cluster and the optional --chunk-rows).
Each runs at its smallest size: a cluster of one worker process (each worker's start imports torch and
scipy; the builds' two-worker cluster is tests/conftest.py's train_store), one repeat, a few EEGs.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow
BENCHMARKS = ROOT / "benchmarks"


def run(script: str, *args) -> dict:
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout[result.stdout.index("{"):])  # after any progress lines


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A toy store built by build_throughput.py itself (with its notebook baseline), and its figures."""
    folder = tmp_path_factory.mktemp("bench")
    figures = run("build_throughput.py", "--eegs", 4, "--data", folder / "data", "--store", folder / "specs.zarr",
                  "--baseline", 2, "--workers", 1, "--json")
    return folder, figures


def test_build_throughput_prints_the_build_and_the_notebook_on_the_same_rows(built):
    _, figures = built
    for key in ("rows_per_s", "rows_per_s_with_cluster_start", "stage_ms_per_row", "peak_rss_driver_bytes",
                "store_mb_per_row", "noop_build_s"):
        assert figures[key], key
    assert figures["baseline"]["rows"] == 2 and figures["baseline"]["rows_per_s"] > 0
    assert figures["second_build_rows_computed"] == 0


def test_chunk_cpu_codecs_and_reader_benchmarks_run_on_that_store(built, tmp_path):
    folder, _ = built
    cpu = subprocess.run([sys.executable, str(BENCHMARKS / "chunk_cpu.py"), "--data", str(folder / "data"),
                          "--chunks", "3", "--chunk-rows", "4"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert cpu.returncode == 0 and "ms/row" in cpu.stdout, cpu.stderr[-3000:]
    codecs = run("codecs.py", "--store", folder / "specs.zarr", "--chunks", 1, "--repeats", 1, "--json")
    assert codecs
    reader = run("reader_throughput.py", "--store", folder / "specs.zarr", "--workdir", tmp_path, "--batches", 2,
                 "--batch-size", 4, "--no-augment", "--json")
    assert reader["reader"]["samples_per_s"] > 0 and reader["ratio"] > 0


def test_growth_and_startup_benchmarks_run(tmp_path):
    growth = run("growth.py", "--eegs", 4, "--data", tmp_path / "growth" / "data", "--workers", 1, "--json")
    assert growth["rows"] > 0 and growth["driver_peak_bytes"] > 0 and growth["verify_problems"] == 0
    startup = run("startup.py", "--eegs", 3, "--folder", tmp_path / "startup", "--repeat", 1, "--workers", 1, "--json")
    assert startup["startup_s"] > 0 and startup["sizes"][0]["noop_s"] > 0


def test_kaggle_inference_benchmark_runs():
    figures = run("kaggle_inference.py", "--recipe", "seed_david_b0", "--eegs", 2, "--folds", 1, "--json")
    assert figures["seconds_per_eeg"]["build"] > 0 and figures["seconds_per_eeg"]["predict"] > 0


def test_row_change_benchmark_runs():
    figures = run("row_change.py", "--eegs", 4, "--json")  # at this size the change touches every chunk
    assert figures["change"]["rows_computed"] > 0 and figures["rebuild"]["rows_computed"] == figures["rows"]
    assert figures["rebuild_over_change"] > 0
