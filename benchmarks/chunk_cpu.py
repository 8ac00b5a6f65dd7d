"""CPU time per label row of the build's chunk tasks, run one after another in this process: the
figure least moved by a busy machine, and comparable across versions of the code.

Creates a store for the default arrays (--windows 10,30, Kaggle, raw), runs the first --chunks chunk
tasks (`hms_prep.building.task.build_chunk`) directly (the first one only warms imports and caches and is not
counted), and prints CPU ms per row (`time.process_time`: this process, all its threads), wall rows/s
and each stage's wall ms per row. `--profile` adds cProfile's top functions by own time.

Old against new, on the same data, alternating (the old code from `git archive <commit> hms_prep`):
  PYTHONPATH=/tmp/old python benchmarks/chunk_cpu.py --data /tmp/hms-bench/data
  PYTHONPATH=.        python benchmarks/chunk_cpu.py --data /tmp/hms-bench/data
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # as in the Dask workers; must precede numpy

import argparse  # noqa: E402
import cProfile  # noqa: E402
import pstats  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

from hms_prep.building.placement import commit_rows, place_rows  # noqa: E402
from hms_prep.building.run import BuildConfig, open_or_create  # noqa: E402
from hms_prep.building.task import ArrayJob, ChunkJob, build_chunk  # noqa: E402
from hms_prep.sources.kaggle import read_labels  # noqa: E402
from hms_prep.sources.rows import csv_rows, planned_rows  # noqa: E402
from hms_prep.store.build_state import create_build_state  # noqa: F401


def chunk_jobs(config: BuildConfig, n_chunks: int) -> list[ChunkJob]:
    """A new store for `config` and the jobs of its first `n_chunks` chunks, every array whole."""
    csv = csv_rows(read_labels(config.data_dir, config.split), config.split)
    group, layout = open_or_create(config)
    kinds = config.arrays()
    rows = place_rows(config.store_url, group, layout, csv, None, kinds, config.n_folds)  # as a build places them
    layout = commit_rows(config.store_url, group, layout, rows)
    planned, segments = rows.planned, rows.segments
    for name, kind in kinds.items():
        kind.create(group, layout, rows.raw_length)
        create_build_state(group, name, layout)
    jobs = []
    for chunk in range(min(n_chunks, layout.n_chunks)):
        rows = layout.chunk_slice(chunk)
        arrays = tuple(ArrayJob(kind, tuple(range(rows.start, rows.stop)), True) for kind in kinds.values())
        jobs.append(ChunkJob(config.store_url, config.data_dir, config.split, chunk, planned_rows(planned, rows),
                             tuple(segments[chunk]), arrays))
    return jobs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/tmp/hms-bench/data"), help="Kaggle-layout folder")
    parser.add_argument("--chunks", type=int, default=12, help="chunk tasks to run (the first is warm-up)")
    parser.add_argument("--chunk-rows", type=int, default=None, help="rows per chunk (default: the build's)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top 30 functions by own time")
    args = parser.parse_args(argv)

    folder = tempfile.mkdtemp(prefix="chunk-cpu-")
    try:
        jobs = chunk_jobs(BuildConfig(data_dir=str(args.data), store=f"{folder}/specs.zarr",
                                       chunk_rows=args.chunk_rows), args.chunks)
        build_chunk(jobs[0])  # imports, caches
        stages: dict[str, float] = defaultdict(float)
        rows = sum(len(job.rows) for job in jobs[1:])
        profile = cProfile.Profile() if args.profile else None
        began, cpu = time.perf_counter(), time.process_time()
        if profile:
            profile.enable()
        for job in jobs[1:]:
            for stage, seconds in build_chunk(job).seconds.items():
                stages[stage] += seconds
        if profile:
            profile.disable()
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{rows} rows in {len(jobs) - 1} chunks: CPU {1000 * cpu / rows:.2f} ms/row, {rows / wall:.1f} rows/s wall")
    print("stage wall ms/row: " + ", ".join(f"{s} {1000 * v / rows:.2f}" for s, v in stages.items()))
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
