"""A plug-in array kind with a role of its own: `signal_stats`, per row a feature vector (each bipolar
signal's standard deviation and mean absolute first difference over a window centred on the label), for
a model that takes `features` (tests/plugins/feature_model.py).

The two axes of an array are apart (docs/architecture.md, "How to add an input"): how it is stored,
`storage` (ArrayKind's default: one item per row), and what it is to a model, `role` ("features": no
package names it). Nothing in hms_prep or hms_train names this kind or this role: the build writes both
as attributes, and the trainer hands the array's rows to any model kind that declares the input
`features`. tests/test_train_plugins.py builds it and trains a step on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hms_prep.domain import SAMPLE_RATE
from hms_prep.kinds import ArrayKind, Cut, register_kind, variant_name
from hms_prep.kinds.base import EEG, KindParams
from hms_prep.sources.montage import BIPOLAR_PAIRS

FEATURES = "features"  # the role: the keyword a model's forward takes it by
STATISTICS = ("std", "mean_abs_diff")


@dataclass(frozen=True)
class SignalStatsParams(KindParams):
    window_s: int = 10  # seconds, centred on the label window's centre

    def __post_init__(self):
        if not 1 <= self.window_s <= 50:
            raise ValueError(f"signal_stats window_s must be 1..50 seconds, got {self.window_s}")

    def to_dict(self) -> dict:
        return {**asdict(self), "statistics": list(STATISTICS), "sample_rate": SAMPLE_RATE}


@register_kind
@dataclass(frozen=True)
class SignalStats(ArrayKind):
    params: SignalStatsParams
    kind = "signal_stats"
    params_type = SignalStatsParams
    source = EEG
    default_codec = "zstd"
    stage = "signal_stats"
    role = FEATURES  # a new input; storage stays ArrayKind's default, one (features,) item per row

    @property
    def name(self) -> str:
        return variant_name(f"signal_stats_{self.params.window_s}s", self.params,
                            SignalStatsParams(self.params.window_s), {})

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (len(BIPOLAR_PAIRS) * len(STATISTICS),)

    def geometry(self) -> dict:
        return {"axes": ["row", "feature"]}  # no chains, no time: a flip at evaluation leaves it alone

    def cut(self, recording, rows) -> Cut:
        values = {}
        for row in recording.good:
            if row.row in rows:
                window = recording.centred_window(row, self.params.window_s)[: len(BIPOLAR_PAIRS)]
                values[row.row] = np.concatenate([window.std(1), np.abs(np.diff(window, axis=1)).mean(1)])
        return Cut(values=values)

    @staticmethod
    def title(params: dict) -> str:
        return f"signal statistics {params['window_s']} s"
