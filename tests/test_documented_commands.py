"""README.md's real-data block, run line after line on synthetic data, as a user would paste it: one
shell, one working directory, so a line that breaks the next one (a file it writes where the next
command reads) is caught. Each line runs as written but for the substitutions below, stated here:

- `.venv/bin/hms-*` are the CLIs forked from one preloaded process (tests/preloaded.py: imports once);
- `/path/to/hms` is a small synthetic dataset; the label id shown is one of its rows;
- a training line gets toy settings (`TOY_SETS`: a tiny backbone without pretrained weights, one batch
  per epoch, fold 0) and `--device cpu`, and `plan` the same settings: the recipe, its row table and its
  stages are the documented ones.

`make setup` (the venv the test runs in: tests/test_install.py) and `make seed` (tests/test_seed_chain.py
at toy size) are the two lines not run here.

Then every example of docs/cli.md's ```bash blocks, in the document's order, in the same checkout (its
stores and runs serve them; issue 28), with README's substitutions and `CLI_SIZES` (sizes made toy,
a weights file and a plug-in folder made here, each substitution required to match: a changed example
is noticed, not silently run at full size); a line the README block ran already, word for word, is
not run twice; `CLI_NOT_HERE` are the examples not run here, each with its reason.
"""

import os
import re
import shlex
import shutil
import subprocess
import time

import pandas as pd
import pytest
import timm
from safetensors.torch import save_file

from conftest import ROOT

pytestmark = pytest.mark.slow
TOY_SETS = [f"--set={item}" for item in (
    "model.pretrained=false", 'model.backbone="mobilenetv3_small_050"', "epochs=1", "stage2_epochs=1",
    "max_batches_per_epoch=1", "batch_size=2", "reader_threads=2", "folds=[0]")]
NOT_HERE = {"make setup": "the venv this test runs in", "make seed": "tests/test_seed_chain.py"}
DOCUMENTED_LABEL_ID = "127492639"
# docs/cli.md's examples not run here (a piece of the line -> why)
CLI_NOT_HERE = {
    "dask scheduler": "a Dask cluster across two machines: --scheduler is tests/test_build.py's and test_reliability.py's",
    "dask worker": "a Dask cluster across two machines (as above)",
    "--scheduler tcp://10.0.0.5": "a Dask cluster across two machines (as above); s3:// needs an object store",
    "!python ": "a Kaggle notebook's cell: tests/test_export.py runs infer.py offline, as Kaggle does",
    "hms-train export ": "the README block exports (--blend, 35-40 s); tests/test_export.py exports a RUN",
    "torchrun ": "eight processes, one per GPU: tests/test_train.py runs a two-process run",
    "--device cuda": "needs CUDA",
}
# docs/cli.md's sizes and paths, made toy or local here: documented -> run (each must match some example)
CLI_SIZES = {
    "--eegs 300": "--eegs 2",
    "--fraction 0.02": "--fraction 0.0002",  # 3 EEGs, 21 rows
    "/data/hms": "{data}",
    "/models/tf_efficientnet_b0_ns.safetensors": "{weights}",  # the toy backbone's (TOY_SETS)
    "runs/raw1d": "runs/smoke",  # a third run for the blend: the smoke example's
    "--config seed_david_b0 --json": "--config seed_david_b0 --json --batches 2 --batch-size 4",  # 50 batches of 32
}


def readme_block() -> list[str]:
    """The commands of README.md's "Using it on the real data" block, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Using it on the real data", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [re.split(r"\s+# ", line, maxsplit=1)[0].strip() for line in block.splitlines() if line.strip()]


def as_run_here(line: str, data: str, label_id: int) -> list[str] | None:
    """The line's words with this test's substitutions (module docstring); None: not run here."""
    if any(line.startswith(prefix) for prefix in NOT_HERE):
        return None
    words = [word.replace("/path/to/hms", data).replace(DOCUMENTED_LABEL_ID, str(label_id))
             for word in shlex.split(line.replace(".venv/bin/", ""))]
    training = words[0] == "hms-train" and (words[1].startswith("-") or words[1] == "train") and "--resume" not in words
    if training:
        return words + ["--device", "cpu", *TOY_SETS]
    return words + TOY_SETS if words[:2] == ["hms-train", "plan"] else words


def cli_md_examples() -> list[str]:
    """The lines of docs/cli.md's ```bash blocks, in order, comments dropped."""
    text = (ROOT / "docs" / "cli.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```bash\n")[1:]]
    lines = [re.split(r"(?:^|\s+)# ", line, maxsplit=1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def cli_md_as_run_here(line: str, values: dict, used: set) -> tuple[list[str], dict] | str:
    """The example's words and environment with the substitutions (module docstring), or why it is not run."""
    for piece, why in CLI_NOT_HERE.items():
        if piece in line:
            return why
    for documented, here in CLI_SIZES.items():
        if documented in line:
            used.add(documented)
            line = line.replace(documented, here.format(**values))
    env = {}
    while re.match(r"[A-Z_]+=", line):  # VAR=value before the command
        assignment, line = line.split(" ", 1)
        name, value = assignment.split("=", 1)
        env[name] = value
    words = as_run_here(line, values["data"], values["label_id"])
    return words, env


def test_the_readmes_real_data_block_then_cli_mds_examples_run_in_order(tmp_path, preloaded_bin):
    from hms_prep.synth.dataset import synthesize
    from test_seed_chain import keep_first_lines

    data = tmp_path / "hms"
    synthesize(data, n_eegs=10, seed=5, n_test=2)  # every fold of 5 holds rows of the seed's tables
    keep_first_lines(data / "train.csv", per_eeg=2)
    label_id = int(pd.read_csv(data / "train.csv")["label_id"].iloc[0])
    lines = readme_block()
    assert len(lines) >= 17 and any("compare runs/*" in line for line in lines), lines
    work = tmp_path / "checkout"
    work.mkdir()
    env = {**os.environ, "PATH": f"{preloaded_bin}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the README's --track mlflow: its default, beside the run
    started = time.perf_counter()

    def run(line: str, words: list[str], extra_env: dict) -> None:
        # the shell expands runs/* as a user's would
        result = subprocess.run(["bash", "-c", " ".join(w if w.endswith("/*") else shlex.quote(w) for w in words)],
                                cwd=work, env={**env, **extra_env}, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        print(f"{time.perf_counter() - started:6.1f} s  {line}")

    ran = set()
    for line in lines:
        words = as_run_here(line, str(data), label_id)
        if words is not None:
            run(line, words, {})
            ran.add(tuple(words))

    assert (work / "submission.csv").is_file() and (work / "row.png").is_file()
    assert (work / "kaggle-export" / "infer.py").is_file()

    run_cli_md_examples(work, run, ran, {"data": str(data), "label_id": label_id}, tmp_path)


def run_cli_md_examples(work, run, ran: set, values: dict, tmp_path) -> None:
    """docs/cli.md's examples, in the README block's checkout (module docstring)."""
    examples = cli_md_examples()
    assert len(examples) >= 25 and any("--plugin extra_kind" in line for line in examples), examples
    weights = tmp_path / "mobilenetv3_small_050.safetensors"
    save_file(timm.create_model("mobilenetv3_small_050").state_dict(), str(weights))
    shutil.copytree(ROOT / "tests" / "plugins", work / "plugins")
    values = {**values, "weights": str(weights)}
    used = set()
    for line in examples:
        found = cli_md_as_run_here(line, values, used)
        if isinstance(found, str):
            print(f"   not run: {line}  ({found})")
        elif tuple(found[0]) in ran:
            print(f"   run above: {line}")
        else:
            run(line, *found)
            ran.add(tuple(found[0]))
    assert used == set(CLI_SIZES), f"no example of docs/cli.md has {set(CLI_SIZES) - used}: update CLI_SIZES"
    assert (work / "cache" / "specs.zarr" / "band_power_10s").is_dir() and (work / "runs" / "b0_w" / "oof.parquet").is_file()
