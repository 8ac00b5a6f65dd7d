"""The manifest of a synthetic dataset: its files and train.csv rows (ids, patients, classes, label offsets,
each EEG's place in its spectrogram, votes), drawn from one generator in order, before any signal is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hms_prep.domain import CLASSES, LABEL_WINDOW_S, SPEC_ROW_S, SPEC_WINDOW_S
from hms_prep.synth.competition import CompetitionPlan, assign_patients

# An EEG label window [o, o + 50) sits at spectrogram seconds [spec_o + 275, spec_o + 325).
SPEC_LEAD_S = (SPEC_WINDOW_S - LABEL_WINDOW_S) // 2
MAX_EEG_S = 300  # the real tail goes to 57 min; 5 min keeps synthesis fast and still exercises it
MAX_ROWS_PER_EEG = 40
NAN_FRACTION = 0.05  # share of EEG and spectrogram files given NaNs (at least one of each)

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
class PlannedRecording:
    """One EEG file to write: its class, label offsets, length and place in its spectrogram."""

    eeg_id: int
    patient_id: int
    label: int  # index into CLASSES
    offsets: tuple[float, ...]  # label offsets in seconds; a test EEG has the single offset 0
    seconds: int
    start_in_spec: int  # spectrogram second at which sample 0 sits; odd, like the row times
    with_nans: bool


@dataclass(frozen=True)
class PlannedSpectrogram:
    """One Kaggle spectrogram file and the EEG recordings (1 or 2, one patient) it covers."""

    spectrogram_id: int
    recordings: tuple[PlannedRecording, ...]
    rows: int
    with_nans: bool


def plan_dataset(rng, n_eegs: int, n_test: int, structure: CompetitionPlan | None = None):
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
        owners = assign_patients(rng, n_eegs, n_patients)
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
            PlannedRecording(int(eeg_ids[i]), int(patient_ids[owners[i]]), int(classes[i]),
                       tuple(float(o) for o in offsets[i]), length, start, bool(with_nans[i]))
            for i, length, start in zip(members, lengths, starts)
        )
        train.append(PlannedSpectrogram(int(spectrogram_ids[g]), recordings, rows, bool(spectrogram_nans[g])))
        sub_id = 0
        for i, recording in zip(members, recordings):
            placed[i] = (recording, int(spectrogram_ids[g]), sub_id)
            sub_id += len(recording.offsets)
    label_rows = _label_rows(rng, [placed[i] for i in range(n_eegs)])

    test_classes = rng.permutation(np.arange(n_test) % len(CLASSES))
    test_eeg_nans = _pick(rng, n_test)
    test_spec_nans = _pick(rng, n_test)
    test = [
        PlannedSpectrogram(
            int(spectrogram_ids[len(groups) + k]),
            (PlannedRecording(int(eeg_ids[n_eegs + k]), int(patient_ids[n_patients + k]), int(test_classes[k]),
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


def _label_rows(rng, placed: list[tuple[PlannedRecording, int, int]]) -> list[tuple]:
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

