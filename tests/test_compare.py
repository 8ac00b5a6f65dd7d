"""`hms-train compare` on small run directories written in the documented run format.

The runs are real files (config.json, oof.parquet, metrics.jsonl) with chosen predictions, so the
expected scores can be computed by hand from the store's vote counts.
"""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from hms_prep.sources.kaggle import VOTE_COLUMNS
from hms_prep.store.labels import read_labels
from hms_prep.store.layout import StoreError
from hms_train.cli import app
from hms_train.run.compare import compare_runs
from hms_train.run.metric import CLASS_NAMES, cv_report


def vote_targets(labels: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Targets and total votes straight from the vote counts (independent of the stored targets)."""
    votes = np.stack([labels.column(c).to_numpy() for c in VOTE_COLUMNS], 1).astype(np.float64)
    return votes / votes.sum(1, keepdims=True), votes.sum(1)


def write_run(run, store: str, labels: pa.Table, rows: np.ndarray, predictions: np.ndarray, curve: list[float]):
    """A run directory as hms_train.run.train writes it, with the given out-of-fold predictions."""
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"store": store, "model": "fake"}))
    columns = {
        "label_id": pa.array(labels.column("label_id").to_numpy()[rows]),
        "eeg_id": pa.array(labels.column("eeg_id").to_numpy()[rows]),
        "row": pa.array(rows),
        "fold": pa.array(labels.column("fold").to_numpy()[rows]),
        "total_votes": pa.array(labels.column("total_votes").to_numpy()[rows]),
    }
    columns.update({c: pa.array(predictions[:, j].astype(np.float32)) for j, c in enumerate(VOTE_COLUMNS)})
    pq.write_table(pa.table(columns), run / "oof.parquet")
    records = [
        {"fold": fold, "stage": "stage1" if epoch < 2 else "stage2", "epoch": epoch,
         "train_loss": kl + 0.1, "val_kl": kl, "val_kl_10plus": kl * 0.8}
        for fold in (0, 1) for epoch, kl in enumerate(curve)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def runs(train_store, tmp_path_factory):
    """Three runs on the same rows: perfect, half-way to uniform, uniform; plus their predictions."""
    labels = read_labels(train_store)
    targets, _ = vote_targets(labels)
    rows = np.flatnonzero(labels.column("status").to_numpy(zero_copy_only=False) == "ok")[::2]
    uniform = np.full((len(rows), 6), 1 / 6)
    predictions = {
        "uniform": uniform,
        "perfect": targets[rows],
        "halfway": 0.5 * targets[rows] + 0.5 * uniform,
    }
    root = tmp_path_factory.mktemp("runs")
    for i, (name, probs) in enumerate(predictions.items()):
        write_run(root / name, train_store, labels, rows, probs, curve=[1.2 - 0.1 * i, 1.0 - 0.1 * i, 0.9 - 0.1 * i])
    return root, rows, predictions


def test_scores_equal_cv_report_by_hand(train_store, runs):
    root, rows, predictions = runs
    targets, votes = vote_targets(read_labels(train_store))
    results = {r["run"]: r for r in compare_runs([root / name for name in predictions])}
    assert len(results) == 3
    for name, probs in predictions.items():
        expected = cv_report(targets[rows], probs, votes[rows])
        got = results[str(root / name)]
        assert got["n"] == len(rows) and got["n_10plus"] == expected["n_10plus"] > 0
        assert got["kl"] == pytest.approx(expected["kl"], rel=1e-5, abs=1e-7)
        assert got["kl_10plus"] == pytest.approx(expected["kl_10plus"], rel=1e-5, abs=1e-7)
        for cls in CLASS_NAMES:
            assert got["per_class"][cls] == pytest.approx(expected["per_class"][cls], rel=1e-5, abs=1e-7)
        assert got["store"] == train_store
    assert results[str(root / "perfect")]["kl"] == pytest.approx(0, abs=1e-6)


def test_ranked_by_high_vote_kl(runs):
    root, _, predictions = runs
    results = compare_runs([root / name for name in predictions])
    assert [r["run"] for r in results] == [str(root / n) for n in ("perfect", "halfway", "uniform")]
    high_vote = [r["kl_10plus"] for r in results]
    assert high_vote == sorted(high_vote) and not any(math.isnan(v) for v in high_vote)


def test_store_option_overrides_config(train_store, runs, tmp_path):
    root, rows, predictions = runs
    moved = tmp_path / "moved"
    labels = read_labels(train_store)
    write_run(moved, str(tmp_path / "gone.zarr"), labels, rows, predictions["halfway"], curve=[1.0])
    with pytest.raises(StoreError, match="gone.zarr"):
        compare_runs([moved])
    (result,) = compare_runs([moved], store=train_store)
    assert result["kl"] == pytest.approx(compare_runs([root / "halfway"])[0]["kl"])


def test_predictions_of_another_store_are_refused(train_store, runs, tmp_path):
    _, rows, predictions = runs
    labels = read_labels(train_store)
    shuffled = labels.take(np.roll(np.arange(labels.num_rows), 1))  # label_ids no longer match the rows
    write_run(tmp_path / "other", train_store, shuffled, rows, predictions["perfect"], curve=[1.0])
    with pytest.raises(ValueError, match="label_ids"):
        compare_runs([tmp_path / "other"])


def test_cli_table_json_and_png(runs, tmp_path):
    root, _, predictions = runs
    out = tmp_path / "curves.png"
    paths = [str(root / name) for name in predictions]
    result = CliRunner().invoke(app, ["compare", *paths, "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert result.stdout.index("perfect") < result.stdout.index("halfway") < result.stdout.index("uniform")
    for r in compare_runs(paths):
        assert f"{r['kl']:.4f}" in result.stdout and f"{r['kl_10plus']:.4f}" in result.stdout
        assert f"{r['per_class']['LRDA']:.4f}" in result.stdout
    assert out.is_file() and out.stat().st_size > 10_000

    result = CliRunner().invoke(app, ["compare", *paths, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [r["run"] for r in listed] == [str(root / n) for n in ("perfect", "halfway", "uniform")]
    assert set(listed[0]["per_class"]) == set(CLASS_NAMES)


def test_missing_oof_is_a_clear_error(runs, tmp_path):
    root, _, _ = runs
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps({"store": "unused"}))
    with pytest.raises(FileNotFoundError, match="no oof.parquet"):
        compare_runs([root / "perfect", unfinished])
    result = CliRunner().invoke(app, ["compare", str(root / "perfect"), str(unfinished), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert "no oof.parquet" in result.output


def test_out_in_a_missing_folder_is_a_clear_error_before_scoring(runs):
    root, _, _ = runs
    result = CliRunner().invoke(app, ["compare", str(root / "perfect"), "--out", "/nonexistent/x.png"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "error: --out /nonexistent/x.png: folder /nonexistent does not exist" in result.output


def test_the_readmes_sequence_blend_into_runs_then_compare_runs_star(runs, tmp_path):
    """README: `hms-train blend ... --out runs/blend.json`, then `hms-train compare runs/*`: the glob also
    matches blend.json (and a compare.png written there), which are skipped with a note each."""
    import shutil

    root = shutil.copytree(runs[0], tmp_path / "runs")
    blended = CliRunner().invoke(app, ["blend", str(root / "perfect"), str(root / "halfway"), "--out",
                                       str(root / "blend.json")])
    assert blended.exit_code == 0, blended.output
    (root / "compare.png").write_bytes(b"")
    star = sorted(str(p) for p in root.iterdir())  # what the shell makes of runs/*
    result = CliRunner().invoke(app, ["compare", *star, "--out", str(tmp_path / "curves.png"), "--json"])
    assert result.exit_code == 0, result.output
    assert [r["run"] for r in json.loads(result.stdout)] == [str(root / n) for n in ("perfect", "halfway", "uniform")]
    assert f"note: skipped {root / 'blend.json'} (a file, not a run directory)" in result.stderr
    assert f"note: skipped {root / 'compare.png'} (a file, not a run directory)" in result.stderr
