"""The competition's table structure (`hms-prep synth --like competition`), and a 0.6 % rehearsal of the
user's path on it: build, plan, one training step. The full rehearsal is benchmarks/full_scale.py."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from hms_prep.domain import LABEL_WINDOW_S, SAMPLE_RATE
from hms_prep.sources.kaggle import eeg_path, read_labels, spectrogram_path
from hms_prep.synth.competition import COMPETITION, _full_eegs_per_spectrogram, _full_rows_per_eeg, competition_plan

# The smallest fraction where every statistic below still holds (0.5 % gives a spectrogram-rows median of 3,
# not the real 4; 0.6 %: 641 rows, 103 EEGs, 67 spectrograms, 10 patients): 40 % less to build than 1 %.
FRACTION = 0.006


def _quantile_top(full: np.ndarray, count: int) -> int:
    """The full-size profile's value at the top of `count` evenly spaced quantiles: the maximum at that count."""
    return int(full[int((count - 0.5) / count * full.size)])


@pytest.fixture(scope="module")
def data(tmp_path_factory, preloaded):
    out = tmp_path_factory.mktemp("competition") / "data"
    result = preloaded("hms-prep", "synth", out, "--like", "competition", "--fraction", FRACTION, "--seed", 4)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def labels(data):
    table = read_labels(data, "train")
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def test_full_size_plan_has_the_real_structure():
    plan = competition_plan(1.0, seed=0)
    rows, per_spectrogram = plan.rows_per_eeg, plan.eegs_per_spectrogram
    assert (rows.sum(), rows.size, per_spectrogram.size) == (106_800, 17_089, 11_138)
    assert plan.patient_of_spectrogram.max() + 1 == 1_950
    assert (np.median(rows), rows.max()) == (3, 743)
    assert (per_spectrogram.min(), per_spectrogram.max()) == (1, 107)
    assert (per_spectrogram == 1).mean() == pytest.approx(0.75, abs=0.001)
    spectrogram_rows = np.bincount(plan.owner, weights=rows)
    assert np.median(spectrogram_rows) == 4 and spectrogram_rows.mean() == pytest.approx(9.59, abs=0.01)


def test_plan_is_deterministic_for_a_seed():
    first, again, other = competition_plan(0.02, 5), competition_plan(0.02, 5), competition_plan(0.02, 6)
    assert np.array_equal(first.rows_per_eeg, again.rows_per_eeg)
    assert np.array_equal(first.eegs_per_spectrogram, again.eegs_per_spectrogram)
    assert not np.array_equal(first.rows_per_eeg, other.rows_per_eeg)
    assert (first.rows_per_eeg.size, first.rows_per_eeg.sum()) == (342, 2_136)  # the 0.02


def test_a_fraction_follows_the_real_statistics(labels):
    eegs, counts = np.unique(labels["eeg_id"], return_counts=True)
    spectrograms, spectrogram_rows = np.unique(labels["spectrogram_id"], return_counts=True)
    # counts scale with the fraction
    assert len(labels["eeg_id"]) == round(FRACTION * COMPETITION.rows)
    assert eegs.size == round(FRACTION * COMPETITION.eegs)
    assert spectrograms.size == round(FRACTION * COMPETITION.spectrograms)
    assert np.unique(labels["patient_id"]).size == round(FRACTION * COMPETITION.patients)
    # medians hold, maxima are the full profile's top quantile at this count (743 and 107 at fraction 1)
    assert np.median(counts) == 3 and np.median(spectrogram_rows) == 4
    assert counts.max() == _quantile_top(_full_rows_per_eeg(), eegs.size) < COMPETITION.max_rows_per_eeg
    eegs_of = {s: np.unique(labels["eeg_id"][labels["spectrogram_id"] == s]) for s in spectrograms}
    sizes = np.array([len(e) for e in eegs_of.values()])
    assert sizes.max() == _quantile_top(_full_eegs_per_spectrogram(), spectrograms.size)
    assert (sizes == 1).mean() == pytest.approx(0.75, abs=0.02) and (sizes >= 3).any()  # shared spectrograms
    # each EEG in one spectrogram, one patient per spectrogram
    assert sum(sizes) == eegs.size
    for s in spectrograms:
        assert np.unique(labels["patient_id"][labels["spectrogram_id"] == s]).size == 1


def test_sub_ids_and_offsets_run_like_the_real_table(labels, data):
    for eeg in np.unique(labels["eeg_id"])[:40]:
        rows = labels["eeg_id"] == eeg
        assert np.array_equal(labels["eeg_sub_id"][rows], np.arange(rows.sum()))
        assert np.all(np.diff(labels["eeg_label_offset_seconds"][rows]) > 0)
        # the length rule: the recording ends 50 s after its last label offset
        length = pq.ParquetFile(eeg_path(data, "train", eeg)).metadata.num_rows
        assert length == (labels["eeg_label_offset_seconds"][rows][-1] + LABEL_WINDOW_S) * SAMPLE_RATE
    for s in np.unique(labels["spectrogram_id"]):
        rows = labels["spectrogram_id"] == s
        assert np.array_equal(np.sort(labels["spectrogram_sub_id"][rows]), np.arange(rows.sum()))
        assert spectrogram_path(data, "train", s).exists()
    test_ids = (data / "test.csv").read_text().splitlines()[1:]
    assert len(test_ids) == max(2, round(FRACTION * COMPETITION.eegs) // 20)


def test_a_fraction_builds_plans_and_trains_a_step(data, tmp_path, preloaded):
    """The user's path at 0.6 % of the real structure (FRACTION): build, the seed's stage-1 tables, a training
    step."""
    store = tmp_path / "specs.zarr"
    built = preloaded("hms-prep", "build", "--data", data, "--store", store, "--windows", "10,30", "--workers", 1, "-q")
    assert built.returncode == 0, built.stdout + built.stderr
    # the no-op build in a process of its own: its rows, row table and labels.parquet without pandas (0.5 s)
    code = ("import sys; from hms_prep.cli import app; sys.argv[0] = 'hms-prep'\n"
            "try: app()\nexcept SystemExit as end: assert not end.code, end.code\n"
            "assert 'pandas' not in sys.modules, 'pandas imported'")
    again = subprocess.run([sys.executable, "-c", code, "build", "--data", data, "--store", store, "--windows", "10,30",
                            "-q"], capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to compute" in again.stdout, again.stdout + again.stderr[-800:]
    spectrograms = round(FRACTION * COMPETITION.spectrograms)
    shown = preloaded("hms-train", "plan", "--config", "seed_richard_b0", "--store", store, "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    plan = json.loads(shown.stdout)
    assert (plan["row_table"], plan["table_rows"]) == ("richard", spectrograms)
    # David's recipe plans only on a store with his four windows (benchmarks/full_scale.py builds them);
    # his table is read here from the same labels: one row per spectrogram too
    from hms_prep.store.labels import read_labels as read_store_labels
    from hms_train.data.tables import row_table

    assert len(row_table("david", read_store_labels(str(store))).rows) == spectrograms
    trained = preloaded("hms-train", "train", "--store", store, "--config", "smoke", "--out", tmp_path / "run",
                        "--folds", 0, "--epochs", 1, "--device", "cpu", "-q", "--set", "max_batches_per_epoch=1",
                        "--set", "stage2_epochs=0")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert '"epoch": 1' in (tmp_path / "run" / "metrics.jsonl").read_text()


def test_reading_train_csv_does_not_import_pandas(data):
    """pyarrow's to_numpy imports pandas on its first call (about 0.5 s of a no-op build's start); the label
    reader takes the columns' buffers instead (hms_prep/columns.py)."""
    code = ("import sys; from hms_prep.sources.kaggle import read_labels; read_labels(sys.argv[1], 'train'); "
            "assert 'pandas' not in sys.modules, 'pandas imported'")
    done = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-800:]


def test_numpy_column_gives_what_to_numpy_gives():
    import pyarrow as pa

    from hms_prep.columns import numpy_column

    values = pa.array(np.arange(10, dtype=np.int64))
    cases = [values, values.slice(3, 4), pa.chunked_array([values.slice(0, 5), values.slice(5)]),
             pa.chunked_array([values.slice(2, 3)]), pa.array([1.5, None, 2.5]), pa.array(["a", "b"]),
             pa.chunked_array([], pa.int64()), pa.array([True, False] * 9).slice(3, 11), pa.array([True, None])]
    for column in cases:
        got, want = numpy_column(column), column.to_numpy(zero_copy_only=False)
        assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=got.dtype.kind == "f"), column


def test_arrow_and_string_columns_give_what_pa_array_gives():
    import pyarrow as pa

    from hms_prep.columns import arrow_column, string_column

    for values in (np.arange(7, dtype=np.int64)[::2], np.float32([0.5, -2.0]), np.int8([-1, 3]),
                   np.array([True, False, True] * 4), np.zeros(0, dtype=bool)):
        assert arrow_column(values).equals(pa.array(values)), values
    for strings in ([], ["ok", "", "eeg_10s: décodé; raw: gap"]):
        assert string_column(strings).equals(pa.array(strings, pa.string())), strings
