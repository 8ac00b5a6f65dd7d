"""Shared test fixtures: the genuine Kaggle sample and small synthetic datasets and stores."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real-sample"
if not REAL.is_dir():
    raise RuntimeError(f"the genuine Kaggle sample is expected at {REAL} (../shared beside the checkout)")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A small synthetic Kaggle-layout dataset shared by the tests of a session."""
    from hms_prep.synth import synthesize

    out = tmp_path_factory.mktemp("synth") / "data"
    synthesize(out, n_eegs=24, seed=7, n_test=3)
    return out
