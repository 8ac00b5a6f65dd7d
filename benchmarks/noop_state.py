"""The build state one array has at the competition's size (106,800 rows: 3,338 chunk files per state array,
every chunk stored as a build stores them), made once under PATH, and the CPU a no-op build spends on it:
planning (`pending_rows`) and labels.parquet's reads of status and repaired (which, since scale3, reuse
planning's). Prints CPU ms per array, min of --repeat. Run it with another checkout first on PYTHONPATH
to compare (docs/performance.md, "At the competition's size"):

  python benchmarks/noop_state.py /tmp/full-state.zarr
  PYTHONPATH=/tmp/old python -P benchmarks/noop_state.py /tmp/full-state.zarr
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import zarr

from hms_prep.building.plan import BuildPlan, pending_rows
from hms_prep.store.build_state import create_build_state, open_build_state, read_state
from hms_prep.store.layout import StoreLayout

FULL = StoreLayout("train", 106_800, 32, "", 5, "auto", 2000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="Where the state is made (once; reused when it exists)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    if not os.path.exists(args.path):
        with zarr.config.set({"array.write_empty_chunks": True}):  # as a build writes them: every chunk
            state = create_build_state(zarr.open_group(args.path, mode="w"), "eeg_10s", FULL)
            state.done[:], state.status[:], state.repaired[:] = 1, 1, 0.0
            state.error[:] = np.array([""] * FULL.n_rows, dtype=object)
    group = zarr.open_group(args.path, mode="r")
    reuses = "unchanged_state" in BuildPlan.__dataclass_fields__  # this code: labels.parquet reuses the reads
    times = []
    for _ in range(args.repeat):
        started = time.process_time()
        pending_rows(group, "eeg_10s", FULL, set(), print, **({"state_read": {}} if reuses else {}))
        if not reuses:  # before: record.py read status and repaired again
            state = open_build_state(group, "eeg_10s")
            read_state(state.status), read_state(state.repaired)
        times.append(time.process_time() - started)
    listed = ", ".join(f"{t * 1e3:.0f}" for t in times)
    print(f"{min(times) * 1e3:.0f} CPU ms per array (min of {args.repeat}: {listed})")


if __name__ == "__main__":
    main()
