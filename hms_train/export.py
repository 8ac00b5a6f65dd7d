"""`hms-train export`: trained runs as a folder to upload as a Kaggle dataset, and the inference it runs
there, offline, on Kaggle's own image. The one module of hms_train that also builds a store (the test
store, with hms_prep's build), as Kaggle's notebook must.

    DIR/infer.py              the entry point: installs wheels/ with no index, builds the test store in a
                              scratch folder, predicts, writes submission.csv (`python DIR/infer.py --data
                              /kaggle/input/hms-harmful-brain-activity-classification --out submission.csv`)
    DIR/runs/<run>/fold*_best.pt   each fold's weights (half precision where that changes no probability by
                              more than HALF_TOLERANCE on rows of the run's own store), model spec, config
    DIR/blend.json            the runs and their weights
    DIR/checkpoints.json      every fold checkpoint's path and checksum: infer checks each before building
    DIR/arrays.json           the store arrays the runs read, with the parameters that made them
    DIR/kaggle-image.txt      the packages Kaggle's image provides (editable; the export leaves them out),
                              at the versions the export was tested against
    DIR/wheels/               this project's wheel and every locked dependency the image lacks

The wheels are the exact versions of uv.lock (the tested set), for the target Python and platform
(`uv export`). infer.py installs them with --no-deps and only where the image lacks the package: the
image's torch, torchvision, timm... stay as they are, and one line at start says whether they are
within the ranges hms-cache supports (hms_prep.doctor.unmet_requirements).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hms_prep.doctor import PROJECT
from hms_prep.store.arrays import describe_arrays
from hms_prep.store.layout import open_store
from hms_train.data.reader import Selection, StoreReader
from hms_train.run.blend import fixed_weights
from hms_train.run import checkpoint as checkpoint_file
from hms_train.run.checkpoint import fold_checkpoints, load_fold_model, predictable
from hms_train.run.forward import predict_probabilities
from hms_train.run.inputs import plan_inputs

ROOT = Path(__file__).resolve().parents[1]  # the checkout (the export needs its uv.lock and sources)
# Kaggle's image (a notebook with no internet) already holds these: the export ships none of them, nor
# what they depend on. Written to DIR/kaggle-image.txt, which an export reads back when given (--image).
KAGGLE_IMAGE = ("pip", "torch", "torchvision", "timm", "numpy", "scipy", "pandas", "pyarrow",
                "matplotlib")
HALF_TOLERANCE = 1e-4  # a fold is stored in float16 only if no probability moves by more than this
PROBE_ROWS = 64  # rows of the run's store the float16 weights are checked on
INFER_SCRIPT = Path(__file__).with_name("kaggle_infer.py")
CHECKPOINT_LIST = "checkpoints.json"


class ExportError(ValueError):
    """An export that cannot be made (no checkout, missing store, a folder in the way); one line."""


@dataclass(frozen=True)
class Target:
    """Where the wheels will be installed: Kaggle's Python and platform."""

    python: str = "3.11"
    platforms: tuple[str, ...] = ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "linux_x86_64")


@dataclass(frozen=True)
class ExportSummary:
    out: Path
    runs: int
    folds: int
    half_folds: int
    wheels: list[str]
    bytes: int


def export(runs: list[Path], out: Path, weights: list[float] | None = None, image: list[str] | None = None,
           target: Target = Target(), say=print) -> ExportSummary:
    """Write the export folder `out` (which must not exist, or be empty)."""
    runs = [Path(run) for run in runs]
    image = list(KAGGLE_IMAGE if image is None else image)
    lock = ROOT / "uv.lock"
    if not lock.is_file() or not (ROOT / "pyproject.toml").is_file():
        raise ExportError(f"{ROOT}: not a checkout of {PROJECT} (no uv.lock): export needs the checkout the runs "
                          "were trained from")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"--out {out}: exists and is not empty; export into a new folder")
    try:
        w = fixed_weights(weights, len(runs))
    except ValueError as err:
        raise ExportError(str(err)) from None
    names = _run_names(runs)
    checkpoints = {run: fold_checkpoints(run) for run in runs}  # FileNotFoundError for a run without folds
    _verify_all(sum(checkpoints.values(), []))  # a damaged one: one line, and nothing written
    arrays = _arrays(runs, checkpoints)
    out.mkdir(parents=True, exist_ok=True)
    folds = half = 0
    listed = {}
    for run, name in zip(runs, names):
        (out / "runs" / name).mkdir(parents=True)
        for path in checkpoints[run]:
            half += _export_fold(path, out / "runs" / name / path.name)
            listed[f"runs/{name}/{path.name}"] = checkpoint_file.verify(out / "runs" / name / path.name)[1]["sha256"]
            folds += 1
    (out / CHECKPOINT_LIST).write_text(json.dumps(listed, indent=2) + "\n")
    w = np.ones(len(runs)) if weights is None else np.asarray(weights, dtype=np.float64)
    (out / "blend.json").write_text(json.dumps({"runs": [f"runs/{n}" for n in names],
                                                "weights": (w / w.sum()).tolist()}, indent=2) + "\n")
    (out / "arrays.json").write_text(json.dumps(arrays, indent=2) + "\n")
    locked = {p["name"]: p["version"] for p in tomllib.loads(lock.read_text())["package"]}
    (out / "kaggle-image.txt").write_text(
        "# Packages Kaggle's image provides: the export ships none of them and infer.py never replaces them; it\n"
        "# checks at start that the image's versions are within hms-cache's supported ranges (pyproject.toml).\n"
        "# The versions are those this export was tested against (uv.lock: tests/test_export.py).\n"
        + "".join(f"{name}=={locked[name]}\n" if name in locked else f"{name}\n" for name in image))
    shutil.copyfile(INFER_SCRIPT, out / "infer.py")
    say(f"{out}: {folds} folds of {len(runs)} runs ({half} in float16); collecting wheels for Python "
        f"{target.python}")
    wheels = _wheels(out / "wheels", image, target)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return ExportSummary(out, len(runs), folds, half, wheels, size)


def _run_names(runs: list[Path]) -> list[str]:
    names = [run.resolve().name for run in runs]
    if len(set(names)) != len(names):
        raise ExportError(f"runs {names}: two runs share a folder name; the export names runs by it")
    return names


def _arrays(runs: list[Path], checkpoints: dict[Path, list[Path]]) -> list[dict]:
    """Every array the runs read, with the kind and parameters of the train store that made it."""
    arrays: dict[str, dict] = {}
    for run in runs:
        config = load_fold_model(checkpoints[run][0], torch.device("cpu")).config
        try:
            group, _ = open_store(config.store)
        except Exception as err:
            raise ExportError(f"{run}: its train store {config.store} cannot be opened ({err}); the export needs it "
                              "for the parameters of the arrays to build on the test data") from None
        described = describe_arrays(group)
        for name in config.inputs:
            entry = {"name": name, "kind": described[name].kind, "params": described[name].params}
            if arrays.setdefault(name, entry) != entry:
                raise ExportError(f"array {name}: the runs were trained on stores where it was made differently")
    return list(arrays.values())


def _export_fold(source: Path, target: Path) -> bool:
    """Weights, model spec and config of one fold; float16 weights when the probabilities on rows of its own
    store move by at most HALF_TOLERANCE. Returns whether it is stored in float16."""
    fold = load_fold_model(source, torch.device("cpu"))
    half = {key: value.half() if value.is_floating_point() else value for key, value in fold.model.state_dict().items()}
    reader = StoreReader(fold.config.store, fold.config.inputs, threads=2)
    plan = plan_inputs(fold.config, reader.descriptions)
    rows = reader.select(Selection())[:PROBE_ROWS]
    exact = predict_probabilities(fold.model, reader, rows, plan, torch.device("cpu"))
    rounded = copy.deepcopy(fold.model)
    rounded.load_state_dict(half)  # float16 values in the float32 model, as predict will load them
    moved = float(np.abs(predict_probabilities(rounded, reader, rows, plan, torch.device("cpu")) - exact).max())
    use_half = moved <= HALF_TOLERANCE
    checkpoint = predictable(checkpoint_file.load(source, torch.device("cpu"))["model_spec"], fold.model, fold.config)
    if use_half:
        checkpoint["model"] = half
    checkpoint_file.save(target, checkpoint, fold.config)
    return use_half


def _check_listed(export_dir: Path) -> None:
    """Every checkpoint the export listed is there, whole, and the one it wrote (CheckpointError or
    FileNotFoundError: one line naming the file)."""
    if not (export_dir / CHECKPOINT_LIST).is_file():
        raise FileNotFoundError(f"{export_dir / CHECKPOINT_LIST}: missing (an export made before checkpoint "
                                "checksums, or damaged); export the runs again")
    for name, expected in json.loads((export_dir / CHECKPOINT_LIST).read_text()).items():
        found = checkpoint_file.verify(export_dir / name)[1]
        if found is None or found["sha256"] != expected:
            raise checkpoint_file.CheckpointError(f"{export_dir / name}: not the checkpoint exported (expected sha256 "
                                                    f"{expected}, found {found and found['sha256']})")


def _verify_all(paths: list[Path]) -> None:
    """Every checkpoint's checksum, before anything is written or built (CheckpointError: one line)."""
    for path in paths:
        checkpoint_file.verify(path)


# --- wheels ---------------------------------------------------------------------------------------------------


def shipped_packages(image: list[str], target: Target) -> dict[str, str]:
    """name -> locked version of every package the project needs at run time on `target`, less the
    image's packages and what only they bring: `uv export --prune` of the lock, its markers evaluated for
    the target. A shipped package the image also has (fsspec, which torch brings too) is left to the
    image's own version by infer.py, which installs only what the image lacks."""
    from packaging.requirements import Requirement

    uv = ROOT / ".uv" / "bin" / "uv"
    uv = str(uv) if uv.is_file() else shutil.which("uv")
    if uv is None:
        raise ExportError("no uv (`make setup` installs it into .uv/): the export reads the lock with `uv export`")
    pruned = [arg for name in image for arg in ("--prune", name)]
    result = subprocess.run([uv, "export", "--frozen", "--no-emit-project", "--no-hashes", "--no-header",
                             "--no-annotate", "--format", "requirements.txt", "--project", str(ROOT), *pruned],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise ExportError(f"uv export failed: {(result.stderr.strip().splitlines() or ['(no output)'])[-1]}")
    environment = _marker_environment(target)
    shipped = {}
    for line in result.stdout.splitlines():
        if line.strip() and not line.lstrip().startswith(("#", "-")):
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                (pin,) = requirement.specifier  # the lock's exact version: name==version
                shipped[requirement.name] = pin.version
    return dict(sorted(shipped.items()))


def _marker_environment(target: Target) -> dict[str, str]:
    return {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "python_version": target.python, "python_full_version": f"{target.python}.0", "extra": ""}


def image_names(lines: list[str]) -> list[str]:
    """The package names of a kaggle-image.txt (`torch==2.15.0  # tested`, or a bare name)."""
    names = [re.split(r"[=<>!~ ;\[]", line.split("#")[0].strip())[0] for line in lines]
    return [name for name in names if name]


def _wheels(folder: Path, image: list[str], target: Target) -> list[str]:
    """This project's wheel, and each shipped package's wheel for the target, at its locked version."""
    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    leftover = not (ROOT / "build").exists()
    try:
        _pip(pip + ["wheel", "--no-deps", "--quiet", "--wheel-dir", str(folder), str(ROOT)])
    finally:
        if leftover:  # setuptools builds in the checkout's build/: leave the checkout as it was
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    shipped = shipped_packages(image, target)
    if shipped:
        abi = f"cp{target.python.replace('.', '')}"
        platforms = [arg for platform in target.platforms for arg in ("--platform", platform)]
        _pip(pip + ["download", "--no-deps", "--quiet", "--only-binary=:all:", "--dest", str(folder),
                    "--implementation", "cp", "--python-version", target.python, "--abi", abi, "--abi", "abi3",
                    "--abi", "none", *platforms, "--platform", "any",
                    *[f"{name}=={version}" for name, version in shipped.items()]])
    return sorted(p.name for p in folder.glob("*.whl"))


def _pip(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ExportError(f"{' '.join(command[2:4])} failed: {last}")


# --- on Kaggle ----------------------------------------------------------------------------------------------


def infer(export_dir: Path, data: Path, out: Path, scratch: Path, device: str = "auto", say=print) -> int:
    """What DIR/infer.py runs once the wheels are installed: the test store of `data` in `scratch`, then
    the blend's submission; returns the rows written."""
    from hms_prep.building.run import BuildConfig, run_build
    from hms_prep.kinds.base import kind_of_stored
    from hms_train.run.predict import predict_submission

    arrays = json.loads((export_dir / "arrays.json").read_text())
    blend = json.loads((export_dir / "blend.json").read_text())
    _check_listed(export_dir)
    store = scratch / "test.zarr"
    config = BuildConfig(data_dir=str(data), store=str(store), split="test", windows=(), kaggle=False, raw=None,
                         extra_arrays=tuple(kind_of_stored(a["kind"], a["params"]).params for a in arrays))
    summary = run_build(config, say=say)
    say(summary.line())
    if not summary.complete:
        raise RuntimeError(summary.crash_line())
    table = predict_submission(str(store), [export_dir / run for run in blend["runs"]], out, blend["weights"],
                               device, say=say)
    return table.num_rows
