"""Array kinds of the store as plug-ins (see base.py); importing this package registers the built-in
kinds: `eeg_mel` (mel windows), `kaggle` (Kaggle spectrogram crops), `raw` (bipolar signals)."""

from hms_prep.kinds.base import KINDS, ArrayKind, Cut, kind_for, kind_named, register_kind, variant_name
from hms_prep.kinds.eeg_mel import EegMel, MelParams
from hms_prep.kinds.kaggle_spectrogram import KaggleCrop, KaggleParams
from hms_prep.kinds.raw import RawParams, RawSignals

__all__ = ["KINDS", "ArrayKind", "Cut", "kind_for", "kind_named", "register_kind", "variant_name",
           "EegMel", "MelParams", "KaggleCrop", "KaggleParams", "RawParams", "RawSignals"]
