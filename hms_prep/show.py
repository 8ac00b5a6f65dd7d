"""A PNG of one store row as the trainer sees it before augmentation, for people to look at.

Top panel: every image array of the store (or those asked for) side by side, left to right in the
store's order (the `eeg_*s` windows and their variants by length, then the Kaggle crops). Each part is (4 chains, F, T); its 4 chains are
stacked into (4F, T) exactly as the trainer stacks them (chain c on image rows c*F .. (c+1)*F - 1).
The picture draws image row 0 at the bottom, so within each chain block frequency increases upwards,
and the blocks read LL (bottom), RL, LP, RP (top). EEG parts are drawn as stored; the Kaggle part is
z-scored per sample as the trainer does, and shown whole (training crops it later, evaluation keeps its
start). Each part has its own colour scale, its 1st to 99th percentile. Bottom panel (when the store
has a raw array, or one is asked for): the 50 s label window of the raw bipolar signals, one trace per
signal, first on top. Which arrays are images and which are z-scored come from the arrays' own
attributes (`describe_arrays`: role, normalise), never from their names; titles from the kind's
`title` when its kind is registered (a plug-in kind not loaded gets its kind's name).

hms_prep must not import hms_train: the Kaggle normalisation comes from `domain.standardise`.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on build machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from hms_prep import domain  # noqa: E402
from hms_prep.domain import CHAINS, CLASSES, LABEL_SAMPLES, LABEL_WINDOW_S, SAMPLE_RATE, VOTE_COLUMNS  # noqa: E402
from hms_prep.sources.montage import pair_names  # noqa: E402
from hms_prep.kinds import KINDS  # noqa: E402
from hms_prep.store.codecs import read_region  # noqa: E402
from hms_prep.store.arrays import NORMALISE_ZSCORE, describe_arrays  # noqa: F401
from hms_prep.store.labels import read_labels  # noqa: F401
from hms_prep.store.layout import open_store  # noqa: F401

# The PNG is always FIG_WIDTH x (SPECTROGRAM_HEIGHT [+ RAW_HEIGHT]) inches at DPI.
FIG_WIDTH, SPECTROGRAM_HEIGHT, RAW_HEIGHT, DPI = 15.0, 5.5, 5.0, 100
COLOR_MAP = "magma"
CHAIN_COLORS = {"LL": "C0", "RL": "C3", "LP": "C2", "RP": "C1"}  # raw traces by chain; midline grey


def find_row(labels: pa.Table, row: int | None = None, label_id: int | None = None,
             eeg_id: int | None = None) -> int:
    """The store row asked for by exactly one of: its row number, its label_id, or an eeg_id (the
    first row of that EEG). Raises ValueError with the reason when none or several are given, or the
    row or id is not in the store."""
    given = [name for name, value in (("row", row), ("label_id", label_id), ("eeg_id", eeg_id)) if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of row, label_id, eeg_id (got {', '.join(given) or 'none'})")
    if row is not None:
        if not 0 <= row < labels.num_rows:
            raise ValueError(f"row {row} is out of range: the store has rows 0..{labels.num_rows - 1}")
        return row
    column, value = ("label_id", label_id) if label_id is not None else ("eeg_id", eeg_id)
    if column not in labels.column_names:
        raise ValueError(f"the store's labels have no {column} column (a test store has eeg_id only)")
    matches = np.flatnonzero(labels.column(column).to_numpy() == value)
    if not len(matches):
        raise ValueError(f"no row with {column} {value} in the store")
    return int(labels.column("row").to_numpy()[matches].min())


def show_row(store: str, row: int | None = None, label_id: int | None = None, eeg_id: int | None = None,
             out: str | Path | None = None, arrays: list[str] | None = None) -> Path:
    """Write the PNG of one row (chosen as in `find_row`) to `out` (default `row{I}.png`); returns its path.

    `arrays`: the arrays to draw (default: every image array, and the first raw array)."""
    group, _ = open_store(store)
    labels = read_labels(store)
    row = find_row(labels, row, label_id, eeg_id)
    label = labels.slice(row, 1).to_pylist()[0]
    out = Path(out) if out is not None else Path(f"row{row}.png")
    described = describe_arrays(group)
    images, raw = chosen_arrays(store, described, arrays)
    fig = plt.figure(figsize=(FIG_WIDTH, SPECTROGRAM_HEIGHT + (RAW_HEIGHT if raw else 0)), dpi=DPI,
                     layout="constrained")
    fig.suptitle(row_title(label), fontsize=12)
    if label.get("status", "ok") != "ok":
        _draw_failure(fig, label)
    else:
        parts = {name: read_part(store, group, described[name], row) for name in images}
        top, bottom = fig.subfigures(2, 1, height_ratios=(SPECTROGRAM_HEIGHT, RAW_HEIGHT)) if raw else (fig, None)
        if parts:
            _draw_image(top, parts, group)
        if raw:
            _draw_raw(bottom, store, group[raw], label)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def chosen_arrays(store: str, described: dict, arrays: list[str] | None) -> tuple[list[str], str | None]:
    """(image arrays, the raw array or None) to draw: those named in `arrays`, or every image array
    and the first one stored per segment (arrays of other roles, a plug-in's feature vector, are not
    pictures). ValueError names an unknown array and the store's arrays."""
    if arrays is None:
        raws = [name for name, d in described.items() if not d.per_row]
        return [name for name, d in described.items() if d.image], (raws[0] if raws else None)
    unknown = [name for name in arrays if name not in described]
    if unknown:
        raise ValueError(f"{store}: no array {', '.join(unknown)}; it has {', '.join(described)}")
    other = [name for name in arrays if described[name].image == (not described[name].per_row)]
    if other:
        raise ValueError(f"{store}: cannot draw {', '.join(other)} (role {described[other[0]].role}); choose image "
                         "arrays or one stored per segment")
    raws = [name for name in arrays if not described[name].per_row]
    if len(raws) > 1:
        raise ValueError(f"choose at most one raw array to draw, got {', '.join(raws)}")
    return [name for name in arrays if described[name].image], (raws[0] if raws else None)


def read_part(store: str, group, described, row: int) -> np.ndarray:
    """One row of an image array as the trainer sees it before augmentation: float32 (4, F, T), z-scored
    when the array says so (`normalise`). Read as the trainer reads it: a damaged or deleted chunk is a
    ChunkError naming it, never zeros drawn."""
    part = read_region(store, group[described.name], (slice(row, row + 1),), lambda _: f"row {row}")[0]
    part = part.astype(np.float32)
    return standardise(part) if described.normalise == NORMALISE_ZSCORE else part


def raw_window(store: str, raw, raw_start: int) -> np.ndarray:
    """The row's 50 s label window of a signals array, float32 (signals, 10000), as stored (checked)."""
    window = (slice(None), slice(raw_start, raw_start + LABEL_SAMPLES))
    return read_region(store, raw, window, lambda _: f"the row's window at sample {raw_start}").astype(np.float32)


def stack_chains(part: np.ndarray) -> np.ndarray:
    """(4, F, T) -> (4F, T): chain c on rows c*F .. (c+1)*F - 1, as the trainer composes it."""
    chains, freqs, times = part.shape
    return part.reshape(chains * freqs, times)


def standardise(part: np.ndarray) -> np.ndarray:
    """The trainer's Kaggle normalisation of one (4, F, T) block (`domain.standardise`)."""
    return domain.standardise(part, axes=(0, 1, 2))


def row_title(label: dict) -> str:
    """Ids, consensus and votes of a train row; the eeg_id alone for a test row."""
    ids = f"row {label['row']} · eeg_id {label['eeg_id']}"
    if "label_id" not in label:
        return ids
    votes = ", ".join(f"{name} {label[column]}" for name, column in zip(CLASSES, VOTE_COLUMNS))
    return (f"label_id {label['label_id']} · {ids} · consensus {label['expert_consensus']}\n"
            f"votes: {votes} (total {label['total_votes']})")


def part_title(name: str, attrs: dict) -> str:
    """The array's name and what it holds, as its kind describes its stored params."""
    return f"{name}: {kind_title(attrs)}"


def kind_title(attrs: dict) -> str:
    """What an array holds, from its kind's `title` (a kind this process has not loaded: its name)."""
    kind = KINDS.get(attrs.get("kind"))
    return kind.title(attrs.get("params", {})) if kind else f"kind {attrs.get('kind')}"


def _draw_image(fig, images: dict[str, np.ndarray], group) -> None:
    """One axes per part, widths in proportion to their time columns, each with its own colour bar."""
    names = list(images)
    axes = fig.subplots(1, len(names), width_ratios=[images[n].shape[-1] for n in names], squeeze=False)[0]
    for ax, name in zip(axes, names):
        attrs = group[name].attrs.asdict()
        part = images[name]
        chains, freqs, columns = part.shape
        seconds = attrs["params"].get("window_s")  # a kind without a window: its columns, from 0
        left, right = (-seconds / 2, seconds / 2) if seconds else (0, columns)
        low, high = np.percentile(part, [1, 99])
        shown = ax.imshow(stack_chains(part), origin="lower", aspect="auto", cmap=COLOR_MAP, vmin=low, vmax=high,
                          interpolation="nearest", extent=(left, right, 0, chains * freqs))
        for boundary in range(1, chains):
            ax.axhline(boundary * freqs, color="white", linewidth=0.8)
        ax.set_yticks([(c + 0.5) * freqs for c in range(chains)], CHAINS)
        ax.set_title(part_title(name, attrs), fontsize=10)
        ax.set_xlabel("seconds from label centre" if seconds else "column")
        fig.colorbar(shown, ax=ax, location="bottom", shrink=0.5, aspect=50, pad=0.01)


def _draw_raw(fig, store: str, raw, label: dict) -> None:
    """The 50 s label window of every stored bipolar signal, offset vertically, first signal on top."""
    window = raw_window(store, raw, int(label["raw_start"]))
    names = raw.attrs["signals"]
    spacing = 2 * max(float(np.percentile(np.abs(window), 99)), 1e-3)
    time = np.arange(window.shape[1]) / SAMPLE_RATE - LABEL_WINDOW_S / 2
    offsets = -spacing * np.arange(len(names))
    ax = fig.subplots()
    for signal, name, offset in zip(window, names, offsets):
        ax.plot(time, signal + offset, color=_signal_color(name), linewidth=0.5)
    ax.set_yticks(offsets, names, fontsize=8)
    ax.set_xlim(time[0], time[-1])
    ax.set_ylim(offsets[-1] - spacing, spacing)
    ax.set_xlabel("seconds from label centre")
    recipe = kind_title(raw.attrs.asdict())
    ax.set_title(f"{raw.basename}: raw bipolar signals, {LABEL_WINDOW_S} s label window, as stored ({recipe})",
                 fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def _signal_color(name: str) -> str:
    """Colour a bipolar pair by its chain; the midline pairs (no chain) are grey."""
    chain_pairs = pair_names()  # 16 pairs, 4 per chain, chain-major in LL, RL, LP, RP order
    if name not in chain_pairs:
        return "grey"
    return CHAIN_COLORS[CHAINS[chain_pairs.index(name) // 4]]


def _draw_failure(fig, label: dict) -> None:
    """The row's recorded errors (one line per failed array) where its image would be."""
    ax = fig.subplots()
    ax.axis("off")
    errors = (label.get("error") or "no error recorded").split("; ")
    lines = [f"this row was not built (status {label.get('status')}):"]
    lines += [wrapped for error in errors for wrapped in textwrap.wrap(error, 150)]
    ax.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", fontsize=10, color="firebrick")
