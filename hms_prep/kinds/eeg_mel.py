"""Kind `eeg_mel`: EEG mel-spectrogram windows, (rows, 4 chains, n_mels, frames), one array per window.

The W-second window is centred on the label window's centre (offset + 25 s). Names: `eeg_{W}s` for the
default recipe, `eeg_{W}s_m{N}` when only n_mels differs, `eeg_{W}s_{digest}` otherwise. All windows of
a chunk go through one batched `mel_windows` call per array (`finish`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from hms_prep.domain import CHAINS, SAMPLE_RATE
from hms_prep.kinds.base import KindParams, EEG, ArrayKind, Cut, register_kind, variant_name
from hms_prep.melscale import mel_centres_hz
from hms_prep.sources.montage import BIPOLAR_PAIRS, NAN_REPAIR
from hms_prep.sources.recordings import LABEL_WINDOW_SPAN
from hms_prep.sources.signal_filter import BAND_PASS_FILTER, BAND_PASS_ORDER, band_pass_sos

TOP_DB = 80.0  # the dB floor below each signal's maximum (librosa's power_to_db top_db)


WINDOW_S = (1, 50)  # the window lengths a mel array may have, seconds (an EEG label's record is 50 s)


@dataclass(frozen=True)
class MelParams(KindParams):
    """Everything that defines one mel-spectrogram array of the store."""

    window_s: int  # window length W in seconds (1..50)
    n_fft: int = 1024
    win_length: int = 128
    hop_length: int | None = None  # None -> W*200 // 256
    n_mels: int = 100
    fmin: float = 0.0
    fmax: float = 20.0
    frames: int = 256
    # Applied by the caller on whole recordings; recorded here so it is part of the array's identity.
    band_pass: tuple[float, float] | None = None

    def __post_init__(self):
        # Normalise numbers so that equal parameters always hash and digest alike.
        object.__setattr__(self, "fmin", float(self.fmin))
        object.__setattr__(self, "fmax", float(self.fmax))
        if self.band_pass is not None:
            object.__setattr__(self, "band_pass", tuple(float(f) for f in self.band_pass))
            band_pass_sos(*self.band_pass, SAMPLE_RATE, BAND_PASS_ORDER)  # refuses 20,0.5 before any work
        for name in ("window_s", "n_fft", "win_length", "n_mels", "frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MelParams.{name} must be a positive integer, got {value!r}")
        if not WINDOW_S[0] <= self.window_s <= WINDOW_S[1]:
            raise ValueError(f"MelParams.window_s must be {WINDOW_S[0]}..{WINDOW_S[1]} seconds, got {self.window_s}")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if not 0 <= self.fmin < self.fmax <= SAMPLE_RATE / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= {SAMPLE_RATE / 2} Hz, got {self.fmin}, {self.fmax}")
        hop = self.resolved().hop_length
        if hop < 1:
            raise ValueError(f"hop_length must be >= 1, got {hop} (window_s={self.window_s}); pass hop_length")
        available = 1 + self.window_s * SAMPLE_RATE // hop  # centred frames of a W-second window
        if available < self.frames:
            raise ValueError(
                f"a {self.window_s} s window with hop {hop} gives {available} frames, fewer than frames={self.frames}"
            )

    def resolved(self) -> MelParams:
        """The same parameters with hop_length filled in."""
        if self.hop_length is not None:
            return self
        return replace(self, hop_length=self.window_s * SAMPLE_RATE // 256)

    def recipe(self):
        """The `MelRecipe` the math of kinds/mel.py computes with (imports torch: call it to compute)."""
        from hms_prep.kinds.mel import MelRecipe

        p = self.resolved()
        return MelRecipe(p.window_s, p.n_fft, p.win_length, p.hop_length, p.n_mels, p.fmin, p.fmax, p.frames, TOP_DB)

    def to_dict(self) -> dict:
        """All fields (resolved) plus the fixed parts of the recipe; JSON-able."""
        return {
            **asdict(self.resolved()),
            "band_pass": list(self.band_pass) if self.band_pass is not None else None,
            "band_pass_filter": BAND_PASS_FILTER if self.band_pass is not None else None,
            "band_pass_span": LABEL_WINDOW_SPAN if self.band_pass is not None else None,
            "nan_repair": NAN_REPAIR,
            "sample_rate": SAMPLE_RATE,
            "mel_scale": "slaney",
            "norm": "slaney",
            "power": 2.0,
            "top_db": TOP_DB,
            "scaling": "(dB+40)/40",
        }


@register_kind
@dataclass(frozen=True)
class EegMel(ArrayKind):
    params: MelParams
    kind = "eeg_mel"
    params_type = MelParams
    source = EEG
    default_codec = "lz4"
    fast_codec = "none"  # float16 log-mel values are noise in their low bits: lz4 saves only 6-23 %
    stage = "spectrogram"

    def __post_init__(self):
        object.__setattr__(self, "params", self.params.resolved())  # equal recipes name and hash alike

    @property
    def name(self) -> str:
        window = self.params.window_s
        return variant_name(f"eeg_{window}s", self.params, MelParams(window).resolved(), {"n_mels": "m{}"})

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (len(CHAINS), self.params.n_mels, self.params.frames)

    def coordinates(self) -> dict[str, tuple[np.ndarray, str]]:
        """Each band's centre in Hz; each frame's centre in s from the centre of the label's window."""
        p = self.params
        return {"frequency": (mel_centres_hz(p.fmin, p.fmax, p.n_mels), "Hz"),
                "time": (np.arange(p.frames) * p.hop_length / SAMPLE_RATE - p.window_s / 2, "s")}

    def cut(self, recording, rows: frozenset[int]) -> Cut:
        """The (16, W*200) window of every usable row: the middle of its label window."""
        window_s, band = self.params.window_s, self.params.band_pass
        return Cut(values={r.row: recording.centred_window(r, window_s, band)[: len(BIPOLAR_PAIRS)]
                           for r in recording.good if r.row in rows})

    def finish(self, cut: Cut, device: str) -> Cut:
        """All the chunk's windows in one batched spectrogram call."""
        if not cut.values:
            return cut
        from hms_prep.kinds.mel import mel_windows  # torch: imported where the work is

        rows = list(cut.values)
        images = mel_windows(np.stack([cut.values[r] for r in rows]), self.params.recipe(), device)
        return Cut(dict(zip(rows, images)), cut.errors, cut.repaired)

    @staticmethod
    def title(params: dict) -> str:
        return f"EEG {params['window_s']} s · {params['n_mels']} mels, {params['fmin']:g}-{params['fmax']:g} Hz"
