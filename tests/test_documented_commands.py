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
"""

import os
import re
import shlex
import subprocess
import time

import pandas as pd
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow
TOY_SETS = [f"--set={item}" for item in (
    "model.pretrained=false", 'model.backbone="mobilenetv3_small_050"', "epochs=1", "stage2_epochs=1",
    "max_batches_per_epoch=1", "batch_size=2", "reader_threads=2", "folds=[0]")]
NOT_HERE = {"make setup": "the venv this test runs in", "make seed": "tests/test_seed_chain.py"}
DOCUMENTED_LABEL_ID = "127492639"


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


def test_the_readmes_real_data_block_runs_in_order(tmp_path, preloaded_bin):
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
    for line in lines:
        words = as_run_here(line, str(data), label_id)
        if words is None:
            continue
        # the shell expands runs/* as a user's would
        result = subprocess.run(["bash", "-c", " ".join(w if w.endswith("/*") else shlex.quote(w) for w in words)],
                                cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        print(f"{time.perf_counter() - started:6.1f} s  {line}")

    assert (work / "submission.csv").is_file() and (work / "row.png").is_file()
    assert (work / "kaggle-export" / "infer.py").is_file()
