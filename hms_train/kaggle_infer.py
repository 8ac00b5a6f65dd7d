"""Kaggle inference from an `hms-train export` folder, offline (this file is the folder's infer.py).

    python /kaggle/input/<export>/infer.py --data /kaggle/input/hms-harmful-brain-activity-classification \
        --out submission.csv

It installs the folder's wheels the image lacks with pip, no index and no dependencies (never replacing
the image's packages), checks in one line that the image's versions are within this project's supported
ranges, builds the test store of --data in a scratch folder, predicts with the exported runs and their
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
    # Only what the image lacks, without dependencies: the image's own packages (torch, timm, ...) are
    # never replaced, whatever their versions; the line below says whether they are within our ranges.
    wheels = [w for w in sorted((HERE / "wheels").glob("*.whl")) if w.name.startswith("hms_cache-")
              or not _installed(w.name.split("-")[0])]
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                    *map(str, wheels)], check=True)
    from hms_prep.doctor import IMAGE_CORE, installed, unmet_requirements  # installed just now

    unmet = unmet_requirements()
    if unmet:
        print(f"error: this image is outside what hms-cache supports: {'; '.join(unmet)}", file=sys.stderr)
        return 1
    print(f"image: {installed(IMAGE_CORE)}: within hms-cache's supported ranges")
    from hms_train.export import infer

    try:
        with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
            rows = infer(HERE, args.data, args.out, Path(scratch), args.device)
    except (FileNotFoundError, ValueError) as err:  # a missing or damaged checkpoint, a bad input: one line
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.out}: {rows} rows")
    return 0


def _installed(name: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
