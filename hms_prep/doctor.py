"""`hms-prep doctor`: does every compiled part the project relies on load and work in this environment?

A Python package can install cleanly and still fail when its compiled library loads: torchaudio 2.11.1
beside torch 2.11.0 did (`undefined symbol`), and every build task crashed (the project has since
dropped torchaudio; torchvision's operators are built against one torch release the same way). Each
`Part` here loads one such library and runs one tiny operation through it; a broken part is one line
naming the package, the versions installed and the fix. `make setup` runs the whole check,
`hms-prep build` the parts a build computes with (before it creates or changes a store), `hms-train`
the parts training needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Callable

PROJECT = "hms-cache"  # the distribution whose declared requirements (pyproject.toml) `supported` checks
# What a user types to get the tested set back (uv.lock); outside a checkout, the matching pip command.
REINSTALL = "run `make setup` in the checkout (installs uv.lock's tested set)"
# The packages Kaggle's image brings itself (hms-train export ships none of them): the start-up line names them.
IMAGE_CORE = ("torch", "torchvision", "timm")


@dataclass(frozen=True)
class Part:
    """One compiled part: `load` imports it and exercises it once, raising when it is broken."""

    name: str
    packages: tuple[str, ...]  # the distributions whose versions matter to it (the first is the part's own)
    load: Callable[[], None]
    fix: str = REINSTALL


@dataclass(frozen=True)
class Broken:
    part: Part
    reason: str  # the first line of the error

    def line(self) -> str:
        return f"{self.part.name}: {self.reason} [{installed(self.part.packages)}]; fix: {self.part.fix}"


def installed(packages: tuple[str, ...]) -> str:
    """'torchvision 0.30.0, torch 2.15.0' (or 'not installed')."""
    found = []
    for package in packages:
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return ", ".join(found)


def unmet_requirements(project: str = PROJECT) -> list[str]:
    """'torch 2.7.1 (hms-cache supports >=2.8,<2.16)' or 'zarr not installed (...)' for each run-time
    requirement the project declares (pyproject.toml, as installed) that this environment does not meet.
    The export's infer.py runs it on Kaggle's image, whose packages it never replaces."""
    from packaging.requirements import Requirement

    unmet = []
    for text in metadata.requires(project) or []:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement, or another platform's
        wanted = str(requirement.specifier) or "any version"
        try:
            found = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            unmet.append(f"{requirement.name} not installed ({project} needs {wanted})")
            continue
        if not requirement.specifier.contains(found, prereleases=True):
            unmet.append(f"{requirement.name} {found} ({project} supports {wanted})")
    return unmet


def _ranges() -> None:
    unmet = unmet_requirements()
    if unmet:
        raise RuntimeError("; ".join(unmet))


def _torch() -> None:
    import torch

    frames = torch.stft(torch.ones(256), n_fft=64, window=torch.hann_window(64), return_complex=True)
    assert frames.abs().sum() > 0


def _torchvision() -> None:
    import torch
    import torchvision  # timm imports it; its operators are compiled against one torch release

    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    torchvision.ops.nms(boxes, torch.ones(1), 0.5)


def _timm() -> None:
    import timm

    if not timm.list_models("efficientnet_b0"):
        raise RuntimeError("timm lists no efficientnet_b0")


def _roundtrip(codec) -> None:
    import numpy as np

    data = np.arange(4096, dtype=np.float16)
    if not np.array_equal(np.frombuffer(codec.decode(codec.encode(data)), np.float16), data):
        raise RuntimeError(f"{codec!r} does not decode what it encoded")


def _blosc() -> None:
    import numcodecs

    _roundtrip(numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE))


def _zstd() -> None:
    import numcodecs

    _roundtrip(numcodecs.Zstd(level=3))


def _crc32c() -> None:
    import crc32c
    import google_crc32c

    check = 0xE3069283  # CRC-32C of b"123456789", the standard check value
    if crc32c.crc32c(b"123456789") != check or google_crc32c.value(b"123456789") != check:
        raise RuntimeError("CRC-32C of b'123456789' is not 0xE3069283")


def _scipy() -> None:
    import numpy as np
    from scipy.signal import butter, sosfiltfilt

    sosfiltfilt(butter(4, [0.5, 20.0], btype="band", fs=200, output="sos"), np.ones(400))


def _pyarrow() -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table({"x": [1, 2]}), sink, compression="zstd")
    assert pq.read_table(io.BytesIO(sink.getvalue())).num_rows == 2


PARTS = {
    "ranges": Part(f"{PROJECT}'s supported versions", IMAGE_CORE, _ranges,
                   fix=f"{REINSTALL}, or install versions within the ranges named"),
    "torch": Part("torch", ("torch",), _torch),
    "torchvision": Part("torchvision's operators", ("torchvision", "torch"), _torchvision,
                        fix=f"{REINSTALL}, or pip install the torchvision built for torch's release"),
    "timm": Part("timm", ("timm",), _timm),
    "blosc": Part("Blosc codec", ("numcodecs",), _blosc),
    "zstd": Part("zstd codec", ("numcodecs",), _zstd),
    "crc32c": Part("CRC-32C checksums", ("crc32c", "google-crc32c"), _crc32c),
    "scipy": Part("scipy.signal", ("scipy", "numpy"), _scipy),
    "pyarrow": Part("pyarrow's Parquet", ("pyarrow",), _pyarrow),
}
# What each command computes with (a subset of PARTS, checked before it starts work). scipy.signal is left
# to `make setup`'s full check: its import alone takes 2 s, which a build's driver would otherwise not pay.
BUILD_PARTS = ("torch", "blosc", "zstd", "crc32c", "pyarrow")
TRAIN_PARTS = ("torch", "torchvision", "timm", "blosc", "zstd", "crc32c", "pyarrow")


class BrokenInstall(RuntimeError):
    """Some compiled parts do not load; the message has one line per broken part."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


def check(names=tuple(PARTS)) -> list[Broken]:
    """The broken parts among `names`, each tried once (a part's failure never stops the others)."""
    broken = []
    for name in names:
        part = PARTS[name]
        try:
            part.load()
        except BaseException as err:  # an ImportError, OSError from a library, a failed assert: all broken
            if isinstance(err, KeyboardInterrupt):
                raise
            text = str(err).strip().splitlines()
            broken.append(Broken(part, f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")))
    return broken


def broken_lines(names=tuple(PARTS)) -> list[str]:
    """One line per broken part among `names` (what a Dask worker sends back: plain strings)."""
    return [b.line() for b in check(names)]


def require(names) -> None:
    """Raise BrokenInstall unless every part of `names` works in this process."""
    lines = broken_lines(names)
    if lines:
        raise BrokenInstall(lines)
