"""How long a new user waits for `make setup` on a fresh clone: from an empty package cache (a new
machine), and again with the cache warm (a second clone, or the lock unchanged), against the install
this project used before the lock (`python -m venv` + `pip install -e '.[dev]'`) from an empty cache.

Each figure is the wall time of the whole command in a fresh `git clone` of this checkout (committed
files only), in a temporary folder, with its own cache folder (UV_CACHE_DIR, PIP_CACHE_DIR), so the
figures do not depend on what this machine installed before. `make setup` includes `hms-prep doctor`.
Needs the package registries (PyPI and torch's wheels: about 5 GB per cold install) and disk for them.

Examples:
  python benchmarks/setup_time.py                    # make setup cold, then warm
  python benchmarks/setup_time.py --baseline --json  # and the pip install from an empty cache
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path, env: dict) -> float:
    """Wall seconds of `command`; raises with its last output when it fails."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}):\n"
                           + (result.stdout + result.stderr)[-2000:])
    return seconds


def fresh_clone(work: Path, name: str) -> Path:
    target = work / name
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", action="store_true", help="also time the pip install without the lock")
    parser.add_argument("--python", default=sys.executable if sys.prefix == sys.base_prefix else "python3",
                        help="the Python the clones set up with (PYTHON= of the Makefile)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="hms-setup-"))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("UV_", "PIP_", "VIRTUAL_ENV"))}
    env["UV_CACHE_DIR"] = str(work / "uv-cache")
    env["PIP_CACHE_DIR"] = str(work / "pip-cache")
    result = {}
    try:
        make = ["make", "setup", f"PYTHON={args.python}"]
        result["make_setup_cold_s"] = round(timed(make, fresh_clone(work, "cold"), env), 1)
        result["make_setup_warm_s"] = round(timed(make, fresh_clone(work, "warm"), env), 1)
        if args.baseline:
            clone = fresh_clone(work, "pip")
            seconds = timed([args.python, "-m", "venv", ".venv"], clone, env)
            seconds += timed([".venv/bin/pip", "install", "-q", "-e", ".[dev]"], clone, env)
            result["pip_install_cold_s"] = round(seconds, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
