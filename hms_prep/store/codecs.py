"""Chunk codecs of the store, declared once as write/decode pairs.

`write()` is the zarr codec an array is created with; `decode(encoded, out)` turns one stored chunk's
bytes back into its values without zarr's per-call machinery (the trainer's reader uses it on its fast
path). Blosc and zstd frames describe themselves, so a decoder needs only the family, which
`codec_of` reads from an existing array's metadata. `chunk_bytes` is the one place that reads a stored
chunk's bytes, through fsspec, by the key zarr's metadata gives it: nothing here imports `zarr.core`.

Every new array's chain ends with zarr's crc32c codec (a 4-byte CRC-32C of the compressed chunk, appended):
a flipped byte or a truncated chunk raises `ChunkError` naming the array and chunk instead of decoding to
wrong values (or, for Blosc, crashing the process). Stores written before carry no checksum and still
read. Verifying costs one CRC pass over the compressed bytes (docs/reliability.md has the figure).

Measured with benchmarks/codecs.py (docs/performance.md). Float16 spectrograms have noisy low mantissa
bits, so byte-oriented compressors gain little on them and fast decoding matters more: Blosc-lz4 with
byte shuffle (bit shuffle saves 5-10 % more but decodes 30 % slower). Kaggle crops of rows that share a
spectrogram are time-shifted copies of each other, which zstd's long match window finds (about 5x) and
Blosc's blocks cannot.
"""

from __future__ import annotations

import itertools
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem
import crc32c
import numcodecs
import numcodecs.zstd  # its decompress, called directly (`_decode_zstd`)
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

from hms_prep.registry import Registry


def _decode_with(numcodec) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def decode(encoded: np.ndarray, out: np.ndarray) -> np.ndarray:
        numcodec.decode(encoded, out=out)
        return out

    return decode


def _decode_zstd(encoded: np.ndarray, out: np.ndarray) -> np.ndarray:
    """numcodecs.Zstd's own call, without its checks of what the buffers are (the same refusals: a frame
    larger than `out`): they cost half the decode of a build-state chunk, which a no-op build of the
    real data reads about 40,000 of."""
    numcodecs.zstd.decompress(encoded, out)
    return out


def _decode_bytes(encoded: np.ndarray, out: np.ndarray) -> np.ndarray:
    if encoded.nbytes != out.nbytes:
        raise ValueError(f"chunk holds {encoded.nbytes} bytes, expected {out.nbytes}")
    out.reshape(-1).view(np.uint8)[:] = encoded
    return out


def _blosc_sizes(encoded: np.ndarray) -> tuple[int, int]:
    """The decoded size and the frame's own size that Blosc's header records (bytes 4-7 and 12-15,
    little-endian); (-1, -1) when there is no header."""
    if encoded.nbytes < 16:
        return -1, -1
    return int.from_bytes(encoded[4:8].tobytes(), "little"), int.from_bytes(encoded[12:16].tobytes(), "little")


class ChunkError(ValueError):
    """A stored chunk that cannot be trusted: checksum mismatch, wrong size, or missing where written."""


@dataclass(frozen=True)
class Codec:
    name: str
    family: str  # "blosc", "zstd" or "bytes": what a decoder needs to know
    compressor: Callable[[], object]  # the zarr compressor (None = stored uncompressed)
    decode: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (encoded uint8 bytes, out) -> out
    # the numcodecs codec that zarr's own codec (as stored in an array's metadata) encodes with; None: raw bytes
    encoder: Callable[[object], object] | None = None
    checksum: bool = False  # the chunk ends with a CRC-32C of what precedes it (zarr's crc32c codec)

    def write(self) -> tuple:
        """The compressors new arrays are created with: the codec, then the crc32c checksum."""
        compressor = self.compressor()
        return (*([compressor] if compressor is not None else []), Crc32cCodec())


def _blosc_encoder(codec: BloscCodec):
    """The numcodecs Blosc that zarr's BloscCodec encodes with (zarr.codecs.blosc, `_blosc_codec`)."""
    shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[codec.shuffle.value]
    return numcodecs.Blosc(cname=codec.cname.value, clevel=codec.clevel, shuffle=shuffle,
                           blocksize=codec.blocksize, typesize=codec.typesize)


def _zstd_encoder(codec: ZstdCodec):
    return numcodecs.Zstd(level=codec.level, checksum=codec.checksum)


_blosc = numcodecs.Blosc()  # its parameters come from each frame's header
CODECS: Registry[Codec] = Registry("codec", "codecs", settings=False)  # name -> Codec; a reader finds a family
for _codec in (  # by its first entry with that compressor (_family_of): lz4 before blosc-zstd
    Codec("lz4", "blosc", lambda: BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), _decode_with(_blosc),
          _blosc_encoder),
    Codec("blosc-zstd", "blosc", lambda: BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
          _decode_with(_blosc), _blosc_encoder),
    Codec("zstd", "zstd", lambda: ZstdCodec(level=3), _decode_zstd, _zstd_encoder),
    Codec("none", "bytes", lambda: None, _decode_bytes),
):
    CODECS.register(_codec.name, _codec, family=_codec.family)
# Store-wide choices that let each array kind pick its codec (ArrayKind.codec_for):
AUTO = "auto"  # the kind's default: the smallest store that still decodes fast (0.48 MB per row)
FAST = "fast"  # the kind's fastest to read: EEG windows uncompressed (lz4 saves them only 6-23 %), about
# 15 % more disk for 25-30 % more samples/s in the reader (docs/performance.md)
POLICIES = (AUTO, FAST)


def check_codec_choice(name: str) -> str:
    if name not in POLICIES and name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose one of {[*POLICIES, *sorted(CODECS)]}")
    return name


def codec_of(array: zarr.Array) -> Codec | None:
    """The declared codec family an existing array's chunks can be decoded with, or None when its
    codec chain is not one of ours (another byte order, sharding, filters, zarr v2): read it with zarr."""
    metadata = array.metadata
    if metadata.zarr_format != 3:
        return None
    codecs = list(metadata.codecs)
    checksum = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
    codec = _family_of(codecs[:-1] if checksum else codecs)
    return replace(codec, checksum=True) if codec is not None and checksum else codec


def _family_of(codecs: list) -> Codec | None:
    if not codecs or not isinstance(codecs[0], BytesCodec):
        return None
    if getattr(codecs[0].endian, "value", codecs[0].endian) not in (None, "little") or sys.byteorder != "little":
        return None
    if len(codecs) == 1:
        return CODECS["none"]
    if len(codecs) == 2:  # the first declared codec written as this kind of zarr codec: its frames
        # describe themselves (any Blosc frame decodes alike), so a new CODECS entry is all a reader needs
        return next((codec for codec in CODECS.values() if type(codec.compressor()) is type(codecs[1])), None)
    return None


def crc32c_of(data) -> int:
    """The CRC-32C zarr's crc32c codec stores, of any contiguous buffer. The `crc32c` package computes it
    in hardware and lets other threads run meanwhile: 9.6 GB/s on one core and 22.5 on two, where
    `google_crc32c` (which zarr itself calls) gave 3.5 and 4.4: it holds the GIL (docs/performance.md)."""
    return crc32c.crc32c(data)


def verify_checksum(encoded: np.ndarray, where: str = "chunk") -> np.ndarray:
    """The payload of a checksummed chunk (its last 4 bytes are the little-endian CRC-32C of the rest);
    ChunkError naming `where` when they disagree."""
    if encoded.nbytes < 4:
        raise ChunkError(f"{where} holds {encoded.nbytes} bytes, too few for its checksum (truncated)")
    payload = encoded[:-4]
    stored = int.from_bytes(encoded[-4:].tobytes(), "little")
    if crc32c_of(payload if payload.flags.c_contiguous else payload.tobytes()) != stored:
        raise ChunkError(f"{where} fails its checksum (its bytes changed after it was written)")
    return payload


def decode_chunk(codec: Codec, encoded: np.ndarray, out: np.ndarray, where: str = "chunk") -> np.ndarray:
    """Decode one chunk into `out`, checking its checksum first when it has one and refusing a frame
    whose sizes do not match (a damaged, truncated or foreign chunk must raise ChunkError, a ValueError,
    naming `where`, e.g. "eeg_10s chunk (3, 0, 0, 0)", never crash the process or return wrong values)."""
    if codec.checksum:
        encoded = verify_checksum(encoded, where)
    if codec.family == "blosc":
        size, frame = _blosc_sizes(encoded)
        if size != out.nbytes:
            raise ChunkError(f"{where} decodes to {size} bytes, expected {out.nbytes}")
        if frame != encoded.nbytes:  # Blosc reads `frame` bytes whatever the buffer holds: past a truncated end
            raise ChunkError(f"{where} holds {encoded.nbytes} bytes, its Blosc header says {frame} (truncated?)")
    try:
        return codec.decode(encoded, out)
    except ChunkError:
        raise
    except Exception as err:  # a damaged frame of a store without checksums
        raise ChunkError(f"{where} cannot be decoded ({err})") from None


class ChunkSource:
    """Reads an array's chunks by their zarr key, through fsspec: stored bytes (`source(coords)`) or
    decoded values (`source.read(coords, codec, out)`)."""

    def __init__(self, store_url: str, array: zarr.Array, every_chunk_stored: bool | None = None):
        self.fs, root = fsspec.core.url_to_fs(store_url)
        self.prefix = f"{root.rstrip('/')}/{array.path}/"
        self.name = array.path
        self.metadata = array.metadata
        self.local = isinstance(self.fs, LocalFileSystem)  # plain files: uncompressed chunks read in place
        # Arrays with checksums are written with every chunk stored (empty ones too), so a missing
        # chunk there is damage, not the fill value.
        codecs = list(array.metadata.codecs) if array.metadata.zarr_format == 3 else []
        self.every_chunk_stored = (bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
                                   if every_chunk_stored is None else every_chunk_stored)

    def where(self, coords: tuple[int, ...]) -> str:
        """How errors name a chunk: "eeg_10s chunk (3, 0, 0, 0)"."""
        return f"{self.name} chunk {tuple(int(c) for c in coords)}"

    def read(self, coords: tuple[int, ...], codec: Codec, out: np.ndarray, where: str | None = None
             ) -> np.ndarray | None:
        """The chunk at `coords` decoded into `out` (C-contiguous, the chunk's shape), checksum checked; None
        when it was never written (a store without checksums). Errors name the chunk as `where` (default:
        `self.where(coords)`). An uncompressed chunk of a local file is read straight into `out`: no
        intermediate buffer, no copy (docs/performance.md)."""
        where = where or self.where(coords)
        if codec.family == "bytes" and self.local:
            return self._read_into(coords, codec, out, where)
        encoded = self(coords, where)
        return None if encoded is None else decode_chunk(codec, encoded, out, where)

    def _read_into(self, coords: tuple[int, ...], codec: Codec, out: np.ndarray, where: str) -> np.ndarray | None:
        path = self.prefix + self.metadata.encode_chunk_key(coords)
        values = out.reshape(-1).view(np.uint8)
        try:
            with open(path, "rb", buffering=0) as file:
                size = file.readinto(memoryview(values))
                tail = file.read(5)  # the checksum, and a byte more to notice a file that is too long
        except FileNotFoundError:
            if self.every_chunk_stored:
                raise ChunkError(f"{where} is missing (deleted, or its rows were never built)") from None
            return None
        stored = size + len(tail)
        if stored != out.nbytes + (4 if codec.checksum else 0):
            raise ChunkError(f"{where} holds {stored} bytes, expected {out.nbytes}"
                             + (" and a 4-byte checksum" if codec.checksum else ""))
        if codec.checksum and crc32c_of(values) != int.from_bytes(tail, "little"):
            raise ChunkError(f"{where} fails its checksum (its bytes changed after it was written)")
        return out

    def __call__(self, coords: tuple[int, ...], where: str | None = None) -> np.ndarray | None:
        """The chunk's bytes as uint8, or None when it was never written (zarr reads the fill value) in
        a store without checksums; ChunkError (naming the chunk as `where`) when a chunk of a store with
        checksums is missing."""
        path = self.prefix + self.metadata.encode_chunk_key(coords)
        try:
            if self.local:  # plain files: fsspec's open costs more than the read of a small chunk
                with open(path, "rb") as file:
                    data = file.read()
            else:
                data = self.fs.cat_file(path)
        except FileNotFoundError:
            if self.every_chunk_stored:
                raise ChunkError(f"{where or self.where(coords)} is missing (deleted, or its rows were never "
                                 "built)") from None
            return None
        return np.frombuffer(data, dtype=np.uint8)


def read_checked_chunk(source: ChunkSource, codec: Codec, coords: tuple[int, ...], out: np.ndarray, name: str,
                       chunk, rows: str, location: str) -> np.ndarray | None:
    """Chunk `coords` decoded into `out` (None: never written, in a store without checksums); ChunkError
    naming the array (`name`), the chunk (`chunk`), `rows` (whose values it holds) and its file under
    `location` (the array's folder) otherwise."""
    try:
        return source.read(coords, codec, out, where="chunk")  # named below
    except (ValueError, RuntimeError) as err:  # numcodecs reports a bad frame as RuntimeError
        key = source.metadata.encode_chunk_key(coords)
        raise ChunkError(f"{name}: chunk {chunk} is damaged: {err} ({rows}; {codec.family} frame, "
                         f"file {location}/{key})") from err


def read_with_zarr(array: zarr.Array, index: tuple, name: str, what: str, location: str) -> np.ndarray:
    """array[index] for a codec chain not declared here; any failure of zarr's (its own checksum codec's
    among them) a ChunkError naming `what` (chunk or samples, and rows) and the array's folder."""
    try:
        return array[index]
    except Exception as err:
        raise ChunkError(f"{name}: {what} cannot be read ({type(err).__name__}: {err}; folder {location})") from err


def read_region(store_url: str, array: zarr.Array, region: tuple[slice, ...], rows_of) -> np.ndarray:
    """array[region] (one slice of int bounds per axis, None for a whole axis), read chunk by chunk through
    the declared codecs, so each chunk's checksum and presence are checked (zarr reads a deleted chunk as
    its fill value); `rows_of(coords)` says which rows a chunk holds ("rows 8-15"), for the ChunkError.
    Other codec chains are read through zarr."""
    location = "/".join(part for part in (store_url.rstrip("/"), array.path) if part)
    name = array.path or location
    region = (*region, *(slice(None),) * (array.ndim - len(region)))
    bounds = [(s.start or 0, array.shape[axis] if s.stop is None else s.stop) for axis, s in enumerate(region)]
    codec = codec_of(array)
    source = ChunkSource(store_url, array) if codec is not None else None
    if source is None or not source.fs.exists(source.prefix + "zarr.json"):  # fsspec resolves it elsewhere
        return read_with_zarr(array, tuple(slice(a, b) for a, b in bounds), name,
                              f"{[f'{a}-{b - 1}' for a, b in bounds]} ({rows_of(None)})", location)
    out = np.empty([b - a for a, b in bounds], dtype=array.dtype)
    chunk = np.empty(array.chunks, dtype=array.dtype)
    grid = [range(a // n, -(-b // n)) for (a, b), n in zip(bounds, array.chunks)]
    for coords in itertools.product(*grid):
        decoded = read_checked_chunk(source, codec, coords, chunk, name, coords, rows_of(coords), location)
        if decoded is None:  # never written, in a store without checksums: the fill value, as zarr reads it
            decoded = np.full(array.chunks, array.fill_value, dtype=array.dtype)
        inside = [(max(a, c * n), min(b, (c + 1) * n)) for (a, b), c, n in zip(bounds, coords, array.chunks)]
        out[tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(inside, bounds))] = \
            decoded[tuple(slice(lo - c * n, hi - c * n) for (lo, hi), c, n in zip(inside, coords, array.chunks))]
    return out


def read_whole(array: zarr.Array, threads: int = 8) -> tuple[np.ndarray, list[int]] | None:
    """A 1-D array of a local store read chunk file by chunk file on `threads` threads: its values (the
    fill value where a chunk was never written or cannot be trusted) and the chunks that cannot (checksum
    or size wrong). None where this does not apply (another store, a codec chain not declared here, more
    than one axis): read those with zarr. zarr's `array[:]` costs about 0.3 ms per chunk, and a build-state
    array of the real data has 3,338 of them: a no-op build reads 16 such arrays."""
    codec = codec_of(array)
    if codec is None or array.ndim != 1 or not isinstance(array.store, LocalStore) or array.dtype.kind not in "biuf":
        return None
    source = ChunkSource(str(array.store.root), array, every_chunk_stored=False)  # build state: written as rows are
    step, n = array.chunks[0], array.shape[0]
    values = np.full(n, array.fill_value, dtype=array.dtype)

    def read(chunk: int) -> bool:
        out = np.empty(step, dtype=array.dtype)
        try:
            decoded = source.read((chunk,), codec, out)
        except (ChunkError, RuntimeError):
            return False
        if decoded is not None:
            values[chunk * step : (chunk + 1) * step] = decoded[: min(step, n - chunk * step)]
        return True

    chunks = range(-(-n // step))
    fine = _map(read, chunks, threads)
    return values, [c for c, ok in zip(chunks, fine) if not ok]


def checksum_failures(array: zarr.Array, threads: int = 8) -> list[int] | None:
    """The chunks of a 1-D array of a local store whose stored bytes fail their checksum (any data type:
    the build state's error strings too, which `read_whole` cannot decode); None where this does not apply
    (another store, no checksum): read those with zarr. A chunk never written is not a failure. Only the
    chain's last codec matters here (zarr's crc32c over the stored bytes), so the error strings' chain
    (vlen-utf8, zstd, crc32c), which `codec_of` does not decode, is checked too."""
    codecs = list(array.metadata.codecs) if array.metadata.zarr_format == 3 else []
    if not codecs or not isinstance(codecs[-1], Crc32cCodec) or array.ndim != 1:
        return None
    if not isinstance(array.store, LocalStore):
        return None
    source = ChunkSource(str(array.store.root), array, every_chunk_stored=False)

    def fails(chunk: int) -> bool:
        try:
            encoded = source((chunk,))
            if encoded is not None:
                verify_checksum(encoded)
            return False
        except ChunkError:
            return True

    chunks = range(-(-array.shape[0] // array.chunks[0]))
    return [chunk for chunk, failed in zip(chunks, _map(fails, chunks, threads)) if failed]


def _map(work, chunks: range, threads: int) -> list:
    """[work(c) for c in chunks], on `threads` threads where there are enough chunks to pay for starting
    them (about 1 ms of CPU a pool, as much as reading 20 small chunks: a no-op build reads 20 such arrays).
    Each thread takes one run of chunks: a task per chunk cost as much CPU as the chunk's read (about 30
    us: the executor's future and locks), a third of reading a build-state array of the real data."""
    if len(chunks) < 64:
        return [work(chunk) for chunk in chunks]
    size = -(-len(chunks) // threads)
    runs = [chunks[start : start + size] for start in range(0, len(chunks), size)]
    with ThreadPoolExecutor(threads) as pool:
        return [done for run in pool.map(lambda run: [work(chunk) for chunk in run], runs) for done in run]


class ChunkSink:
    """Writes whole chunks of an array of a local store as zarr writes them, byte for byte: the numcodecs
    codec zarr's own codec calls, the CRC-32C appended, the file replaced atomically. Without zarr's
    per-call machinery a 32-row chunk of eeg_10s takes 7 ms instead of 22 (docs/performance.md).
    `ChunkSink.of(array)` is None where that does not apply (another store, codec chain or zarr format):
    `write_rows` then writes through zarr."""

    def __init__(self, array: zarr.Array, root: Path, checksum: bool, compressor):
        self.array = array
        self.root = root
        self.checksum = checksum
        self.compressor = compressor  # numcodecs; None: the chunk's bytes as they are

    @classmethod
    def of(cls, array: zarr.Array) -> ChunkSink | None:
        codec = codec_of(array)
        if codec is None or not isinstance(array.store, LocalStore) or array.store.read_only:
            return None
        compressors = list(array.metadata.codecs)[1 : -1 if codec.checksum else None]
        if compressors and codec.encoder is None:  # a codec declared for reading only: zarr writes it
            return None
        compressor = codec.encoder(compressors[0]) if compressors else None
        return cls(array, Path(array.store.root) / array.path, codec.checksum, compressor)

    def path(self, coords: tuple[int, ...]) -> Path:
        return self.root / self.array.metadata.encode_chunk_key(coords)

    def write(self, coords: tuple[int, ...], values: np.ndarray) -> None:
        """Chunk `coords` := `values`, the chunk's shape, or cut short where the array ends (padded with
        the fill value, as zarr pads it)."""
        chunk_shape = tuple(self.array.chunks)
        values = np.asarray(values, dtype=self.array.dtype)
        if values.shape != chunk_shape:
            padded = np.full(chunk_shape, self.array.fill_value, dtype=self.array.dtype)
            padded[tuple(slice(0, n) for n in values.shape)] = values
            values = padded
        data = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
        encoded = np.frombuffer(self.compressor.encode(data), np.uint8) if self.compressor is not None else data
        path = self.path(coords)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")  # zarr's own atomic write
        try:
            with open(partial, "wb") as file:
                file.write(encoded)
                if self.checksum:
                    file.write(crc32c_of(encoded).to_bytes(4, "little"))
            partial.replace(path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise


def write_rows(array: zarr.Array, start: int, values: np.ndarray) -> None:
    """array[start : start + len(values)] = values. Exactly one whole chunk (rows and every other axis)
    of a local store goes through `ChunkSink`; anything else through zarr."""
    step, stop = array.chunks[0], start + len(values)
    one_chunk = (start % step == 0 and (stop - start == step or stop == array.shape[0])
                 and tuple(array.chunks[1:]) == tuple(array.shape[1:]))
    sink = ChunkSink.of(array) if one_chunk else None
    if sink is None:
        array[start:stop] = values
    else:
        sink.write((start // step,) + (0,) * (array.ndim - 1), values)
