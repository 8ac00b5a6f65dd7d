"""A synthetic dataset in the exact Kaggle HMS layout, with planted, learnable class patterns.

The real data (about 22 GB) cannot travel with the code, yet every stage (build, train, predict) must
run end to end on files that look like Kaggle's in every detail that code can depend on: file and
column names, column order, dtypes, 0.01 uV rounding, NaNs, label-window geometry, vote counts.

What is planted, and where. The geometry and scale were measured on the genuine pair in
shared/real-sample: its Kaggle spectrogram best matches a centred 1024-sample Hann STFT of its EEG
(log-power correlation 0.93, PSD scale within 10 %) when the EEG starts 275 s into the spectrogram.

- Every EEG carries ONE class (all its label rows share it; votes vary per row). Its pattern covers
  [first offset + 5 s, last offset + 45 s], so every row's central 30 s sees it at full strength.
- An EEG starts at an odd second `start` of its spectrogram, so a row with EEG offset `o` has
  spectrogram offset `start + o - 275` and its 50 s EEG window sits in the middle of its 10 min
  spectrogram window, as in the real data.
- Spectrogram rows whose 1024-sample window lies inside an EEG are that EEG's chain-averaged bipolar
  power (two-sided PSD in uV^2/Hz at FFT bins 3..102, the real files' scale); the other rows are
  background power of the same level with the chi-square-like spread of a periodogram.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.signal import ShortTimeFFT, oaconvolve
from scipy.signal.windows import hann

from hms_prep.domain import CHAINS, CLASSES, LABEL_WINDOW_S, SAMPLE_RATE, SPEC_ROW_S, SPEC_WINDOW_S, VOTE_COLUMNS
from hms_prep.sources.kaggle import EEG_COLUMNS, SPEC_COLUMNS, SPEC_FREQS, TEST_COLUMNS, TRAIN_COLUMNS, eeg_path, spectrogram_path
from hms_prep.sources.montage import bipolar_signals

# An EEG label window [o, o + 50) sits at spectrogram seconds [spec_o + 275, spec_o + 325).
SPEC_LEAD_S = (SPEC_WINDOW_S - LABEL_WINDOW_S) // 2
MAX_EEG_S = 300  # the real tail goes to 57 min; 5 min keeps synthesis fast and still exercises it
MAX_ROWS_PER_EEG = 40
NAN_FRACTION = 0.05  # share of EEG and spectrogram files given NaNs (at least one of each)

# Kaggle's spectrogram: FFT bins 3..102 of a 1024-point FFT, one row per 2 s, Hann window, PSD scale.
_KAGGLE_BINS = slice(3, 103)
_KAGGLE_STFT = ShortTimeFFT(
    hann(1024, sym=False), hop=SPEC_ROW_S * SAMPLE_RATE, fs=SAMPLE_RATE, mfft=1024, scale_to="psd"
)
_FIRST_FRAME = _KAGGLE_STFT.lower_border_end[1]  # first frame whose window starts at or after sample 0

# Scalp positions on a unit grid (x: left -2 .. right 2, y: back -2 .. front 2); the last column, EKG,
# is not on the scalp and never carries a brain pattern.
_POSITIONS = {
    "Fp1": (-1, 2), "Fp2": (1, 2),
    "F7": (-2, 1), "F3": (-1, 1), "Fz": (0, 1), "F4": (1, 1), "F8": (2, 1),
    "T3": (-2, 0), "C3": (-1, 0), "Cz": (0, 0), "C4": (1, 0), "T4": (2, 0),
    "T5": (-2, -1), "P3": (-1, -1), "Pz": (0, -1), "P4": (1, -1), "T6": (2, -1),
    "O1": (-1, -2), "O2": (1, -2),
}
_SCALP = len(EEG_COLUMNS) - 1
_XY = np.array([_POSITIONS[name] for name in EEG_COLUMNS[:_SCALP]], dtype=np.float64)

# Where annotators' other votes go for each planted class (rows follow CLASSES): periodic patterns
# are confused with each other, rhythmic ones likewise, and everything with Other.
_CONFUSION = np.array([
    [0.00, 0.30, 0.20, 0.15, 0.10, 0.25],  # Seizure
    [0.15, 0.00, 0.40, 0.15, 0.05, 0.25],  # LPD
    [0.15, 0.40, 0.00, 0.05, 0.15, 0.25],  # GPD
    [0.10, 0.15, 0.05, 0.00, 0.40, 0.30],  # LRDA
    [0.10, 0.05, 0.15, 0.40, 0.00, 0.30],  # GRDA
    [0.15, 0.20, 0.15, 0.20, 0.30, 0.00],  # Other
])
_LOW_VOTES = np.arange(1, 8)  # the crowd population: 1-7 votes, 3 most common
_LOW_VOTE_WEIGHTS = np.array([0.20, 0.15, 0.35, 0.10, 0.08, 0.07, 0.05])
_HIGH_VOTES = np.arange(10, 29)  # the expert population: 10-28 votes


@dataclass(frozen=True)
class SynthSummary:
    """What `synthesize` wrote. `seconds` is the wall-clock time it took."""

    out_dir: Path
    train_rows: int
    train_eegs: int
    test_eegs: int
    patients: int  # train patients (test patients are separate ones)
    seconds: float
    train_spectrograms: int
    eeg_seconds: float  # total length of all EEG files written, train and test


@dataclass(frozen=True)
class _Recording:
    """One EEG file to write: its class, label offsets, length and place in its spectrogram."""

    eeg_id: int
    patient_id: int
    label: int  # index into CLASSES
    offsets: tuple[float, ...]  # label offsets in seconds; a test EEG has the single offset 0
    seconds: int
    start_in_spec: int  # spectrogram second at which sample 0 sits; odd, like the row times
    with_nans: bool


@dataclass(frozen=True)
class _Spectrogram:
    """One Kaggle spectrogram file and the EEG recordings (1 or 2, one patient) it covers."""

    spectrogram_id: int
    recordings: tuple[_Recording, ...]
    rows: int
    with_nans: bool


def synthesize(
    out_dir: str | Path, n_eegs: int = 200, seed: int = 0, n_test: int | None = None, jobs: int = 1
) -> SynthSummary:
    """Write a Kaggle-layout dataset with `n_eegs` train EEGs and `n_test` test EEGs into `out_dir`.

    `n_test` defaults to max(2, n_eegs // 20). The output is deterministic for a seed (identical
    CSV bytes and parquet contents), whatever `jobs` (processes writing files). `out_dir` must be
    empty or absent, so stale files of an earlier run can never be mistaken for part of this one.
    """
    began = time.perf_counter()
    n_test = max(2, n_eegs // 20) if n_test is None else n_test
    if n_eegs < 1 or n_test < 1:
        raise ValueError(f"need at least one train and one test EEG, got n_eegs={n_eegs}, n_test={n_test}")
    out = _empty_folder(out_dir)
    train, test, label_rows = _plan(np.random.default_rng([seed, 0]), n_eegs, n_test)
    return _write_dataset(out, seed, train, test, label_rows, began, jobs)


def synthesize_like_competition(
    out_dir: str | Path, fraction: float = 1.0, seed: int = 0, n_test: int | None = None, jobs: int = 1
) -> SynthSummary:
    """A Kaggle-layout dataset whose train.csv has the real table's structure (COMPETITION) at `fraction`.

    `fraction` scales the number of EEGs, spectrograms, patients and rows (1.0: the full 106,800 rows);
    see `competition_plan` for how the distributions are kept. Signals, classes and votes are planted
    as in `synthesize`; every EEG is just long enough for its offsets (last offset + 50 s).
    """
    began = time.perf_counter()
    plan = competition_plan(fraction, seed)
    n_test = max(2, len(plan.rows_per_eeg) // 20) if n_test is None else n_test
    if n_test < 1:
        raise ValueError(f"need at least one test EEG, got n_test={n_test}")
    out = _empty_folder(out_dir)
    train, test, label_rows = _plan(np.random.default_rng([seed, 0]), len(plan.rows_per_eeg), n_test, plan)
    return _write_dataset(out, seed, train, test, label_rows, began, jobs)


def _empty_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty; synthesize writes into an empty or new folder")
    for folder in ("train_eegs", "train_spectrograms", "test_eegs", "test_spectrograms"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    return out


def _write_dataset(out: Path, seed: int, train, test, label_rows, began: float, jobs: int) -> SynthSummary:
    """Write every file of the plan: signal files (in `jobs` processes when > 1), then the CSVs."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    work = [(out, split, spectrogram, seed) for split, group in (("train", train), ("test", test)) for spectrogram in group]
    if jobs == 1:
        for item in work:
            _write_file_group(item)
    else:
        from concurrent.futures import ProcessPoolExecutor

        # the longest groups first, so no worker is left with a big one at the end
        work.sort(key=lambda item: -item[2].rows)
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for _ in pool.map(_write_file_group, work, chunksize=max(1, len(work) // (32 * jobs))):
                pass
    test_recordings = [r for s in test for r in s.recordings]
    _write_csv(out / "train.csv", TRAIN_COLUMNS, label_rows)
    test_rows = [(s.spectrogram_id, r.eeg_id, r.patient_id) for s in test for r in s.recordings]
    _write_csv(out / "test.csv", TEST_COLUMNS, test_rows)
    uniform = (1 / len(VOTE_COLUMNS),) * len(VOTE_COLUMNS)
    submission_rows = [(r.eeg_id,) + uniform for r in test_recordings]
    _write_csv(out / "sample_submission.csv", ("eeg_id",) + VOTE_COLUMNS, submission_rows)

    train_recordings = [r for s in train for r in s.recordings]
    return SynthSummary(
        out_dir=out,
        train_rows=len(label_rows),
        train_eegs=len(train_recordings),
        test_eegs=len(test_recordings),
        patients=len({r.patient_id for r in train_recordings}),
        seconds=time.perf_counter() - began,
        train_spectrograms=len(train),
        eeg_seconds=float(sum(r.seconds for r in train_recordings + test_recordings)),
    )


def _write_file_group(item) -> None:
    out, split, spectrogram, seed = item
    # one generator per file, keyed by its id: a file's content does not depend on the others
    rng = np.random.default_rng([seed, 1, spectrogram.spectrogram_id])
    _write_spectrogram_and_eegs(out, split, spectrogram, rng)


# ---------------------------------------------------------------------------------------------------
# The competition's table structure, at a fraction.


@dataclass(frozen=True)
class TableStructure:
    """The real train.csv's structure (issue 27: measured from a public copy of the competition's ids)."""

    rows: int
    eegs: int
    spectrograms: int
    patients: int
    max_rows_per_eeg: int  # median 3, mean 6.25
    max_eegs_per_spectrogram: int  # three quarters of the spectrograms hold one EEG


COMPETITION = TableStructure(
    rows=106_800, eegs=17_089, spectrograms=11_138, patients=1_950, max_rows_per_eeg=743, max_eegs_per_spectrogram=107
)
SINGLE_EEG_SHARE = 0.75


@dataclass(frozen=True)
class CompetitionPlan:
    """Counts at a fraction: rows of each EEG, EEG count of each spectrogram, patient of each spectrogram.

    EEG i belongs to spectrogram `owner[i]`; the EEGs of one spectrogram are consecutive.
    """

    rows_per_eeg: np.ndarray
    eegs_per_spectrogram: np.ndarray
    patient_of_spectrogram: np.ndarray  # patient index, 0..patients-1

    @property
    def owner(self) -> np.ndarray:
        return np.repeat(np.arange(self.eegs_per_spectrogram.size), self.eegs_per_spectrogram)


def _tail_profile(count: int, low: int, scale: float, power: float, cap: int) -> np.ndarray:
    """`count` sorted integers >= low: a power-law quantile function low + scale((1-u)^-power - 1), capped."""
    u = (np.arange(count) + 0.5) / count
    return np.minimum(low + np.floor(scale * ((1 - u) ** -power - 1)), cap).astype(np.int64)


def _full_rows_per_eeg() -> np.ndarray:
    """17,089 sorted row counts with median 3 and maximum 743, summing to 106,858 (`competition_plan` makes
    it exactly 106,800, mean 6.25): scale 5.55 and power 0.51 were fitted to the three together."""
    return _tail_profile(COMPETITION.eegs, 1, 5.55, 0.51, COMPETITION.max_rows_per_eeg)


def _full_eegs_per_spectrogram() -> np.ndarray:
    """11,138 sorted EEG counts: three quarters 1, the rest 2..107 (scale 0.8 and power 0.675 fitted to the
    maximum and the sum), summing to 17,086 (`competition_plan` makes it 17,089)."""
    singles = round(SINGLE_EEG_SHARE * COMPETITION.spectrograms)
    shared = _tail_profile(COMPETITION.spectrograms - singles, 2, 0.8, 0.675, COMPETITION.max_eegs_per_spectrogram)
    return np.concatenate([np.ones(singles, np.int64), shared])


def _exact_sum(values: np.ndarray, total: int) -> np.ndarray:
    """Sorted `values` with +-1 on the largest ones strictly between the median and the maximum, to sum to `total`.

    The median and the maximum stay as they are (where there are enough values between them).
    """
    values = values.copy()
    missing = int(total - values.sum())
    between = np.flatnonzero((values > np.median(values)) & (values < values.max()))[::-1]
    if between.size == 0:
        between = np.arange(values.size)[::-1]
    step = 1 if missing > 0 else -1
    for k in range(abs(missing)):
        i = between[k % between.size]
        if values[i] + step >= 1:
            values[i] += step
    return np.sort(values)


def _quantile_sample(full: np.ndarray, count: int) -> np.ndarray:
    """`count` values of a sorted full-size profile at evenly spaced quantiles (all of it at full count)."""
    return full[((np.arange(count) + 0.5) / count * full.size).astype(np.int64)]


def competition_plan(fraction: float, seed: int = 0) -> CompetitionPlan:
    """The real table's structure at `fraction` of its EEGs.

    At fraction F the spectrograms' EEG counts and the EEGs' row counts are the full-size profiles'
    values at round(F * 11,138) and round(F * 17,089) evenly spaced quantiles, summed to exactly
    round(F * 17,089) EEGs and round(F * 106,800) rows: medians and the share of single-EEG
    spectrograms hold at every F, and each maximum is the profile's top quantile at that count, so it
    reaches 743 rows and 107 EEGs at F = 1. EEGs are dealt to spectrograms and row counts to EEGs at
    random (seeded); each spectrogram belongs to one patient.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], got {fraction}")
    n_spectrograms = max(1, round(fraction * COMPETITION.spectrograms))
    n_eegs = max(n_spectrograms, round(fraction * COMPETITION.eegs))
    n_rows = max(n_eegs, round(fraction * COMPETITION.rows))
    n_patients = max(min(n_spectrograms, 6), round(fraction * COMPETITION.patients))  # enough for 5 folds
    rng = np.random.default_rng([seed, 2])
    per_spectrogram = _exact_sum(_quantile_sample(_full_eegs_per_spectrogram(), n_spectrograms), n_eegs)
    per_eeg = _exact_sum(_quantile_sample(_full_rows_per_eeg(), n_eegs), n_rows)
    return CompetitionPlan(
        rows_per_eeg=rng.permutation(per_eeg),
        eegs_per_spectrogram=rng.permutation(per_spectrogram),
        patient_of_spectrogram=_assign_patients(rng, n_spectrograms, n_patients),
    )


# ---------------------------------------------------------------------------------------------------
# The plan: ids, patients, classes, label offsets, geometry, votes. Drawn from one generator, in order.


def _plan(rng, n_eegs: int, n_test: int, structure: CompetitionPlan | None = None):
    """Train and test spectrograms (with their recordings) and the train.csv rows.

    Without `structure`, each EEG has a geometric number of rows and spectrograms hold one or two
    EEGs; with it, the counts and groups are the structure's.
    """
    eeg_ids = _unique_ids(rng, n_eegs + n_test, 10**6, 2**32)
    spectrogram_ids = _unique_ids(rng, n_eegs + n_test, 10**5, 2**31)
    if structure is None:
        n_patients = max(min(n_eegs, 6), n_eegs // 6)  # about 6 EEGs each; enough patients for 5 folds
    else:
        n_patients = int(structure.patient_of_spectrogram.max()) + 1
    patient_ids = _unique_ids(rng, n_patients + n_test, 1000, 66000)
    if structure is None:
        owners = _assign_patients(rng, n_eegs, n_patients)
    else:
        owners = structure.patient_of_spectrogram[structure.owner]
    classes = rng.permutation(np.arange(n_eegs) % len(CLASSES))  # every class present, balanced
    if structure is None:
        offsets = [_label_offsets(rng) for _ in range(n_eegs)]
    else:
        offsets = [_spaced_offsets(rng, int(count)) for count in structure.rows_per_eeg]
    with_nans = _pick(rng, n_eegs)

    if structure is None:
        groups = _spectrogram_groups(rng, owners)
    else:
        ends = np.cumsum(structure.eegs_per_spectrogram)
        groups = [list(range(end - count, end)) for end, count in zip(ends, structure.eegs_per_spectrogram)]
    spectrogram_nans = _pick(rng, len(groups))
    train = []
    placed = {}  # draw index -> (recording, spectrogram id, its first spectrogram_sub_id)
    for g, members in enumerate(groups):
        lengths = [int(offsets[i][-1]) + LABEL_WINDOW_S for i in members]
        starts, rows = _spectrogram_geometry(rng, lengths)
        recordings = tuple(
            _Recording(int(eeg_ids[i]), int(patient_ids[owners[i]]), int(classes[i]),
                       tuple(float(o) for o in offsets[i]), length, start, bool(with_nans[i]))
            for i, length, start in zip(members, lengths, starts)
        )
        train.append(_Spectrogram(int(spectrogram_ids[g]), recordings, rows, bool(spectrogram_nans[g])))
        sub_id = 0
        for i, recording in zip(members, recordings):
            placed[i] = (recording, int(spectrogram_ids[g]), sub_id)
            sub_id += len(recording.offsets)
    label_rows = _label_rows(rng, [placed[i] for i in range(n_eegs)])

    test_classes = rng.permutation(np.arange(n_test) % len(CLASSES))
    test_eeg_nans = _pick(rng, n_test)
    test_spec_nans = _pick(rng, n_test)
    test = [
        _Spectrogram(
            int(spectrogram_ids[len(groups) + k]),
            (_Recording(int(eeg_ids[n_eegs + k]), int(patient_ids[n_patients + k]), int(test_classes[k]),
                        (0.0,), LABEL_WINDOW_S, SPEC_LEAD_S, bool(test_eeg_nans[k])),),
            SPEC_WINDOW_S // SPEC_ROW_S,
            bool(test_spec_nans[k]),
        )
        for k in range(n_test)
    ]
    return train, test, label_rows


def _unique_ids(rng, count: int, low: int, high: int) -> np.ndarray:
    return low + rng.choice(high - low, size=count, replace=False)


def _pick(rng, count: int) -> np.ndarray:
    """A boolean mask choosing NAN_FRACTION of `count` items, at least one."""
    mask = np.zeros(count, dtype=bool)
    mask[rng.choice(count, size=max(1, round(NAN_FRACTION * count)), replace=False)] = True
    return mask


def _assign_patients(rng, n_eegs: int, n_patients: int) -> np.ndarray:
    """Patient index of each EEG: each patient has one, the rest go to patients with skewed weights."""
    weights = rng.gamma(0.8, size=n_patients)
    extra = rng.choice(n_patients, size=n_eegs - n_patients, p=weights / weights.sum())
    return rng.permutation(np.concatenate([np.arange(n_patients), extra]))


def _label_offsets(rng) -> np.ndarray:
    """One EEG's label offsets (s): first at 0, mostly 2 s apart, a few larger gaps, a few odd seconds.

    The EEG is then last offset + 50 s long, which gives the real length profile: most 50-70 s,
    a tail of a few minutes.
    """
    count = min(int(rng.geometric(0.2)), MAX_ROWS_PER_EEG)
    return _spaced_offsets(rng, count, MAX_EEG_S - LABEL_WINDOW_S)


def _spaced_offsets(rng, count: int, last: float | None = None) -> np.ndarray:
    """`count` increasing offsets (s) from 0, mostly 2 s apart (mean step 4.36 s); those past `last` dropped."""
    steps = rng.choice(_OFFSET_STEPS, size=count - 1, p=_OFFSET_STEP_WEIGHTS)
    offsets = np.concatenate([[0], np.cumsum(steps)])
    if last is not None:
        offsets = offsets[offsets <= last]
    return offsets + (rng.random(offsets.size) < 0.05)  # +1 s keeps them distinct and ordered


_OFFSET_STEPS = [2, 4, 6, 8, 10, 20, 40]
_OFFSET_STEP_WEIGHTS = [0.7, 0.1, 0.06, 0.05, 0.04, 0.03, 0.02]


def _spectrogram_groups(rng, owners: np.ndarray) -> list[list[int]]:
    """EEG indices per spectrogram file: like the real set, some files cover two EEGs of one patient."""
    groups: list[list[int]] = []
    open_group: dict[int, list[int]] = {}
    for i, patient in enumerate(owners):
        group = open_group.get(patient)
        if group is not None and len(group) == 1 and rng.random() < 0.3:
            group.append(i)
        else:
            open_group[patient] = [i]
            groups.append(open_group[patient])
    return groups


def _spectrogram_geometry(rng, lengths: list[int]) -> tuple[list[int], int]:
    """Start second (odd) of each EEG in the spectrogram, and the spectrogram's number of rows.

    Every label row's 10 min window fits, except in a few files cut short at the end, like some
    real ones (their last windows overhang by up to 20 s).
    """
    starts = []
    start = SPEC_LEAD_S + 2 * int(rng.integers(0, 16))
    for length in lengths:
        starts.append(start)
        start += length + 2 * int(rng.integers(5, 100))
        start += 1 - start % 2
    end = starts[-1] + lengths[-1] + SPEC_LEAD_S
    end += 2 * int(rng.integers(0, 16)) if rng.random() > 0.05 else -2 * int(rng.integers(1, 11))
    return starts, -(-end // SPEC_ROW_S)


def _label_rows(rng, placed: list[tuple[_Recording, int, int]]) -> list[tuple]:
    """train.csv rows (values in TRAIN_COLUMNS order): EEGs in draw order, each EEG's rows by offset.

    The spectrogram offset puts the 50 s EEG window in the middle of the 10 min spectrogram window;
    expert_consensus is the first class with the most votes (numpy's argmax, Kaggle's tie rule).
    """
    label_ids = iter(_unique_ids(rng, sum(len(r.offsets) for r, _, _ in placed), 10**6, 2**32))
    rows = []
    for recording, spectrogram_id, first_sub_id in placed:
        votes = _votes(rng, recording.label, len(recording.offsets))
        for k, (offset, row_votes) in enumerate(zip(recording.offsets, votes)):
            spec_offset = float(recording.start_in_spec + offset - SPEC_LEAD_S)
            rows.append((
                recording.eeg_id, k, offset, spectrogram_id, first_sub_id + k, spec_offset,
                int(next(label_ids)), recording.patient_id, CLASSES[int(np.argmax(row_votes))],
                *(int(v) for v in row_votes),
            ))
    return rows


def _votes(rng, label: int, count: int) -> np.ndarray:
    """(count, 6) vote counts: mostly the planted class, the rest spread like annotator confusion.

    Each EEG belongs to one annotator population (1-7 or 10-28 votes); rows mostly repeat the EEG's
    total, as in the real data.
    """
    main = rng.uniform(0.6, 0.9)
    probabilities = (1 - main) * _CONFUSION[label]
    probabilities[label] = main
    low = rng.random() < 0.5
    totals = np.full(count, _vote_total(rng, low))
    redrawn = rng.random(count) < 0.3
    totals[redrawn] = [_vote_total(rng, low) for _ in range(int(redrawn.sum()))]
    return np.stack([rng.multinomial(total, probabilities) for total in totals])


def _vote_total(rng, low: bool) -> int:
    return int(rng.choice(_LOW_VOTES, p=_LOW_VOTE_WEIGHTS) if low else rng.choice(_HIGH_VOTES))


# ---------------------------------------------------------------------------------------------------
# Signals: background EEG, planted patterns, and the Kaggle spectrogram computed from them.


def _write_spectrogram_and_eegs(out: Path, split: str, spectrogram: _Spectrogram, rng) -> None:
    """Synthesize the EEGs a spectrogram covers, write them, then write the spectrogram.

    The spectrogram is computed from the EEGs before NaN spans are punched into the files (Kaggle's
    came from the full recordings); its own NaN rows are planted separately.
    """
    eegs, backgrounds = [], []
    for recording in spectrogram.recordings:
        background = _background(rng, recording.seconds * SAMPLE_RATE)
        eeg = np.round(background + _planted_pattern(rng, recording), 2).astype(np.float32)
        eegs.append(eeg)
        backgrounds.append(_chain_power(background).mean(axis=0))
        if recording.with_nans:
            eeg = _with_nan_spans(rng, eeg)
        _write_eeg(eeg_path(out, split, recording.eeg_id), eeg)
    power = _spectrogram_power(rng, spectrogram, eegs, np.mean(backgrounds, axis=0))
    if spectrogram.with_nans:
        power = _with_nan_rows(rng, power)
    _write_spectrogram(spectrogram_path(out, split, spectrogram.spectrogram_id), power, split)


def _background(rng, n: int) -> np.ndarray:
    """(n, 20) float64 background EEG in uV: pink noise, posterior alpha, line noise, DC, an ECG lead.

    Levels follow the genuine sample files: bipolar PSD about 20-60 uV^2/Hz at 1 Hz falling to about
    1 at 10-20 Hz, bipolar std of tens of uV, referential channels partly correlated.
    """
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    pink = np.maximum(freqs, 0.5) ** -rng.uniform(1.4, 2.0)  # flat below 0.5 Hz: bounded drift
    level = rng.uniform(10, 30)  # per-electrode PSD at 1 Hz, uV^2/Hz
    alpha = rng.uniform(0, 6) * np.exp(-0.5 * ((freqs - rng.uniform(8.5, 10.5)) / 0.6) ** 2)
    posterior = ((2 - _XY[:, 1]) / 4) ** 2  # alpha grows from frontal (0) to occipital (1)
    local_psd = level * rng.lognormal(0, 0.15, (_SCALP, 1)) * pink + posterior[:, None] * alpha + 0.3
    scalp = _noise_with_psd(rng, local_psd, n)
    scalp += (1 + 0.1 * rng.standard_normal((_SCALP, 1))) * _noise_with_psd(rng, 2 * level * pink[None], n)
    scalp += rng.normal(0, 20, (_SCALP, 1))  # electrode DC offsets
    if rng.random() < 0.5:  # 60 Hz mains pick-up, unequal across electrodes so it survives bipolar
        scalp += rng.uniform(0, 3, (_SCALP, 1)) * np.sin(2 * np.pi * 60 * np.arange(n) / SAMPLE_RATE)
    return np.vstack([scalp, _ekg(rng, n)]).T


def _noise_with_psd(rng, psd: np.ndarray, n: int) -> np.ndarray:
    """(channels, n) Gaussian noise whose one-sided PSD (uV^2/Hz) is `psd` (channels, n // 2 + 1)."""
    # E|rfft(x)_k|^2 = n * fs * PSD / 2, and the complex normal below has E|z|^2 = 2.
    spectrum = rng.standard_normal(psd.shape) + 1j * rng.standard_normal(psd.shape)
    spectrum *= np.sqrt(psd * n * SAMPLE_RATE / 4)
    spectrum[:, 0] = 0
    return np.fft.irfft(spectrum, n, axis=-1)


def _ekg(rng, n: int) -> np.ndarray:
    """An ECG lead: QRS spikes and T waves at 60-110 beats/min with slight variability, plus noise."""
    period = 60 / rng.uniform(60, 110)
    beats = np.cumsum(rng.normal(period, 0.03 * period, int(n / SAMPLE_RATE / period) + 2))
    beats = np.round(beats * SAMPLE_RATE).astype(int)
    impulses = np.zeros(n)
    impulses[beats[beats < n]] = rng.choice([-1, 1]) * rng.uniform(200, 800)
    t = np.arange(-0.1, 0.5, 1 / SAMPLE_RATE)
    beat = np.exp(-0.5 * (t / 0.012) ** 2) + 0.25 * np.exp(-0.5 * ((t - 0.28) / 0.04) ** 2)
    return oaconvolve(impulses, beat)[20 : 20 + n] + rng.normal(0, 8, n)


def _planted_pattern(rng, recording: _Recording) -> np.ndarray:
    """(n, 20) uV of the recording's class pattern, covering every label row's central 30 s and more."""
    t = np.arange(recording.seconds * SAMPLE_RATE) / SAMPLE_RATE
    start = recording.offsets[0] + 5
    stop = recording.offsets[-1] + LABEL_WINDOW_S - 5
    return _PATTERNS[CLASSES[recording.label]](rng, t, start, stop)


def _seizure(rng, t, start, stop):
    """Evolving rhythm: 5-8 Hz slowing to 2.5-4 Hz, growing in amplitude, focal onset that generalizes."""
    progress = np.clip((t - start) / (stop - start), 0, 1)
    first_freq, last_freq = rng.uniform(5, 8), rng.uniform(2.5, 4)
    freq = first_freq + (last_freq - first_freq) * progress
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    wave = np.sin(phase) + 0.4 * np.sin(2 * phase)  # sharpened, spike-and-wave-like crests
    amplitude = rng.uniform(60, 160) * (0.4 + 0.6 * progress) * _envelope(t, start, stop)
    spread = np.clip(2 * progress, 0, 1)[:, None]
    field = (1 - spread) * _lateral_field(rng, int(rng.integers(2))) + spread * _generalized_field(rng)
    return (amplitude * wave)[:, None] * field


def _lpd(rng, t, start, stop):
    """Lateralized periodic discharges: sharp waves about once a second over one hemisphere."""
    return _periodic_discharges(rng, t, start, stop)[:, None] * _lateral_field(rng, int(rng.integers(2)))


def _gpd(rng, t, start, stop):
    """Generalized periodic discharges: the same sharp waves over both hemispheres."""
    return _periodic_discharges(rng, t, start, stop)[:, None] * _generalized_field(rng)


def _lrda(rng, t, start, stop):
    """Lateralized rhythmic delta activity: 1.2-2.8 Hz waves over one hemisphere."""
    return _rhythmic_delta(rng, t, start, stop)[:, None] * _lateral_field(rng, int(rng.integers(2)))


def _grda(rng, t, start, stop):
    """Generalized rhythmic delta activity: 1.2-2.8 Hz waves over both hemispheres, frontal maximum."""
    return _rhythmic_delta(rng, t, start, stop)[:, None] * _generalized_field(rng)


def _other(rng, t, start, stop):
    """Other: background only."""
    return np.zeros((t.size, len(EEG_COLUMNS)))


_PATTERNS = {"Seizure": _seizure, "LPD": _lpd, "GPD": _gpd, "LRDA": _lrda, "GRDA": _grda, "Other": _other}
assert tuple(_PATTERNS) == CLASSES


def _periodic_discharges(rng, t, start, stop) -> np.ndarray:
    """Sharp discharges (a spike of about 35 ms, then a slow after-wave) every 0.7-1.5 s, jittered."""
    period = rng.uniform(0.7, 1.5)
    count = int(t[-1] / period) + 2
    times = rng.uniform(0, period) + np.cumsum(period * (1 + 0.08 * rng.standard_normal(count)))
    at = np.round(times * SAMPLE_RATE).astype(int)
    at = at[at < t.size]
    impulses = np.zeros(t.size)
    impulses[at] = rng.uniform(150, 300) * (1 + 0.2 * rng.standard_normal(at.size))
    k = np.arange(-0.1, 0.5, 1 / SAMPLE_RATE)
    discharge = -np.exp(-0.5 * (k / 0.015) ** 2) + 0.5 * np.exp(-0.5 * ((k - 0.15) / 0.08) ** 2)
    return oaconvolve(impulses, discharge)[20 : 20 + t.size] * _envelope(t, start, stop)


def _rhythmic_delta(rng, t, start, stop) -> np.ndarray:
    """Skewed 1.2-2.8 Hz waves with slowly wandering frequency and amplitude."""
    freq = rng.uniform(1.2, 2.8) * (1 + 0.05 * _wander(rng, t))
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE + rng.uniform(0, 2 * np.pi)
    wave = np.sin(phase) + 0.3 * np.sin(2 * phase + 0.8)
    amplitude = rng.uniform(60, 150) * (1 + 0.2 * _wander(rng, t))
    return amplitude * wave * _envelope(t, start, stop)


def _lateral_field(rng, side: int) -> np.ndarray:
    """(20,) weights of a field peaking at a random electrode of one hemisphere (side 0 left, 1 right).

    A focal field, not a uniform one: bipolar chains see differences between neighbours, so a field
    equal on every electrode of a chain would vanish from the montage.
    """
    sign = -1 if side == 0 else 1
    focus = _XY[rng.choice(np.flatnonzero(np.sign(_XY[:, 0]) == sign))]
    weights = np.exp(-((_XY - focus) ** 2).sum(axis=1) / (2 * 1.1**2))
    weights *= np.where(np.sign(_XY[:, 0]) == sign, 1.0, np.where(_XY[:, 0] == 0, 0.3, 0.05))
    return np.append(weights, 0.0)


def _generalized_field(rng) -> np.ndarray:
    """(20,) weights of a bilateral, frontally predominant field, symmetric up to 5 % jitter."""
    front = rng.uniform(0.5, 2.0)
    weights = np.exp(-(_XY[:, 0] ** 2) / (2 * 3.0**2) - (_XY[:, 1] - front) ** 2 / (2 * 1.2**2))
    weights *= 1 + 0.05 * rng.standard_normal(_SCALP)
    return np.append(weights, 0.0)


def _envelope(t: np.ndarray, start: float, stop: float, fade: float = 2.0) -> np.ndarray:
    """1 inside [start + fade, stop - fade], 0 outside [start, stop], raised-cosine ramps between."""
    rise = np.clip((t - start) / fade, 0, 1)
    fall = np.clip((stop - t) / fade, 0, 1)
    return 0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))


def _wander(rng, t: np.ndarray) -> np.ndarray:
    """A slow random walk in [-1, 1]-ish: unit normals every 5 s, linearly interpolated."""
    knots = np.arange(0, t[-1] + 5, 5.0)
    return np.interp(t, knots, rng.standard_normal(knots.size))


def _chain_power(eeg: np.ndarray) -> np.ndarray:
    """(frames, 4, 100) Kaggle-scale power of each chain for every STFT frame fully inside the EEG.

    Frame p is centred on sample p * 400; the first is _FIRST_FRAME. Power is the two-sided PSD
    (uV^2/Hz) averaged over the chain's 4 bipolar pairs.
    """
    last = _KAGGLE_STFT.upper_border_begin(eeg.shape[0])[1]  # first frame reaching past the end
    spectra = _KAGGLE_STFT.stft(bipolar_signals(eeg), p0=_FIRST_FRAME, p1=last)[:, _KAGGLE_BINS]
    power = np.abs(spectra) ** 2
    return power.reshape(len(CHAINS), 4, len(SPEC_FREQS), -1).mean(axis=1).transpose(2, 0, 1)


def _spectrogram_power(
    rng, spectrogram: _Spectrogram, eegs: list[np.ndarray], background: np.ndarray
) -> np.ndarray:
    """(rows, 400) float32 Kaggle spectrogram: each EEG's own power where it is, background elsewhere.

    Background rows scatter around the EEGs' background level like an average of 4 periodograms
    (Gamma with shape 4), so the file has no visible seams.
    """
    shape = (spectrogram.rows, len(CHAINS), len(SPEC_FREQS))
    power = background[None] * rng.gamma(4.0, 0.25, shape)
    for recording, eeg in zip(spectrogram.recordings, eegs):
        frames = _chain_power(eeg)
        # row i has time 2i + 1 s; frame p of an EEG starting at second `start` has time start + 2p
        first_row = (recording.start_in_spec - 1) // SPEC_ROW_S + _FIRST_FRAME
        power[first_row : first_row + len(frames)] = frames
    return np.round(power.reshape(spectrogram.rows, -1), 2).astype(np.float32)


# Whole-channel NaN only in the channel no array reads (the 16-pair montage and the raw array's midline
# pairs Fz-Cz, Cz-Pz leave out EKG): such files stay repairable, so the synthetic data builds cleanly;
# tests that want failures break files on purpose.
_OFF_MONTAGE = (EEG_COLUMNS.index("EKG"),)


def _with_nan_spans(rng, eeg: np.ndarray) -> np.ndarray:
    """A copy with NaN spans of 1-15 s in 1-3 channels; sometimes an off-montage channel is all NaN."""
    eeg = eeg.copy()
    n = eeg.shape[0]
    for channel in rng.choice(len(EEG_COLUMNS), size=int(rng.integers(1, 4)), replace=False):
        if rng.random() < 0.2:
            eeg[:, rng.choice(_OFF_MONTAGE)] = np.nan
            continue
        length = min(n, int(rng.uniform(1, 15) * SAMPLE_RATE))
        begin = int(rng.integers(0, n - length + 1))
        eeg[begin : begin + length, channel] = np.nan
    return eeg


def _with_nan_rows(rng, power: np.ndarray) -> np.ndarray:
    """A copy with a run of 1-10 rows NaN, in all 400 columns or in one chain's 100."""
    power = power.copy()
    length = int(rng.integers(1, 11))
    begin = int(rng.integers(0, power.shape[0] - length + 1))
    chain = int(rng.integers(len(CHAINS) + 1))  # len(CHAINS) means every chain
    columns = slice(None) if chain == len(CHAINS) else slice(chain * 100, (chain + 1) * 100)
    power[begin : begin + length, columns] = np.nan
    return power


# ---------------------------------------------------------------------------------------------------
# Writers: pyarrow parquet with snappy, NaN stored as null (as pandas writes it), plain CSV.


# Dictionary pages on noise-like floats cost a third of the writing time and save nothing; readers
# cannot tell the difference (values, types and nulls are the same).
_DICTIONARY = False


def _write_eeg(path: Path, eeg: np.ndarray) -> None:
    table = pa.Table.from_arrays(_float_columns(eeg), names=list(EEG_COLUMNS))
    pq.write_table(table, path, compression="snappy", use_dictionary=_DICTIONARY)


def _write_spectrogram(path: Path, power: np.ndarray, split: str) -> None:
    """Times 1, 3, 5, ... s: int64 in train files, int16 in test files, as Kaggle's."""
    time_type = pa.int64() if split == "train" else pa.int16()
    times = pa.array(np.arange(power.shape[0]) * SPEC_ROW_S + 1, type=time_type)
    table = pa.Table.from_arrays([times, *_float_columns(power)], names=list(SPEC_COLUMNS))
    pq.write_table(table, path, compression="snappy", use_dictionary=_DICTIONARY)


def _float_columns(matrix: np.ndarray) -> list[pa.Array]:
    """The columns of a (rows, columns) matrix as float32 arrays, NaN turned into null."""
    columns = np.ascontiguousarray(matrix.T, dtype=np.float32)
    return [_float_array(column) for column in columns]


def _float_array(column: np.ndarray) -> pa.Array:
    """A float32 arrow array over the column's own buffer, with a validity bitmap only where NaNs are."""
    missing = np.isnan(column)
    if not missing.any():
        return pa.Array.from_buffers(pa.float32(), column.size, [None, pa.py_buffer(column)])
    valid = pa.py_buffer(np.packbits(~missing, bitorder="little"))
    return pa.Array.from_buffers(pa.float32(), column.size, [valid, pa.py_buffer(column)], null_count=int(missing.sum()))


def _write_csv(path: Path, header, rows) -> None:
    """Plain comma-separated lines; floats as Python writes them (0.0, 0.16666666666666666) like pandas."""
    lines = [",".join(header)]
    lines += [",".join(repr(v) if isinstance(v, float) else str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
