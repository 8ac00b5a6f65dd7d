"""`hms-train export`: a folder that runs on Kaggle's image offline. Tested as Kaggle runs it: a fresh
virtual environment holding only the image's packages, no package index (PIP_NO_INDEX=1), infer.py on
the synthetic test split; its submission is `hms-train predict`'s."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow
UV = ROOT / ".uv" / "bin" / "uv"
TINY = ['inputs=["eeg_10s"]', "epochs=1", "stage2_epochs=0", "max_batches_per_epoch=2", "batch_size=8"]


@pytest.fixture(scope="module")
def hms(preloaded):
    """`hms-train ARGS...` as a process of its own, forked from the preloaded CLI (tests/preloaded.py): the
    export's exit status and stderr lines, without an import of torch per call. infer.py, the part that runs
    on Kaggle, stays a fresh interpreter of the image's venv."""
    def run(*args):
        return preloaded("hms-train", *args, timeout=600)

    return run


def hms_here(*args) -> str:
    """The same command in this process (typer's CliRunner), for the steps around the one under test:
    no second interpreter's imports."""
    from typer.testing import CliRunner

    from hms_train.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output[-3000:]
    return result.output


def submission(path: Path) -> tuple[list[str], np.ndarray]:
    rows = list(csv.reader(path.open()))
    return [r[0] for r in rows], np.array([[float(v) for v in r[1:]] for r in rows[1:]])


@pytest.mark.skipif(not UV.is_file(), reason="needs uv (make setup installs it into .uv/)")
def test_an_export_predicts_offline_on_the_kaggle_image_as_predict_does(train_store, synth_data, tmp_path, hms):
    from hms_prep.building.run import BuildConfig, run_build

    run = tmp_path / "smoke"
    hms_here("train", "--store", train_store, "--config", "smoke", "--device", "cpu", "--out", run, "--quiet",
             *[f"--set={s}" for s in TINY])
    export = tmp_path / "export"
    result = hms("export", run, "--out", export)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on Kaggle: python export/infer.py --data" in result.stdout
    wheels = sorted(p.name for p in (export / "wheels").glob("*.whl"))
    shipped = {name.split("-")[0].lower() for name in wheels}
    assert {"hms_cache", "zarr", "numcodecs", "crc32c", "typer", "dask"} <= shipped
    assert not shipped & {"torch", "torchvision", "timm", "numpy", "scipy", "pandas", "pyarrow"}, "the image has them"
    tested = [line for line in (export / "kaggle-image.txt").read_text().splitlines() if not line.startswith("#")]
    assert "torch==" + hms_locked_versions(["torch"])[0].split("==")[1] in tested
    assert any(line.split("==")[0] == "pandas" for line in tested)
    again = hms("export", run, "--out", export)
    assert again.returncode == 1 and again.stderr.strip() == f"error: --out {export}: exists and is not empty; export into a new folder"

    # Kaggle's image, as far as this project cares: the listed packages at the locked versions, pip, no index
    image = tmp_path / "kaggle-image"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    locked = hms_locked_versions(["torch", "torchvision", "timm", "numpy", "scipy", "pyarrow", "matplotlib"])
    subprocess.run([str(UV), "venv", "-q", "--seed", "--python", sys.executable, str(image)], check=True, env=env)
    subprocess.run([str(UV), "pip", "install", "-q", "--python", str(image / "bin" / "python"), *locked, "pandas"],
                   check=True, env=env, timeout=600)
    kaggle_env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    image_before = subprocess.run([str(image / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True,
                                  text=True, env=kaggle_env).stdout.split()
    result = subprocess.run([str(image / "bin" / "python"), str(export / "infer.py"), "--data", str(synth_data),
                             "--out", str(tmp_path / "submission.csv"), "--device", "cpu"],
                            cwd=tmp_path, env={**kaggle_env, "PIP_NO_INDEX": "1"}, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    # The image's packages are never replaced; one line says they are within the supported ranges.
    assert re.search(r"^image: torch 2\.\d+\.\d+\S*, torchvision \S+, timm \S+: within hms-cache's supported ranges$",
                     result.stdout, re.M), result.stdout
    after = subprocess.run([str(image / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True,
                           env=kaggle_env).stdout.split()
    assert set(image_before) <= set(after), set(image_before) - set(after)
    damaged_export_is_refused(export, [str(image / "bin" / "python"), str(export / "infer.py"), "--data",
                                       str(synth_data), "--device", "cpu"], {**kaggle_env, "PIP_NO_INDEX": "1"}, tmp_path)

    test_store = tmp_path / "test.zarr"
    run_build(BuildConfig(data_dir=str(synth_data), store=str(test_store), split="test", windows=(10,), workers=1))
    hms_here("predict", "--store", test_store, "--run", run, "--device", "cpu", "--out", tmp_path / "predict.csv")
    ids, probs = submission(tmp_path / "submission.csv")
    expected_ids, expected = submission(tmp_path / "predict.csv")
    assert ids == expected_ids
    np.testing.assert_allclose(probs, expected, atol=1e-4)  # float16 weights move no probability by more

    # A run with a planned fold not finished (its OOF never written): export and predict refuse, naming it.
    (run / "fold1_oof.parquet").unlink()
    for refused in (hms("export", run, "--out", tmp_path / "partial"),
                    hms("predict", "--store", test_store, "--run", run, "--out", tmp_path / "partial.csv")):
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert refused.stderr.startswith(f"error: {run}: fold 1 of the planned 0, 1") and "not finished" in refused.stderr
        assert f"hms-train --resume {run}" in refused.stderr
    assert not (tmp_path / "partial").exists() and not (tmp_path / "partial.csv").exists()


def damaged_export_is_refused(export: Path, infer: list[str], env: dict, tmp_path: Path) -> None:
    """infer.py on an export whose checkpoint has a flipped byte, then is missing: one line naming the file,
    exit 1, no submission (and no test store built: the checks come first)."""
    checkpoint = next((export / "runs").glob("*/fold0_best.pt"))
    intact = checkpoint.read_bytes()
    damaged = bytearray(intact)
    damaged[len(damaged) // 2] ^= 0x10
    checkpoint.write_bytes(bytes(damaged))
    for why in ("damaged checkpoint (expected sha256 ", "no such checkpoint"):
        out = tmp_path / "refused.csv"
        result = subprocess.run([*infer, "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: {checkpoint}: {why}"), result.stderr
        assert not out.exists()
        checkpoint.unlink(missing_ok=True)
    checkpoint.write_bytes(intact)


def hms_locked_versions(names: list[str]) -> list[str]:
    import tomllib

    packages = {p["name"]: p["version"] for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
    return [f"{name}=={packages[name]}" for name in names]


def test_export_refuses_before_writing(tmp_path, hms):
    result = hms("export", tmp_path / "no-run", "--out", tmp_path / "out")
    assert result.returncode == 1 and "not a run directory" in result.stderr and not (tmp_path / "out").exists()


def test_a_run_with_a_planned_fold_unfinished_is_refused_naming_it(tmp_path):
    """fold{k}_best.pt exists from a fold's first epoch on: only fold{k}_oof.parquet says the fold finished."""
    import json

    from hms_train.run.checkpoint import RunNotFinished, fold_checkpoints

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"folds": [0, 1, 2]}))
    for name in ("fold0_best.pt", "fold0_oof.parquet", "fold1_best.pt"):  # stopped in fold 1; fold 2 never began
        (run / name).write_bytes(b"")
    with pytest.raises(RunNotFinished, match=rf"^{run}: fold 1, 2 of the planned 0, 1, 2 not finished .*"
                                             rf"hms-train --resume {run}$"):
        fold_checkpoints(run)
    for name in ("fold1_oof.parquet", "fold2_best.pt", "fold2_oof.parquet"):
        (run / name).write_bytes(b"")
    assert [p.name for p in fold_checkpoints(run)] == ["fold0_best.pt", "fold1_best.pt", "fold2_best.pt"]
