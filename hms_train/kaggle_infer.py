"""Kaggle inference from an `hms-train export` folder, offline (this file is the folder's infer.py).

    python /kaggle/input/<export>/infer.py --data /kaggle/input/hms-harmful-brain-activity-classification \
        --out submission.csv

It installs the folder's wheels with pip and no index (the packages Kaggle's image lacks, and this
project), builds the test store of --data in a scratch folder, predicts with the exported runs and their
blend weights, and writes the submission. Runs nothing before the install but the standard library.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="The competition's folder (test.csv, test_eegs/, ...).")
    parser.add_argument("--out", type=Path, default=Path("submission.csv"))
    parser.add_argument("--scratch", type=Path, default=None, help="Where the test store goes (default: a temp dir).")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = parser.parse_args()
    wheels = HERE / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels),
                    "hms-cache"], check=True)
    from hms_train.export import infer  # installed just now

    try:
        with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
            rows = infer(HERE, args.data, args.out, Path(scratch), args.device)
    except (FileNotFoundError, ValueError) as err:  # a missing or damaged checkpoint, a bad input: one line
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.out}: {rows} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
