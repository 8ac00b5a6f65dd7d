"""Mel spectrograms of EEG windows, batched: the reference recipe of HMS.md section 3.

Per bipolar signal: mel power spectrogram (200 Hz, centred frames, zero padding, periodic Hann window
of win_length centred in n_fft, slaney mel scale and norm: librosa's defaults), dB relative to the
signal's own maximum floored 80 dB below it (librosa `power_to_db(ref=np.max)`), the first `frames`
frames, scaled (dB + 40) / 40, then the 4 signals of each chain averaged.

Why not `torchaudio.transforms.MelSpectrogram` directly: it computes a full n_fft-point FFT for every
frame and applies the filterbank to all n_fft/2+1 bins, although the window has only win_length
non-zero samples and the mel filters end at fmax (20 Hz = bin 102 of 513). Here the same numbers come
from matrix products of the win_length-sample frames, folded about the symmetric window's centre, with
the window-weighted cosine and sine bases of just the bins under fmax, then the slaney mel filterbank
(`mel_filterbank`, a transcription of torchaudio's `melscale_fbanks`: torchaudio itself is no longer
installed, docs/decisions.md). On one CPU thread that is about 18 times faster than the transform (10 s
windows: about 280 vs 15 windows/s; docs/performance.md); tests check it against librosa, torch.stft and
torchaudio's recorded filterbanks.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from hms_prep.domain import CHAINS, SAMPLE_RATE
from hms_prep.melscale import (SLANEY_HZ_PER_MEL, SLANEY_LOG_HZ, SLANEY_LOG_MEL, SLANEY_LOG_STEP,
                               hz_to_slaney_mel)
from hms_prep.sources.montage import BIPOLAR_PAIRS

AMIN = 1e-10  # librosa's floor on power before the log
SIGNALS_PER_CHAIN = len(BIPOLAR_PAIRS) // len(CHAINS)
# Windows per matrix product: keeps the intermediate (16 signals x frames x 2*bins floats, ~4 MB per
# window) in cache; measured about twice as fast as 64 windows at once.
WINDOWS_PER_STEP = 2


@dataclass(frozen=True)
class MelRecipe:
    """What the math reads of a mel array's params, made by `MelParams.recipe()` (kinds/eeg_mel.py). The
    math needs nothing of the kind, so imports run one way: the kind imports this module (and torch)
    only when it computes, and `info`/`verify` never do."""

    window_s: int
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    fmin: float
    fmax: float
    frames: int
    top_db: float  # the dB floor below each signal's maximum


def mel_windows(windows: np.ndarray | torch.Tensor, recipe: MelRecipe, device: str = "cpu") -> np.ndarray:
    """(B, 16, W*200) NaN-free bipolar windows, chain-major -> float32 (B, 4, n_mels, frames).

    Axis 1 is the chain (CHAINS order), axis 2 the mel band (low to high), axis 3 time. `device`: where
    the math runs ("cpu", "cuda", "cuda:1", ...); the values come back as numpy either way.
    """
    x = torch.as_tensor(windows, dtype=torch.float32)
    expected = (len(BIPOLAR_PAIRS), recipe.window_s * SAMPLE_RATE)
    if x.ndim != 3 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"windows must have shape (B, {expected[0]}, {expected[1]}) for a {recipe.window_s} s window, "
            f"got {tuple(x.shape)}"
        )
    # A sum is finite when every value is (one pass, no mask); only then is the full check skipped.
    if not (torch.isfinite(x.sum()) or torch.isfinite(x).all()):
        raise ValueError("windows contain NaN or inf; fill them before computing spectrograms")
    x = x.to(device)
    # A GPU takes the whole batch in one step; a CPU core is faster on a few windows at a time.
    step = WINDOWS_PER_STEP if x.device.type == "cpu" else max(len(x), 1)
    out = torch.empty(len(x), len(CHAINS), recipe.n_mels, recipe.frames, device=x.device)
    with torch.inference_mode():
        for start in range(0, len(x), step):
            out[start : start + step] = _chain_mel_db(x[start : start + step], recipe)
    return out.cpu().numpy()


def check_device(device: str) -> None:
    """ValueError unless `device` names a torch device this machine has ("cpu", "cuda", "cuda:N")."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: the build computes on cpu or cuda[:N]")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no CUDA GPU (torch.cuda.is_available() is False)")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPUs")


def _chain_mel_db(windows: torch.Tensor, recipe: MelRecipe) -> torch.Tensor:
    """(b, 16, T) windows -> (b, 4, n_mels, frames): scaled dB, each signal relative to its own maximum."""
    cos_basis, sin_basis, fbank = _mel_kernels(recipe, str(windows.device))
    symmetric, antisymmetric = _folded_frames(windows.reshape(-1, windows.shape[-1]), recipe)
    real = symmetric @ cos_basis  # (S, F, bins)
    imag = antisymmetric @ sin_basis
    power = real.square_().addcmul_(imag, imag)
    mel = power @ fbank  # (S, F, n_mels)
    # power_to_db(ref=max): the maximum over all frames, although only the first `frames` are kept
    ref_db = 10.0 * torch.log10(mel.amax(dim=(1, 2), keepdim=True).clamp_(min=AMIN))
    db = torch.log10(mel[:, : recipe.frames].clamp(min=AMIN)).mul_(10.0).sub_(ref_db).clamp_(min=-recipe.top_db)
    # scaling and the chain average are linear, so average first and transpose the smaller array
    chain_db = db.reshape(len(windows), len(CHAINS), SIGNALS_PER_CHAIN, recipe.frames, recipe.n_mels).mean(dim=2)
    return chain_db.add_(40.0).div_(40.0).transpose(-1, -2).contiguous()


def _folded_frames(signals: torch.Tensor, recipe: MelRecipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, T) -> the windowed part of every centred n_fft frame, folded about the window's centre c:
    (S, F, ·) sums x[c+m] + x[c-m] (led by x[c] when win_length is even) and differences x[c+m] - x[c-m].

    Centred frame t spans samples [t*hop - n_fft//2, t*hop + n_fft//2) of the zero-padded signal and
    its window sits in the middle, at [t*hop - left, t*hop - left + win_length): only those samples
    survive windowing, so they are all the DFT needs. The periodic Hann window is symmetric about c
    (and zero at sample 0), so relative to c the real part of the DFT sees only the sums and the
    imaginary part only the differences: half the multiplications of a full DFT basis.
    """
    n_samples = signals.shape[-1]
    n_frames = 1 + n_samples // recipe.hop_length
    left = recipe.n_fft // 2 - (recipe.n_fft - recipe.win_length) // 2
    right = max(0, (n_frames - 1) * recipe.hop_length - left + recipe.win_length - n_samples)
    padded = torch.nn.functional.pad(signals, (left, right))
    frames = padded.unfold(-1, recipe.win_length, recipe.hop_length)[:, :n_frames]
    length, upper = recipe.win_length, recipe.win_length // 2 + 1
    high, low = frames[..., upper:], frames[..., 1 : length - upper + 1].flip(-1)  # pairs (n, length - n)
    centre = frames[..., length // 2 : length // 2 + 1] if length % 2 == 0 else frames[..., :0]
    return torch.cat([centre, high + low], dim=-1), high - low


@functools.lru_cache(maxsize=16)
def _mel_kernels(recipe: MelRecipe, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The window-weighted cosine and sine bases of the folded frames (see `_folded_frames`) and the
    mel filterbank (bins, n_mels).

    `bins` stops after the last FFT bin any mel filter uses. The DFT is taken relative to the window's
    centre; its true position only changes the phase, not the power.
    """
    fbank = mel_filterbank(recipe.n_fft // 2 + 1, recipe.fmin, recipe.fmax, recipe.n_mels, SAMPLE_RATE)
    bins = int(fbank.any(dim=1).nonzero().max()) + 1
    length = recipe.win_length
    window = torch.hann_window(length, periodic=True, dtype=torch.float64)
    upper = torch.arange(length // 2 + 1, length)
    centre = torch.tensor([length // 2] if length % 2 == 0 else [], dtype=torch.long)
    frequency = 2 * torch.pi * torch.arange(bins, dtype=torch.float64) / recipe.n_fft
    sums = torch.cat([centre, upper])
    cos_basis = torch.cos(torch.outer(sums - length / 2, frequency)) * window[sums, None]
    sin_basis = torch.sin(torch.outer(upper - length / 2, frequency)) * window[upper, None]
    return tuple(k.float().contiguous().to(device) for k in (cos_basis, sin_basis, fbank[:bins]))




def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular mel filters, slaney scale and slaney (area) norm: float32 (n_freqs, n_mels), the columns
    that `power @ fbank` sums the n_freqs = n_fft//2 + 1 FFT bins into.

    A line-by-line transcription of torchaudio 2.11's `functional.melscale_fbanks(..., norm="slaney",
    mel_scale="slaney")`, in the same float32 operations and order, so a store built with torchaudio's
    filterbank keeps its values (tests/test_mel_filterbank.py compares it with torchaudio's recorded
    output and with librosa's `filters.mel`).
    """
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_pts = torch.linspace(hz_to_slaney_mel(f_min), hz_to_slaney_mel(f_max), n_mels + 2)
    f_pts = _slaney_mel_to_hz(m_pts)
    # each filter rises from its left neighbour's centre to its own and falls to its right neighbour's
    f_diff = f_pts[1:] - f_pts[:-1]  # (n_mels + 1)
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    down_slopes = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up_slopes = slopes[:, 2:] / f_diff[1:]
    fb = torch.max(torch.zeros(1), torch.min(down_slopes, up_slopes))
    # slaney norm: each triangle divided by its width, so every band holds about the same energy
    return fb * (2.0 / (f_pts[2 : n_mels + 2] - f_pts[:n_mels])).unsqueeze(0)


def _slaney_mel_to_hz(mels: torch.Tensor) -> torch.Tensor:
    """melscale.slaney_mel_to_hz in torchaudio's float32 torch operations (the filterbank's exact values)."""
    freqs = SLANEY_HZ_PER_MEL * mels
    log_part = mels >= SLANEY_LOG_MEL
    freqs[log_part] = SLANEY_LOG_HZ * torch.exp(SLANEY_LOG_STEP * (mels[log_part] - SLANEY_LOG_MEL))
    return freqs
