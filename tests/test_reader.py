"""The store reader: row selection, exact-once shuffled epochs, batch contents against the store, raw
windows and jitter, shards, refusals and errors, the chunk decoder's fast path, and `run_bench`."""

import dataclasses
import re
import shutil
from pathlib import Path

import numcodecs
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec

from hms_prep.store.codecs import CODECS, Codec
from hms_prep.store.labels import write_labels
from hms_prep.store.layout import LABELS_FILE, ROOT_KEY, StoreError
from hms_train.run.bench import run_bench
from hms_train.image.compose import compose_image
from hms_train.data.chunks import ChunkError
from hms_train.data.reader import RAW_WINDOW, ChunkDecoder, Selection, StoreReader
from hms_train.data.sampler import SamplerState

SPECTROGRAMS = ["eeg_10s", "eeg_30s", "kaggle"]


def labels(url: str) -> dict[str, np.ndarray]:
    table = pq.read_table(Path(url) / LABELS_FILE)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def epoch_rows(reader: StoreReader, rows, batch_size=5, buffer_chunks=8, shuffle=True, **state) -> np.ndarray:
    """The rows of one epoch, in the order the batches yield them; `state`: the SamplerState's fields."""
    batches = reader.batches(rows, batch_size, SamplerState(**state), shuffle=shuffle, buffer_chunks=buffer_chunks)
    return np.concatenate([batch["row"].numpy() for batch in batches])


def shallow_copy(url: str, out: Path) -> str:
    """A copy of the store whose root files are real copies and whose arrays are links to the original's
    (so its attributes and labels can be edited without touching the original)."""
    out.mkdir()
    for entry in Path(url).iterdir():
        if entry.is_dir():
            (out / entry.name).symlink_to(entry, target_is_directory=True)
        else:
            shutil.copy(entry, out / entry.name)
    return str(out)


def copy_with_own_array(url: str, out: Path, name: str) -> str:
    """A shallow copy of the store whose array `name` is a real copy, to be damaged."""
    copy = shallow_copy(url, out)
    (Path(copy) / name).unlink()
    shutil.copytree(Path(url) / name, Path(copy) / name)
    return copy


# --- epochs: every row once, a new order each epoch, reproducible ---------------------------------------


def test_every_selected_row_comes_once_per_epoch_in_a_new_order(train_store):
    reader = StoreReader(train_store, ["eeg_10s"], threads=2)
    rows = reader.select(Selection())
    assert len(rows) > 3 * reader.layout.chunk_rows  # several chunks, so chunk order matters
    orders = [epoch_rows(reader, rows, seed=3, epoch=epoch, buffer_chunks=2) for epoch in range(3)]
    for order in orders:
        assert len(order) == len(rows)
        np.testing.assert_array_equal(np.sort(order), rows)
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])
    np.testing.assert_array_equal(epoch_rows(reader, rows, seed=3, epoch=1, buffer_chunks=2), orders[1])
    assert not np.array_equal(epoch_rows(reader, rows, seed=4, epoch=1, buffer_chunks=2), orders[1])
    # the chunks themselves are visited in a new order, not only the rows within a buffer
    first_chunks = {epoch_rows(reader, rows, seed=3, epoch=e, buffer_chunks=1)[0] // reader.layout.chunk_rows
                    for e in range(3)}
    assert len(first_chunks) > 1


def test_a_subset_of_rows_and_drop_last(train_store):
    reader = StoreReader(train_store, ["eeg_10s"], threads=2)
    rows = reader.select(Selection())[::3]  # a sparse subset: chunks with few selected rows
    np.testing.assert_array_equal(np.sort(epoch_rows(reader, rows, batch_size=4, seed=1)), rows)
    sizes = [len(b["row"]) for b in reader.batches(rows, 4, SamplerState(seed=1), drop_last=True)]
    assert sizes == [4] * (len(rows) // 4)


def test_unshuffled_batches_come_in_ascending_row_order(train_store):
    reader = StoreReader(train_store, ["eeg_10s"], threads=2)
    rows = reader.select(Selection())
    np.testing.assert_array_equal(epoch_rows(reader, rows, batch_size=7, shuffle=False, buffer_chunks=2), rows)


# --- selection and labels --------------------------------------------------------------------------------


def test_selection_by_folds_and_votes_matches_labels(train_store):
    reader = StoreReader(train_store, ["eeg_10s"])
    table = labels(train_store)
    ok = table["status"] == "ok"
    np.testing.assert_array_equal(reader.select(Selection()), np.flatnonzero(ok))
    fold, votes = table["fold"], table["total_votes"]
    expected = [
        (Selection(folds=[1, 3]), ok & np.isin(fold, [1, 3])),
        (Selection(exclude_folds=[0]), ok & (fold != 0)),
        (Selection(min_votes=10), ok & (votes >= 10)),
        (Selection(exclude_folds=[2], min_votes=3), ok & (fold != 2) & (votes >= 3)),
    ]
    for selection, keep in expected:
        np.testing.assert_array_equal(reader.select(selection), np.flatnonzero(keep))
    assert 0 < len(reader.select(Selection(min_votes=10))) < len(reader.select(Selection()))


def test_failed_rows_are_left_out_unless_asked_for(train_store, tmp_path):
    copy = shallow_copy(train_store, tmp_path / "copy.zarr")
    table = pq.read_table(Path(copy) / LABELS_FILE)
    status = table.column("status").to_numpy(zero_copy_only=False).copy()
    status[[1, 5, 6]] = "failed"  # as the build records rows it could not compute: eeg_10s failed there
    for column in ("status", "status_eeg_10s"):
        table = table.set_column(table.column_names.index(column), column, [status.tolist()])
    labels_failed = table.column("status_labels").to_numpy(zero_copy_only=False).copy()
    labels_failed[9] = "failed"  # a train.csv line without votes
    write_labels(copy, table.set_column(table.column_names.index("status_labels"), "status_labels", [labels_failed.tolist()]))

    reader = StoreReader(copy, ["eeg_10s"], threads=2)
    rows = reader.select(Selection(only_ok=True))
    np.testing.assert_array_equal(rows, np.flatnonzero((status == "ok") & (labels_failed == "ok")))
    assert not np.isin([1, 5, 6, 9], epoch_rows(reader, rows)).any()
    np.testing.assert_array_equal(reader.select(Selection(only_ok=False)), np.arange(reader.n_rows))
    # a reader of other arrays keeps the rows that failed only in eeg_10s
    other = StoreReader(copy, ["kaggle"], threads=2).select(Selection(only_ok=True))
    assert np.isin([1, 5, 6], other).all() and 9 not in other


def test_batch_rows_match_labels_and_a_batch_carries_no_labels(train_store):
    """A run's targets and votes are its plan's, looked up by row (tests/test_row_labels.py)."""
    reader = StoreReader(train_store, ["eeg_10s"], threads=2)
    table = labels(train_store)
    for batch in reader.batches(reader.select(Selection()), 6, SamplerState(seed=2)):
        rows = batch["row"].numpy()
        np.testing.assert_array_equal(table["row"][rows], rows)
        assert set(batch) == {"eeg_10s", "row"} and batch["row"].dtype == torch.int64


# --- batch contents against the store --------------------------------------------------------------------


def test_composed_image_is_the_stored_arrays_side_by_side(train_store):
    reader = StoreReader(train_store, SPECTROGRAMS, threads=2)
    group = zarr.open_group(train_store, mode="r")
    batch = next(iter(reader.batches(reader.select(Selection()), 6, SamplerState(seed=5))))
    rows = batch["row"].numpy()
    stored = {name: group[name].get_orthogonal_selection((rows,)) for name in SPECTROGRAMS}
    for name in SPECTROGRAMS:
        assert batch[name].dtype == torch.float16
        np.testing.assert_array_equal(batch[name].numpy(), stored[name])

    image = compose_image(batch, SPECTROGRAMS, {name: reader.descriptions[name].normalise for name in SPECTROGRAMS}).numpy()
    eeg10, eeg30, kaggle = (stored[name].astype(np.float32) for name in SPECTROGRAMS)
    n, chains, freqs, _ = eeg10.shape
    assert image.shape == (n, 1, chains * freqs, eeg10.shape[-1] + eeg30.shape[-1] + kaggle.shape[-1])
    w10, w30 = eeg10.shape[-1], eeg30.shape[-1]
    for c in range(chains):  # chain c on image rows c*F .. (c+1)*F - 1, in every part
        lines = slice(c * freqs, (c + 1) * freqs)
        np.testing.assert_array_equal(image[:, 0, lines, :w10], eeg10[:, c])
        np.testing.assert_array_equal(image[:, 0, lines, w10 : w10 + w30], eeg30[:, c])
    mean = kaggle.mean(axis=(1, 2, 3), keepdims=True)
    std = kaggle.std(axis=(1, 2, 3), keepdims=True)
    expected = ((kaggle - mean) / (std + 1e-6)).reshape(n, chains * freqs, -1)
    np.testing.assert_allclose(image[:, 0, :, w10 + w30 :], expected, atol=1e-4)


def stored_window_start(raw: np.ndarray, window: np.ndarray, around: int, shift: int) -> int:
    """The start s (|s - around| <= shift) with raw[:, s:s + RAW_WINDOW] == window."""
    first, middle = max(0, around - shift), RAW_WINDOW // 2
    # candidates by 32 samples of one signal at the window's middle (recorded, not padding), then all of it
    probes = np.lib.stride_tricks.sliding_window_view(raw[0, first + middle : around + shift + middle + 32], 32)
    for start in first + np.flatnonzero((probes == window[0, middle : middle + 32]).all(axis=1)):
        if np.array_equal(raw[:, start : start + RAW_WINDOW], window):
            return int(start)
    raise AssertionError(f"window not found in the stored signal within {shift} samples of {around}")


def test_raw_windows_are_cut_at_the_label_and_jittered_within_the_segment(train_store):
    reader = StoreReader(train_store, ["raw", "eeg_10s"], threads=2)
    raw = zarr.open_group(train_store, mode="r")["raw"][:]
    table = labels(train_store)
    rows = reader.select(Selection())[:20]

    for batch in reader.batches(rows, 8, SamplerState(seed=1)):
        assert batch["raw"].shape[1:] == (raw.shape[0], RAW_WINDOW)
        for row, window in zip(batch["row"].tolist(), batch["raw"].numpy()):
            start = table["raw_start"][row]
            np.testing.assert_array_equal(window, raw[:, start : start + RAW_WINDOW])

    jitter = 3000  # more than the stored margin (10 s = 2000 samples), so some shifts must be clipped
    windows = [
        {int(r): w for b in reader.batches(rows, 8, SamplerState(seed=1, epoch=epoch), raw_jitter=jitter)
         for r, w in zip(b["row"].tolist(), b["raw"].numpy())}
        for epoch in range(2)
    ]
    for row in rows:
        lo, hi, start = table["raw_lo"][row], table["raw_hi"][row], table["raw_start"][row]
        for epoch in range(2):
            begin = stored_window_start(raw, windows[epoch][row], start, jitter)
            assert lo <= begin and begin + RAW_WINDOW <= hi
    assert any(not np.array_equal(windows[0][row], windows[1][row]) for row in rows)


# --- data-parallel shards --------------------------------------------------------------------------------


def test_shards_are_equal_disjoint_and_cover_the_rows(train_store):
    reader = StoreReader(train_store, ["eeg_10s"], threads=2)
    rows = reader.select(Selection())[2:]  # not chunk-aligned
    assert len(rows) % 2 and len(rows) % 3  # so the short ranks must pad
    for world in (2, 3):
        share = reader.min_shard_rows(rows, world)
        assert share == -(-len(rows) // world) >= len(rows) // world
        for epoch in range(3):
            shards = [epoch_rows(reader, rows, seed=0, epoch=epoch, rank=rank, world=world) for rank in range(world)]
            assert [len(s) for s in shards] == [share] * world  # equal: every rank takes the same steps
            distinct = [np.unique(s) for s in shards]
            assert all(len(s) - len(d) <= 1 for s, d in zip(shards, distinct))  # padding repeats one row at most
            together = np.concatenate(distinct)
            assert len(np.unique(together)) == len(together)  # disjoint
            np.testing.assert_array_equal(np.sort(together), rows)  # covering
            steps = share // 5
            assert all(len(list(reader.batches(rows, 5, SamplerState(epoch=epoch, rank=rank, world=world),
                                               drop_last=True))) == steps
                       for rank in range(world))
    assert reader.min_shard_rows(rows, 1) == len(rows)


# --- refusals and errors ---------------------------------------------------------------------------------


def test_a_store_of_an_unknown_layout_version_is_refused(train_store, tmp_path):
    copy = shallow_copy(train_store, tmp_path / "future.zarr")
    group = zarr.open_group(copy, mode="r+")
    group.attrs[ROOT_KEY] = {**group.attrs[ROOT_KEY], "layout_version": 99}
    with pytest.raises(StoreError, match="layout version 99"):
        StoreReader(copy, ["eeg_10s"])


def test_an_unknown_input_name_is_a_clear_error(train_store):
    with pytest.raises(StoreError, match=r"inputs: \['eeg_99s'\] not in .*; it has .*eeg_10s"):
        StoreReader(train_store, ["eeg_10s", "eeg_99s"])


def test_an_error_in_the_reading_threads_reaches_the_consumer(train_store, tmp_path):
    copy = copy_with_own_array(train_store, tmp_path / "damaged.zarr", "eeg_10s")
    first_chunk = sorted(p for p in (Path(copy) / "eeg_10s" / "c").rglob("*") if p.is_file())[0]
    first_chunk.write_bytes(b"not a blosc chunk" * 64)
    reader = StoreReader(copy, ["eeg_10s"], threads=2)
    with pytest.raises(ValueError, match=r"eeg_10s: chunk 0 is damaged: chunk fails its checksum"):
        for _ in reader.batches(reader.select(Selection()), 4):
            pass


@pytest.mark.parametrize("name, codec", [("eeg_10s", "blosc"), ("kaggle", "zstd")])
def test_a_truncated_chunk_is_a_clear_error_naming_array_chunk_and_file(train_store, tmp_path, name, codec):
    group = zarr.open_group(train_store, mode="r")
    assert type(group[name].metadata.codecs[1]).__name__.lower().startswith(codec)
    copy = copy_with_own_array(train_store, tmp_path / "truncated.zarr", name)
    damaged = Path(copy) / name / "c" / "2" / "0" / "0" / "0"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    reader = StoreReader(copy, [name], threads=2)
    rows = reader.select(Selection(only_ok=False))
    chunk_rows = reader.layout.chunk_rows
    with pytest.raises(ChunkError, match=rf"{name}: chunk 2 is damaged: .* file {re.escape(copy)}/{name}/c/2/0/0/0"):
        for _ in reader.batches(rows, 4):
            pass
    # the other chunks still read as before
    intact = rows[(rows // chunk_rows) != 2]
    batch = next(iter(reader.batches(intact, 4)))
    np.testing.assert_array_equal(batch[name].numpy(), group[name].get_orthogonal_selection((batch["row"].numpy(),)))


def test_a_resumed_epoch_yields_the_rest_of_the_same_batches(train_store):
    reader = StoreReader(train_store, ["eeg_10s", "raw"], threads=2)
    rows = reader.select(Selection())
    state, options = SamplerState(seed=4, epoch=1, rank=1, world=2, fold=2, stage=1), dict(buffer_chunks=2, raw_jitter=500)
    full = list(reader.batches(rows, 6, state, **options))
    tail = list(reader.batches(rows, 6, dataclasses.replace(state, batch=3), **options))
    assert len(tail) == len(full) - 3
    for resumed, original in zip(tail, full[3:]):
        for key in ("row", "eeg_10s", "raw"):
            np.testing.assert_array_equal(resumed[key].numpy(), original[key].numpy())


def test_rows_outside_the_store_are_refused_before_reading(train_store):
    reader = StoreReader(train_store, ["eeg_10s"], threads=2)
    with pytest.raises(IndexError, match=rf"row {reader.n_rows} is outside the store's rows 0..{reader.n_rows - 1}"):
        reader.batches(np.array([0, reader.n_rows]), 4)


# --- the chunk decoder: fast path equals zarr, zarr for any other codec -----------------------------------


@pytest.mark.parametrize("codec, family", [(BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), "blosc"),
                                           (None, "bytes"), (ZstdCodec(level=3), "zstd"),
                                           (GzipCodec(level=1), None)])
def test_chunk_decoder_reads_what_zarr_reads(tmp_path, codec, family):
    url = str(tmp_path / "a.zarr")
    array = zarr.create_array(url, shape=(13, 2, 5), chunks=(4, 2, 5), dtype="float16",
                              fill_value=-1.0, compressors=codec)
    values = np.random.default_rng(0).normal(size=(13, 2, 5)).astype(np.float16)
    array[:8] = values[:8]  # chunks 2 and 3 are never written: they read as the fill value
    decoder = ChunkDecoder(array, 4, url)
    assert (decoder.codec and decoder.codec.family) == family and decoder.recycles is (family is not None)
    spare = [np.zeros((4, 2, 5), np.float16)]
    for chunk in range(4):
        expected = array[chunk * 4 : (chunk + 1) * 4]
        decoded = decoder(chunk, spare)
        assert decoded.shape[1:] == (2, 5) and len(decoded) >= len(expected)
        np.testing.assert_array_equal(decoded[: len(expected)], expected)
    np.testing.assert_array_equal(decoder(1), values[4:8])
    np.testing.assert_array_equal(decoder(2), np.full((4, 2, 5), -1.0, np.float16))


# --- the benchmark ----------------------------------------------------------------------------------------


def test_run_bench_reports_every_figure(train_store):
    torch.set_num_threads(1)
    result = run_bench(train_store, SPECTROGRAMS, batch_size=4, batches=2, device="cpu", augment=True, threads=2)
    for key in ("samples_per_s", "samples_per_s_composed", "samples_per_s_augmented"):
        assert result[key] > 0
    assert set(result["seconds"]) == {"read_wait", "to_device", "compose", "augment"}
    assert all(seconds >= 0 for seconds in result["seconds"].values()) and result["seconds"]["augment"] > 0
    assert result["batch_size"] == 4 and result["batches"] == 2 and result["device"] == "cpu"
    reader = StoreReader(train_store, SPECTROGRAMS)
    height = 4 * reader.arrays["eeg_10s"].shape[2]
    assert result["image_shape"] == [1, height, sum(reader.arrays[n].shape[-1] for n in SPECTROGRAMS)]
    assert result["bytes_per_sample"] == sum(2 * int(np.prod(reader.arrays[n].shape[1:])) for n in SPECTROGRAMS)
    no_augment = run_bench(train_store, ["eeg_10s"], batch_size=4, batches=1, device="cpu", threads=1)
    assert no_augment["samples_per_s_augmented"] is None


def test_a_codec_added_to_the_declaration_is_decoded_with_no_other_change(tmp_path):
    """The how-to for a new codec: one `Codec` entry in hms_prep.store.codecs.CODECS (here gzip, until now
    read through zarr's `array[...]`) and the reader decodes it on its fast path."""
    url = str(tmp_path / "a.zarr")
    array = zarr.create_array(url, shape=(8, 2, 5), chunks=(4, 2, 5), dtype="float16", compressors=GzipCodec(level=1))
    array[:] = np.random.default_rng(2).normal(size=(8, 2, 5)).astype(np.float16)
    assert ChunkDecoder(array, 4, url).codec is None
    CODECS.register("gzip", Codec("gzip", "gzip", lambda: GzipCodec(level=1),
                                  lambda encoded, out: numcodecs.GZip().decode(encoded, out=out)))
    try:
        decoder = ChunkDecoder(array, 4, url)
        assert decoder.codec.name == "gzip" and decoder.recycles
        np.testing.assert_array_equal(decoder(1, [np.zeros((4, 2, 5), np.float16)]), array[4:8])
    finally:
        CODECS.unregister("gzip")


@pytest.mark.parametrize("codec", [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), ZstdCodec(level=3), None])
def test_chunk_decoder_refuses_a_chunk_cut_short_by_any_amount(tmp_path, codec):
    url = str(tmp_path / "a.zarr")
    array = zarr.create_array(url, shape=(8, 3, 500), chunks=(4, 3, 500), dtype="float16", compressors=codec)
    array[:] = np.random.default_rng(1).normal(size=(8, 3, 500)).astype(np.float16)
    stored = tmp_path / "a.zarr" / "c" / "1" / "0" / "0"
    whole = stored.read_bytes()
    for keep in (len(whole) // 2, len(whole) - 1):  # one byte short: Blosc alone would read past the end
        stored.write_bytes(whole[:keep])
        with pytest.raises(ChunkError, match=rf"chunk 1 is damaged: .*file {re.escape(url)}/c/1/0/0"):
            ChunkDecoder(array, 4, url)(1)


def test_an_uncompressed_chunk_read_in_place_is_still_checked(tmp_path):
    """Uncompressed chunks of local stores are read straight into the decode buffer (no copy); the
    checksum and the size are checked all the same."""
    url = str(tmp_path / "a.zarr")
    array = zarr.create_array(url, shape=(8, 3, 50), chunks=(4, 3, 50), dtype="float16", compressors=Crc32cCodec())
    array[:] = np.random.default_rng(3).normal(size=(8, 3, 50)).astype(np.float16)
    decoder = ChunkDecoder(array, 4, url)
    assert decoder.codec.family == "bytes" and decoder.codec.checksum and decoder.source.local
    np.testing.assert_array_equal(decoder(1, [np.zeros((4, 3, 50), np.float16)]), array[4:8])
    stored = tmp_path / "a.zarr" / "c" / "1" / "0" / "0"
    whole = stored.read_bytes()
    for damaged, reason in ((whole[:10] + bytes([whole[10] ^ 1]) + whole[11:], "fails its checksum"),
                            (whole + b"\0", f"holds {len(whole) + 1} bytes"),
                            (whole[:-1], f"holds {len(whole) - 1} bytes")):
        stored.write_bytes(damaged)
        with pytest.raises(ChunkError, match=rf"chunk 1 is damaged: .*{reason}.*file {re.escape(url)}/c/1/0/0"):
            decoder(1)
    stored.unlink()
    with pytest.raises(ChunkError, match="is missing"):
        decoder(1)
