"""Facts of the HMS data, each defined once: chain order, the left/right mirror, classes, vote and
target columns, the sample rate, the label windows, and the Kaggle spectrogram's normalisation.

Both packages import this module (hms_train through the store format only), so it holds constants and
one small function that works on numpy arrays and torch tensors alike, and imports nothing heavy.
"""

from __future__ import annotations

SAMPLE_RATE = 200  # Hz, every EEG file
LABEL_WINDOW_S = 50  # each train.csv row labels a 50 s EEG window starting at its offset
LABEL_SAMPLES = LABEL_WINDOW_S * SAMPLE_RATE  # the raw window a 1D model sees
SPEC_WINDOW_S = 600  # ... and a 10 min Kaggle-spectrogram window starting at its offset
SPEC_ROW_S = 2  # one Kaggle spectrogram row per 2 s

# Kaggle's spectrogram block order; every array of the store (EEG windows too) uses it on its chain axis.
CHAINS = ("LL", "RL", "LP", "RP")
# The left/right mirror LL<->RL, LP<->RP (the label-preserving "brain flip"), as indices into CHAINS.
MIRRORED_CHAINS = tuple(CHAINS.index({"L": "R", "R": "L"}[c[0]] + c[1]) for c in CHAINS)

CLASSES = ("Seizure", "LPD", "GPD", "LRDA", "GRDA", "Other")
# train.csv's vote counts; submissions, OOF and pseudo-label files name their probabilities the same way.
VOTE_COLUMNS = tuple(f"{c.lower()}_vote" for c in CLASSES)
# labels.parquet's normalised targets (votes / total votes), in the same class order.
TARGET_COLUMNS = tuple(f"{c.lower()}_target" for c in CLASSES)

KAGGLE_STD_EPS = 1e-6


def standardise(part, axes: tuple[int, ...]):
    """The Kaggle crop's normalisation (the seed's z-score): (x - mean) / (std + 1e-6) over `axes`,
    population std. Works on numpy arrays and torch tensors (both take `axis` / `keepdims`)."""
    mean = part.mean(axis=axes, keepdims=True)
    centred = part - mean
    std = (centred * centred).mean(axis=axes, keepdims=True) ** 0.5
    return centred / (std + KAGGLE_STD_EPS)
