"""The sampler's plan of an epoch, without a store: every row once, reproducible, a new order each epoch,
chunk-aware, equal disjoint shares for data-parallel ranks, and resumable."""

import numpy as np
import pytest

from hms_train.data.sampler import ChunkSampler, SamplerState, rows_per_rank

CHUNK_ROWS = 8
ROWS = np.setdiff1d(np.arange(203), [0, 1, 17, 40, 41, 42, 99, 150])  # ragged chunks, a partial last one


def plan_rows(sampler: ChunkSampler, rows=ROWS, **state) -> np.ndarray:
    """The rows of one epoch's plan, in batch order."""
    batches = sampler.plan(rows, SamplerState(**state)).batches
    return np.concatenate(batches) if batches else np.empty(0, np.int64)


@pytest.mark.parametrize("batch_size, buffer_chunks", [(5, 1), (7, 3), (32, 8), (500, 2)])
def test_every_row_once_per_epoch_in_a_reproducible_new_order(batch_size, buffer_chunks):
    sampler = ChunkSampler(CHUNK_ROWS, batch_size, buffer_chunks=buffer_chunks)
    orders = [plan_rows(sampler, seed=3, epoch=epoch) for epoch in range(3)]
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), ROWS)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    np.testing.assert_array_equal(plan_rows(sampler, seed=3, epoch=1), orders[1])
    assert not np.array_equal(plan_rows(sampler, seed=4, epoch=1), orders[1])
    batches = sampler.plan(ROWS, SamplerState(seed=3)).batches
    assert all(len(b) == batch_size for b in batches[:-1]) and 0 < len(batches[-1]) <= batch_size


def test_chunks_are_read_once_in_a_new_order_and_batches_draw_from_the_buffer():
    sampler = ChunkSampler(CHUNK_ROWS, 6, buffer_chunks=3)
    firsts = set()
    for epoch in range(4):
        plan = sampler.plan(ROWS, SamplerState(seed=1, epoch=epoch))
        chunks = [visit.chunk for visit in plan.visits]
        assert sorted(chunks) == np.unique(ROWS // CHUNK_ROWS).tolist()  # each chunk once
        for visit in plan.visits:
            np.testing.assert_array_equal(visit.rows, ROWS[ROWS // CHUNK_ROWS == visit.chunk])
        firsts.add(chunks[0])
        # the first batch comes from the first buffer of chunks only; every chunk is released once
        assert set((plan.batches[0] // CHUNK_ROWS).tolist()) <= set(chunks[:3])
        released = [chunk for finished in plan.finished for chunk in finished]
        assert sorted(released) == sorted(chunks)
        for index, finished in enumerate(plan.finished):  # released after its last batch, never needed again
            later = np.concatenate(plan.batches[index + 1 :] or [np.empty(0, np.int64)]) // CHUNK_ROWS
            assert not set(finished) & set(later.tolist())
            assert set(finished) <= set((plan.batches[index] // CHUNK_ROWS).tolist())
    assert len(firsts) > 1


def test_unshuffled_plans_are_ascending_and_drop_last_keeps_whole_batches():
    np.testing.assert_array_equal(plan_rows(ChunkSampler(CHUNK_ROWS, 7, shuffle=False, buffer_chunks=2)), ROWS)
    batches = ChunkSampler(CHUNK_ROWS, 7, drop_last=True).plan(ROWS).batches
    assert [len(b) for b in batches] == [7] * (len(ROWS) // 7)
    assert ChunkSampler(CHUNK_ROWS, 7).plan(np.empty(0, np.int64)).batches == ()


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_get_equal_disjoint_shares_that_cover_every_row(world):
    sampler = ChunkSampler(CHUNK_ROWS, 5, buffer_chunks=2)
    share = rows_per_rank(len(ROWS), world)
    assert share == -(-len(ROWS) // world)
    for epoch in range(3):
        shards = [plan_rows(sampler, seed=9, epoch=epoch, rank=rank, world=world) for rank in range(world)]
        assert [len(s) for s in shards] == [share] * world
        distinct = [np.unique(s) for s in shards]
        assert all(len(s) - len(d) <= 1 for s, d in zip(shards, distinct))  # a short rank repeats one row
        together = np.concatenate(distinct)
        assert len(np.unique(together)) == len(together)
        np.testing.assert_array_equal(np.sort(together), ROWS)
        # each rank reads its own chunks; only chunks on a boundary between two shares are read twice
        reads = [visit.chunk for rank in range(world)
                 for visit in sampler.plan(ROWS, SamplerState(9, epoch, rank, world)).visits]
        assert len(reads) - len(set(reads)) <= world - 1
    dropped = ChunkSampler(CHUNK_ROWS, 5, drop_last=True)
    assert {len(dropped.plan(ROWS, SamplerState(rank=r, world=world)).batches) for r in range(world)} == {share // 5}


@pytest.mark.parametrize("world, rank", [(1, 0), (3, 1)])
def test_a_resumed_plan_is_the_tail_of_the_full_plan(world, rank):
    sampler = ChunkSampler(CHUNK_ROWS, 6, buffer_chunks=2)
    full = sampler.plan(ROWS, SamplerState(5, 2, rank, world))
    for start in (0, 1, len(full.batches) // 2, len(full.batches) - 1, len(full.batches)):
        tail = sampler.plan(ROWS, SamplerState(5, 2, rank, world, batch=start))
        assert len(tail.batches) == len(full.batches) - start
        for resumed, original in zip(tail.batches, full.batches[start:]):
            np.testing.assert_array_equal(resumed, original)
        needed = {int(c) for b in tail.batches for c in b // CHUNK_ROWS}
        assert [v.chunk for v in tail.visits] == [v.chunk for v in full.visits if v.chunk in needed]


def test_bad_arguments_are_refused_with_the_value():
    with pytest.raises(ValueError, match="rank 2 of world 2"):
        SamplerState(rank=2, world=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        ChunkSampler(CHUNK_ROWS, 0)
    with pytest.raises(ValueError, match="rows must be distinct; 1 of 3 repeat"):
        ChunkSampler(CHUNK_ROWS, 4).plan(np.array([3, 4, 3]))
    with pytest.raises(ValueError, match="2 rows cannot be shared by 3 ranks"):
        ChunkSampler(CHUNK_ROWS, 4).plan(np.array([3, 4]), SamplerState(world=3))
