"""Which compressor for the store's float16 arrays: size against decode (and encode) speed.

Reads an evenly spaced sample of whole chunks of each data array of a built store (eeg_*s, kaggle,
raw), decoded, and re-encodes every chunk with each candidate codec through numcodecs (the library
behind zarr's Zstd and Blosc codecs). Per array and codec it prints:
  ratio        decoded bytes / encoded bytes over the sampled chunks
  MB/row       the array's decoded bytes per row / ratio (MB = 10^6 bytes); for `raw` the decoded
               bytes per row are its whole length (alignment gaps included) / store rows
  decode GB/s  decoded float16 bytes per second, one thread, best of --repeats per chunk
  encode GB/s  the same for encoding
and an overall line per codec: bytes per row summed over the arrays, and the decode speed of a
whole row (its decoded bytes / the sum of its arrays' decode times). `none` is a plain copy.

Note: zstd level 0 means "the library default", which is level 3.

Example:
  python benchmarks/codecs.py --store /tmp/hms-bench/specs.zarr
"""

from __future__ import annotations

import argparse
import json
import time

import numcodecs
import numpy as np
from numcodecs import Blosc, Zstd

from hms_prep.store.arrays import data_array_names
from hms_prep.store.layout import open_store

MB, GB = 1e6, 1e9

CANDIDATES = {
    "none": None,
    "zstd-0 (=3)": Zstd(level=0),
    "zstd-1": Zstd(level=1),
    "zstd-3": Zstd(level=3),
    "blosc-lz4-5 shuffle": Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),
    "blosc-lz4-5 noshuffle": Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE),
    "blosc-lz4-5 bitshuffle": Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE),
    "blosc-zstd-1 shuffle": Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE),
}


def sample_chunks(array, n_chunks: int, axis: int) -> list[np.ndarray]:
    """Up to `n_chunks` whole chunks along `axis` (the partial last chunk left out unless it is the only
    one), evenly spaced."""
    size = array.chunks[axis]
    whole = max(array.shape[axis] // size, 1)
    picks = np.unique(np.linspace(0, whole - 1, min(n_chunks, whole)).round().astype(int))
    chunks = []
    for i in picks:
        index = [slice(None)] * array.ndim
        index[axis] = slice(i * size, (i + 1) * size)
        chunks.append(np.ascontiguousarray(array[tuple(index)]))
    return chunks


def measure(codec, chunks: list[np.ndarray], repeats: int) -> dict:
    """Ratio and best-of-`repeats` encode/decode seconds of `codec` over `chunks` (None: a copy)."""
    decoded_bytes = encoded_bytes = 0
    encode_s = decode_s = 0.0
    for chunk in chunks:
        out = np.empty_like(chunk)
        if codec is None:
            encoded = chunk
            encode_s += _best(lambda: chunk.copy(), repeats)
            decode_s += _best(lambda: np.copyto(out, chunk), repeats)
        else:
            encoded = codec.encode(chunk)
            encode_s += _best(lambda: codec.encode(chunk), repeats)
            decode_s += _best(lambda: codec.decode(encoded, out=out), repeats)
            if not np.array_equal(out.view(np.uint16), chunk.view(np.uint16)):
                raise AssertionError(f"{codec} did not round-trip a chunk")
        decoded_bytes += chunk.nbytes
        encoded_bytes += len(memoryview(encoded).cast("B"))
    return {"ratio": decoded_bytes / encoded_bytes, "decode_gb_s": decoded_bytes / decode_s / GB,
            "encode_gb_s": decoded_bytes / encode_s / GB}


def _best(action, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def run(store: str, n_chunks: int, repeats: int) -> dict:
    group, layout = open_store(store)
    results = {}
    for name in data_array_names(group):
        array = group[name]
        axis = 1 if name == "raw" else 0  # raw is (signals, samples), chunked along samples
        chunks = sample_chunks(array, n_chunks, axis)
        decoded_per_row = array.nbytes / layout.n_rows
        codecs = {}
        for label, codec in CANDIDATES.items():
            figures = measure(codec, chunks, repeats)
            codecs[label] = {**figures, "mb_per_row": decoded_per_row / figures["ratio"] / MB}
        results[name] = {"chunks": len(chunks), "chunk_shape": list(chunks[0].shape),
                         "decoded_mb_per_row": decoded_per_row / MB, "codecs": codecs}
    overall = {}
    for label in CANDIDATES:
        mb = sum(r["codecs"][label]["mb_per_row"] for r in results.values())
        decoded = sum(r["decoded_mb_per_row"] for r in results.values())
        decode_s = sum(r["decoded_mb_per_row"] * MB / (r["codecs"][label]["decode_gb_s"] * GB)
                       for r in results.values())
        overall[label] = {"mb_per_row": mb, "ratio": decoded / mb, "decode_gb_s": decoded * MB / decode_s / GB,
                          "decode_rows_per_s": 1 / decode_s}
    return {"store": store, "store_codec": layout.codec, "rows": layout.n_rows, "arrays": results,
            "overall": overall}


def print_report(result: dict) -> None:
    print(f"store {result['store']} ({result['rows']} rows, built with {result['store_codec']}); "
          "one thread; MB = 10^6 bytes")
    header = f"  {'codec':<24}{'ratio':>7}{'MB/row':>9}{'decode GB/s':>13}{'encode GB/s':>13}"
    for name, r in result["arrays"].items():
        print(f"{name}: {r['chunks']} chunks of {tuple(r['chunk_shape'])} float16, "
              f"{r['decoded_mb_per_row']:.3f} MB/row decoded")
        print(header)
        for label, c in r["codecs"].items():
            print(f"  {label:<24}{c['ratio']:7.2f}{c['mb_per_row']:9.3f}{c['decode_gb_s']:13.2f}{c['encode_gb_s']:13.2f}")
    print(f"overall ({' + '.join(result['arrays'])}):")
    print(f"  {'codec':<24}{'ratio':>7}{'MB/row':>9}{'decode GB/s':>13}{'decode rows/s':>15}")
    for label, o in result["overall"].items():
        print(f"  {label:<24}{o['ratio']:7.2f}{o['mb_per_row']:9.3f}{o['decode_gb_s']:13.2f}{o['decode_rows_per_s']:15.0f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="/tmp/hms-bench/specs.zarr", help="a built store")
    parser.add_argument("--chunks", type=int, default=8, help="chunks sampled per array")
    parser.add_argument("--repeats", type=int, default=3, help="timings per chunk; the best is kept")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    numcodecs.blosc.use_threads = False  # one thread: the reader decodes in several processes instead
    result = run(args.store, args.chunks, args.repeats)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
