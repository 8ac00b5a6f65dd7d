"""The oldest torch the project declares, proven: the Kaggle export's infer.py, run offline in a venv whose
torch is that release (and no torchaudio), writes `hms-train predict`'s submission to 1e-4.

pyproject.toml declares `torch>=2.8,<2.16`; the suite runs on the lock's torch (the newest). This checks
the other end the way Kaggle runs an export: too heavy for CI, since the image venv needs torch 2.8 with
its CUDA libraries from PyPI (about 3 GB, downloaded once; --image-venv reuses a venv made earlier).

Steps, each timed:
  1. a synthetic dataset, its train store (eeg_10s) and a smoke run (1 epoch, 2 batches) in this venv
  2. hms-train export RUN --out EXPORT
  3. the "image": a venv holding torch==--torch, torchvision==--torchvision and the other packages of
     kaggle-image.txt at the lock's versions (online, once)
  4. EXPORT/infer.py in the image venv with no package index (PIP_NO_INDEX=1) -> submission.csv
  5. hms-train predict in this venv (the lock's torch) -> predict.csv; the largest difference

Example:
  python benchmarks/oldest_torch.py                     # torch 2.8.0 + torchvision 0.23.0
  python benchmarks/oldest_torch.py --torch 2.9.1 --torchvision 0.24.1 --json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
UV = ROOT / ".uv" / "bin" / "uv"
BIN = Path(sys.executable).parent
TINY = ['inputs=["eeg_10s"]', "epochs=1", "stage2_epochs=0", "max_batches_per_epoch=2", "batch_size=8"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch", default="2.8.0", help="the image's torch (default: the oldest declared)")
    parser.add_argument("--torchvision", default="0.23.0", help="the torchvision built for that torch")
    parser.add_argument("--image-venv", type=Path, default=None, help="reuse (or create here) the image venv")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="hms-oldest-torch-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = measure(args, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0 if result["max_abs_difference"] <= 1e-4 else 1


def measure(args, work: Path) -> dict:
    timings = {}

    def step(name, command, **kwargs):
        start = time.perf_counter()
        result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
        timings[name] = round(time.perf_counter() - start, 1)
        if result.returncode != 0:
            raise SystemExit(f"{name} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        return result

    data, store, run, export = work / "data", work / "train.zarr", work / "run", work / "export"
    step("synth", [BIN / "hms-prep", "synth", data, "--eegs", "24", "--test-eegs", "3", "--seed", "7"])
    step("train store", [BIN / "hms-prep", "build", "--data", data, "--store", store, "--windows", "10", "--quiet"])
    step("train", [BIN / "hms-train", "train", "--store", store, "--config", "smoke", "--device", "cpu", "--out", run,
                   "--quiet", *[f"--set={s}" for s in TINY]])
    step("export", [BIN / "hms-train", "export", run, "--out", export])

    image = args.image_venv or work / "image"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    if not (image / "bin" / "python").is_file():
        listed = [line.split("#")[0].strip() for line in (export / "kaggle-image.txt").read_text().splitlines()]
        others = [line for line in listed if line and not line.startswith(("torch==", "torchvision=="))]
        step("image venv", [UV, "venv", "-q", "--seed", "--python", sys.executable, image], env=env)
        step("image install", [UV, "pip", "install", "-q", "--python", image / "bin" / "python",
                               f"torch=={args.torch}", f"torchvision=={args.torchvision}", *others], env=env)
    kaggle_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    versions = step("image versions", [image / "bin" / "python", "-c",
                                       "import torch, torchvision, importlib.util as u; print(torch.__version__, "
                                       "torchvision.__version__, u.find_spec('torchaudio') is not None)"],
                    env=kaggle_env).stdout.split()
    infer = step("infer.py", [image / "bin" / "python", export / "infer.py", "--data", data, "--out",
                              work / "submission.csv", "--device", "cpu"],
                 cwd=work, env={**kaggle_env, "PIP_NO_INDEX": "1"})
    test_store = work / "test.zarr"
    step("test store", [BIN / "hms-prep", "build", "--data", data, "--split", "test", "--store", test_store,
                        "--windows", "10", "--quiet"])
    step("predict", [BIN / "hms-train", "predict", "--store", test_store, "--run", run, "--device", "cpu",
                     "--out", work / "predict.csv"])
    ids, probs = _submission(work / "submission.csv")
    expected_ids, expected = _submission(work / "predict.csv")
    if ids != expected_ids:
        raise SystemExit("infer.py and predict wrote different eeg_ids")
    lock = {p["name"]: p["version"] for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
    return {
        "image_torch": versions[0], "image_torchvision": versions[1], "image_has_torchaudio": versions[2] == "True",
        "lock_torch": lock["torch"], "rows": len(ids),
        "max_abs_difference": float(np.abs(probs - expected).max()),
        "infer_image_line": next((l for l in infer.stdout.splitlines() if l.startswith("image: ")), ""),
        "seconds": timings,
    }


def _submission(path: Path) -> tuple[list[str], np.ndarray]:
    rows = list(csv.reader(path.open()))
    return [r[0] for r in rows[1:]], np.array([[float(v) for v in r[1:]] for r in rows[1:]])


if __name__ == "__main__":
    sys.exit(main())
