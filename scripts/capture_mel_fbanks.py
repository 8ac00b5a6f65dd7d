"""Record torchaudio's `melscale_fbanks` (slaney scale and norm) for the test parameters, once.

torchaudio's last release (2.11) loads only beside torch 2.11, so the project no longer installs it
(docs/decisions.md, "The mel filterbank is the project's own"). This script was run in the last venv that
held it (torch 2.11.0, torchaudio 2.11.0) and wrote tests/data/torchaudio_mel_fbanks.npz, which
tests/test_mel_filterbank.py compares `hms_prep.kinds.mel.mel_filterbank` with. To run it again, install
torch 2.11 and torchaudio 2.11.0 side by side in a scratch venv:
    python scripts/capture_mel_fbanks.py tests/data/torchaudio_mel_fbanks.npz
"""

import json
import sys

import numpy as np
import torch
import torchaudio

# (n_fft, f_min, f_max, n_mels, sample_rate): every recipe's filterbank (n_fft 1024, 0-20 Hz, 100 and 50
# mels at 200 Hz), the other values the tests and the CLI accept, and a 16 kHz case whose top mels lie
# above 1 kHz, where the slaney scale turns logarithmic (unreachable at 200 Hz, checked all the same).
CASES = [
    (1024, 0.0, 20.0, 100, 200),
    (1024, 0.0, 20.0, 50, 200),
    (1024, 0.0, 20.0, 128, 200),
    (1024, 0.0, 25.0, 100, 200),
    (1024, 0.0, 40.0, 100, 200),
    (1024, 0.5, 20.0, 64, 200),
    (2048, 1.0, 30.0, 100, 200),
    (512, 0.0, 100.0, 100, 200),
    (256, 0.0, 20.0, 16, 200),
    (512, 0.0, 8000.0, 40, 16000),
    (2048, 300.0, 8000.0, 128, 16000),
]


def key(case) -> str:
    return "fft{}_fmin{:g}_fmax{:g}_mels{}_sr{}".format(*case)


def main(out: str) -> None:
    banks = {}
    for case in CASES:
        n_fft, f_min, f_max, n_mels, sr = case
        fb = torchaudio.functional.melscale_fbanks(n_freqs=n_fft // 2 + 1, f_min=f_min, f_max=f_max,
                                                   n_mels=n_mels, sample_rate=sr, norm="slaney",
                                                   mel_scale="slaney")
        assert fb.dtype == torch.float32
        banks[key(case)] = fb.numpy()
    meta = {"torch": torch.__version__, "torchaudio": torchaudio.__version__, "cases": CASES}
    np.savez_compressed(out, meta=np.array(json.dumps(meta)), **banks)
    print(f"{out}: {len(banks)} filterbanks from torchaudio {torchaudio.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main(sys.argv[1])
