"""`make seed` at toy size: the whole seed chain (both pipelines' cache, every seed recipe, the pseudo-label
and distillation round, the learned blend beside the seed's own weights, submission.csv and the CV table) on synthetic data, with tiny backbones and
single steps so that it runs on a CPU in CI. The real chain is the same script with no overrides. With the
toy backbone Richard's V2-S and ConvNeXt recipes would train Richard's B0 run again (their own backbones
are built in tests/test_recipes.py), so the toy chain trains B0 for Richard and both of David's."""

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
TOY = " ".join(f"--set {item}" for item in (
    "model.pretrained=false", 'model.backbone="mobilenetv3_small_050"', "epochs=1", "stage2_epochs=1",
    "max_batches_per_epoch=1", "batch_size=2", "reader_threads=2",
    # a seed whose one stage-1 batch holds a low-vote row in both folds of David's pseudo-label runs (their
    # recipes' own seed draws none): their losses then show the pseudo-label files' targets were trained on
    "seed=2",
))


RECIPES = ["seed_richard_b0", "seed_david_b0", "seed_david_mnv3"]
# The public half (docs/recipes.md): the 1D net and the LB31 B0 (its two mel arrays); the features-head WaveNet
# costs ~100 GFLOP per 24 rows on a CPU, so its recipes train in tests/test_public_models.py only (spec) and
# their shapes are tested there. Model settings differ by kind: the tiny backbone goes to the kinds with one
PUBLIC = ["public_resnet1d_gru", "public_lb31_b0"]
PUBLIC_TOY = {"PUBLIC_TRAIN_SET": " ".join(f"--set {item}" for item in (
                  "epochs=1", "stage2_epochs=1", "max_batches_per_epoch=1", "batch_size=2", "reader_threads=2")),
              **{f"PUBLIC_SET_{name}": '--set model.pretrained=false --set model.backbone="mobilenetv3_small_050"'
                 for name in ("public_lb31_b0",)},
              "PUBLIC_SET_public_resnet1d_gru": "--set model.crop_samples=1000"}  # its GRU's steps: the cost on a CPU


def keep_first_lines(train_csv: Path, per_eeg: int, keep: dict[str, int] = {}) -> None:
    """train.csv with each eeg_id's first `per_eeg` lines (`keep`: eeg_id -> its own count): the seed's
    tables keep their sizes (one row per eeg_id, then per spectrogram), and every run predicts fewer rows
    out of fold."""
    with open(train_csv) as f:
        lines = f.read().splitlines()
    eeg = lines[0].split(",").index("eeg_id")
    seen: dict[str, int] = {}
    kept = [lines[0]]
    for line in lines[1:]:
        key = line.split(",")[eeg]
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= keep.get(key, per_eeg):
            kept.append(line)
    train_csv.write_text("\n".join(kept) + "\n")


C_A_A_B_A = [[0, 0, 0, 0, 0, 2], [12, 0, 0, 0, 0, 0], [12, 0, 0, 0, 0, 0], [0, 3, 0, 0, 0, 0], [12, 0, 0, 0, 0, 0]]


def write_c_a_a_b_a(train_csv: Path) -> tuple[str, int]:
    """One spectrogram of one EEG whose first five lines get the votes C A A B A (A = 12 votes, B = 3):
    David's pick_max_vote (D/data_loader.py:340-385) takes its image from the middle A (12 votes) and its
    target from B (3 votes < 10), so its pseudo-label is needed for a row that has 12 votes of its own.
    Returns the eeg_id and that image line's label_id."""
    import pandas as pd

    df = pd.read_csv(train_csv)
    alone = df.groupby("spectrogram_id")["eeg_id"].transform("nunique") == 1
    lines = df[alone].groupby("eeg_id").size()
    eeg_id = int(lines[lines >= 5].index[0])
    first = df.index[df["eeg_id"] == eeg_id][:5]
    votes = ["seizure_vote", "lpd_vote", "gpd_vote", "lrda_vote", "grda_vote", "other_vote"]
    df.loc[first, votes] = C_A_A_B_A
    df.to_csv(train_csv, index=False)
    return str(eeg_id), int(df.loc[first[2], "label_id"])


def test_toy_seed_chain_writes_a_blended_submission(tmp_path, preloaded_bin):
    from hms_prep.synth.dataset import synthesize

    synth_data = tmp_path / "data"
    # 24 EEGs: every fold and stage keeps a batch of the seed's one-row-per-spectrogram tables
    synthesize(synth_data, n_eegs=24, seed=3, n_test=2)
    eeg_id, image_label = write_c_a_a_b_a(synth_data / "train.csv")
    keep_first_lines(synth_data / "train.csv", per_eeg=2, keep={eeg_id: 5})
    seed = tmp_path / "seed"
    env = {**os.environ, "DATA": str(synth_data), "SEED": str(seed), "BIN": str(preloaded_bin),
           "FOLDS": "2", "DEVICE": "cpu", "TRAIN_SET": TOY, "COLUMNS": "200", "RECIPES": " ".join(RECIPES),
           "PUBLIC_RECIPES": " ".join(PUBLIC), **PUBLIC_TOY}
    result = subprocess.run(["bash", "scripts/seed.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    blend = json.loads((seed / "blend.json").read_text())
    # round 1; Richard's pseudo-label run and David's two rounds of them; Richard's distilled run
    assert [Path(run).name for run in blend["runs"]] == [
        *RECIPES, "seed_richard_b0_pl", "seed_david_b0_pl", "seed_david_mnv3_pl", "seed_david_b0_pl2",
        "seed_david_mnv3_pl2", "seed_richard_b0_kd", *PUBLIC]
    assert abs(sum(blend["weights"]) - 1) < 1e-6
    seed_blend = json.loads((seed / "seed_blend.json").read_text())  # the seed's fixed weights, as data
    assert [Path(run).name for run in seed_blend["runs"]] == [
        "seed_richard_b0", "seed_richard_b0_kd", "seed_richard_b0_pl", "seed_david_b0", "seed_david_mnv3_pl2",
        "public_lb31_b0", "public_resnet1d_gru"]
    assert_seed_blend_weights(seed_blend)
    assert_submission_is_predict_with_the_blend(seed, blend, tmp_path)
    assert_teacher_targets_trained_the_kd_run(seed / "runs")
    assert_pseudo_labels_trained_davids_pl_runs(seed / "runs", seed)
    with open(seed / "submission.csv") as f:
        rows = list(csv.DictReader(f))
    test_ids = {row["eeg_id"] for row in csv.DictReader(open(synth_data / "test.csv"))}
    assert {row["eeg_id"] for row in rows} == test_ids
    for row in rows:
        assert abs(sum(float(v) for k, v in row.items() if k != "eeg_id") - 1) < 1e-5
    assert "out-of-fold KL" in result.stdout + result.stderr  # the CV table
    import pyarrow.parquet as pq

    oof = pq.read_table(seed / "runs" / "seed_richard_b0" / "oof.parquet")  # every row, its table marked
    assert oof.num_rows == pq.read_metadata(seed / "specs.zarr" / "labels.parquet").num_rows
    assert 0 < sum(oof.column("in_table").to_pylist()) < oof.num_rows
    assert (seed / "compare.png").stat().st_size > 0
    # David's pseudo-labels cover the C A A B A spectrogram's row (12 votes of its own, its target 3)
    assert image_label in pq.read_table(seed / "pseudo_david.parquet").column("label_id").to_pylist()


# The runs of scripts/seed.sh's seed_blend and the SEED_BLEND leaves (hms_train/run/blend.py) each stands for.
SEED_BLEND_LEAVES = {
    "seed_richard_b0": ["effb0-lb33"], "seed_richard_b0_kd": ["effb0-kd-lb32"],
    "seed_richard_convnext_kd": ["cvnxt-kd-lb32"], "seed_richard_v2s_kd": ["effv2s-kd-lb31"],
    "seed_richard_b0_pl": ["effb0-1"], "seed_david_b0": [f"efficientb0-wo-pl/f{k}" for k in (0, 2, 3)],
    "seed_david_mnv3_pl2": [f"mobilenetv3/f{k}" for k in (0, 2, 3)],
}


def assert_seed_blend_weights(seed_blend: dict) -> None:
    """seed_blend.json: fixed weights, each run's SEED_BLEND share over the shares of the runs present."""
    from hms_train.run.blend import SEED_BLEND

    leaves = SEED_BLEND.leaf_weights()
    shares = [sum(leaves[leaf] for leaf in SEED_BLEND_LEAVES.get(name, [name]))
              for name in (Path(run).name for run in seed_blend["runs"])]
    assert seed_blend["weights_from"] == "fixed"
    assert seed_blend["weights"] == pytest.approx([share / sum(shares) for share in shares], rel=1e-4)


def assert_submission_is_predict_with_the_blend(seed: Path, blend: dict, tmp_path: Path) -> None:
    """submission.csv is what predict gives with blend.json's runs and weights (those of weight 0 left out:
    they add nothing to the weighted mean)."""
    import numpy as np
    import pyarrow.csv as pacsv

    from hms_train.run.predict import predict_submission

    used = [(Path(run), weight) for run, weight in zip(blend["runs"], blend["weights"]) if weight > 0]
    expected = predict_submission(str(seed / "test.zarr"), [run for run, _ in used], tmp_path / "predict.csv",
                                  weights=[weight for _, weight in used], device="cpu")
    written = pacsv.read_csv(seed / "submission.csv")
    assert written.column_names == expected.column_names
    assert written.column("eeg_id").to_pylist() == expected.column("eeg_id").to_pylist()
    for name in written.column_names[1:]:
        np.testing.assert_allclose(written.column(name).to_numpy(), expected.column(name).to_numpy(), atol=1e-6)


def assert_teacher_targets_trained_the_kd_run(runs: Path) -> None:
    """seed_richard_b0_kd's config is seed_richard_b0's with teacher_targets (the teacher file seed.sh wrote)
    alone added: the same initial weights and batches, so its different training losses come from the
    teacher's targets (with the table's targets it trains exactly as seed_richard_b0)."""
    base, kd = (json.loads((runs / name / "config.json").read_text()) for name in ("seed_richard_b0", "seed_richard_b0_kd"))
    assert {key for key in base.keys() | kd.keys() if base.get(key) != kd.get(key)} == {"teacher_targets"}
    assert Path(kd["teacher_targets"]) == runs.parent / "teacher.parquet"

    def losses(name: str) -> list[float]:
        return [json.loads(line)["train_loss"] for line in (runs / name / "metrics.jsonl").read_text().splitlines()]

    assert all(a != pytest.approx(b, rel=1e-3) for a, b in zip(losses("seed_richard_b0"), losses("seed_richard_b0_kd")))


def assert_pseudo_labels_trained_davids_pl_runs(runs: Path, seed: Path) -> None:
    """David's pseudo-label runs (both rounds) are his round-1 runs' configs with their pseudo-label file in
    stage 1 alone added: the same initial weights and the same stage-1 batches, so a stage-1 training loss
    that differs from the round-1 run's comes from the file's targets (a batch holds a low-vote row, whose
    target only the file gives, in both folds at TOY's seed; with the table's targets the run trains exactly as
    the round-1 run)."""
    def losses(name: str) -> dict[int, float]:
        records = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
        return {r["fold"]: r["train_loss"] for r in records if r["stage"] == "stage1" and r["epoch"] == 1}

    for base in ("seed_david_b0", "seed_david_mnv3"):
        for pl, file in ((f"{base}_pl", "pseudo_david.parquet"), (f"{base}_pl2", "pseudo_david2.parquet")):
            first, second = (json.loads((runs / name / "config.json").read_text()) for name in (base, pl))
            assert {key for key in first.keys() | second.keys() if first.get(key) != second.get(key)} == {
                "pseudo_labels", "pseudo_stage"}, pl
            assert Path(second["pseudo_labels"]) == seed / file and second["pseudo_stage"] == "stage1"
            round1, trained = losses(base), losses(pl)
            assert round1.keys() == trained.keys() == {0, 1}
            assert all(trained[fold] != pytest.approx(round1[fold], rel=1e-4) for fold in round1), (pl, trained, round1)
