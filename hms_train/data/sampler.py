"""Which rows each batch holds, for one epoch of one data-parallel rank: a pure plan, no I/O.

Which rows an epoch uses at all is decided before the plan: `one_row_per_group` (a random row of each
recording per epoch, HMS.md section 5) and `most_voted_row_per_group` (a fixed one, for validation).

Chunk-aware shuffle: an epoch visits the chunks holding selected rows in a fresh random order and
draws its batches at random from the rows of `buffer_chunks` chunks at a time (a partial batch's rows
wait for the next chunks), so the reader decodes each chunk once and never holds more than a buffer's
worth. Every selected row comes exactly once per epoch; the plan is a function of the `SamplerState`
(seed, fold, stage, epoch, rank, world) alone.

Equal shares for data-parallel ranks: the epoch's rows, chunk after chunk in the epoch's order, are cut
into `world` contiguous pieces whose sizes differ by at most one row, and a short piece repeats its
last row. Every rank therefore yields `rows_per_rank` rows, the pieces are disjoint and together hold
every row; a chunk on a boundary between two pieces is decoded by both ranks (world - 1 extra chunk
reads per epoch in all), which is what keeps the shares equal whatever the chunks' sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


# The sampler's identity of a fold and a stage, kept from the loop of before so that runs draw as they did:
FOLD_SEED_STRIDE = 7919  # a prime: the folds' seeds never meet for seeds below it
STAGE_EPOCH_STRIDE = 100  # beyond any stage's epochs: the stages' epochs never meet


@dataclass(frozen=True)
class SamplerState:
    """Where one rank of a run stands, and in what world: the run's seed, the fold and the stage (by index)
    and the epoch inside it, this process's rank among `world`, and `batch` batches of the epoch consumed.
    Enough to reproduce one rank's batches or resume them; a checkpoint saves it, and a resumed run is
    compared with it (hms_train/run/checkpoint.py: the world must be the same)."""

    seed: int = 0
    epoch: int = 0
    rank: int = 0
    world: int = 1
    batch: int = 0  # batches of this epoch already consumed
    fold: int = field(default=0, kw_only=True)
    stage: int = field(default=0, kw_only=True)

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} of world {self.world}: need world >= 1 and 0 <= rank < world")
        if self.batch < 0:
            raise ValueError(f"batch {self.batch}: the number of consumed batches cannot be negative")

    @property
    def plan_key(self) -> tuple[int, int]:
        """The (seed, epoch) an epoch's order is drawn from: each fold and each stage its own."""
        return self.seed + FOLD_SEED_STRIDE * self.fold, self.epoch + STAGE_EPOCH_STRIDE * self.stage

    @property
    def augment_seed(self) -> int:
        """The seed of this rank's augmentation generator in the fold: rank 0 keeps `seed * 1000 + fold`
        (what every rank used before, so one-process runs draw as they did), every other rank its own, so
        that data-parallel ranks draw different augmentation parameters for their samples."""
        fold_seed = self.seed * 1000 + self.fold
        if self.rank == 0:
            return fold_seed
        return int(np.random.SeedSequence([fold_seed, self.rank]).generate_state(1)[0])


@dataclass(frozen=True, eq=False)
class ChunkVisit:
    """One chunk to decode, and this rank's rows of it (ascending; a padding row may come twice)."""

    chunk: int
    rows: np.ndarray


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """One rank's epoch from `state.batch` on: the chunks to decode in reading order, each batch's rows,
    and after each batch the chunks no later batch needs (their decoded buffers can be reused)."""

    state: SamplerState
    visits: tuple[ChunkVisit, ...]
    batches: tuple[np.ndarray, ...]
    finished: tuple[tuple[int, ...], ...] = field(default=())


@dataclass(frozen=True)
class ChunkSampler:
    """The plan of an epoch's batches over rows stored `chunk_rows` to a chunk."""

    chunk_rows: int
    batch_size: int
    shuffle: bool = True
    drop_last: bool = False
    buffer_chunks: int = 8

    def __post_init__(self):
        for name in ("chunk_rows", "batch_size", "buffer_chunks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def plan(self, rows: np.ndarray, state: SamplerState = SamplerState()) -> EpochPlan:
        """The batches of `rows` (distinct row indices) for `state`'s rank and epoch, from `state.batch` on."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(np.unique(rows)) != len(rows):
            raise ValueError(f"rows must be distinct; {len(rows) - len(np.unique(rows))} of {len(rows)} repeat")
        rng = np.random.default_rng(list(state.plan_key))
        sequence = self._epoch_sequence(rows, rng)
        share = rank_share(sequence, state.rank, state.world)
        visits = _visits(share, self.chunk_rows)
        batches = self._batches(visits, np.random.default_rng([*state.plan_key, state.rank]))
        return _from_batch(EpochPlan(state, visits, batches), state.batch, self.chunk_rows)

    def _epoch_sequence(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The rows, chunk after chunk in the epoch's (shuffled) chunk order, ascending within a chunk."""
        chunks = rows // self.chunk_rows
        order = np.unique(chunks)
        if self.shuffle:
            order = rng.permutation(order)
        place = np.empty(int(order.max()) + 1 if len(order) else 0, dtype=np.int64)
        place[order] = np.arange(len(order))
        return rows[np.lexsort((rows, place[chunks]))]

    def _batches(self, visits: tuple[ChunkVisit, ...], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """Rows shuffled within groups of `buffer_chunks` chunks; whole batches from each group, its
        partial tail carried into the next group (the last group emits everything)."""
        batches = []
        carry = np.empty(0, dtype=np.int64)
        for start in range(0, len(visits), self.buffer_chunks):
            group = visits[start : start + self.buffer_chunks]
            pool = np.concatenate([carry, *(visit.rows for visit in group)])
            if self.shuffle:
                pool = pool[rng.permutation(len(pool))]
            last = start + self.buffer_chunks >= len(visits)
            emit = len(pool) if last else (len(pool) // self.batch_size) * self.batch_size
            batches += [pool[i : i + self.batch_size] for i in range(0, emit, self.batch_size)]
            carry = pool[emit:]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return tuple(batches)


def one_row_per_group(rows: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random row of `rows` for each distinct `groups[row]` (e.g. eeg_id), ascending. Every row of a
    group is equally likely; the choice is a function of `rng`'s state alone (seed it by seed and epoch)."""
    rows = np.asarray(rows, dtype=np.int64)
    shuffled = rows[rng.permutation(len(rows))]
    _, first = np.unique(groups[shuffled], return_index=True)
    return np.sort(shuffled[first])


def most_voted_row_per_group(rows: np.ndarray, groups: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """For each distinct `groups[row]`, the row of `rows` with the most `votes` (ties: the lowest row), ascending."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.lexsort((rows, -votes[rows], groups[rows]))  # by group, then most votes, then row
    _, first = np.unique(groups[rows][order], return_index=True)
    return np.sort(rows[order][first])


def rows_per_rank(n_rows: int, world: int) -> int:
    """Rows every one of `world` ranks yields per epoch from `n_rows` rows: ceil(n_rows / world)."""
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    return -(-n_rows // world)


def rank_share(sequence: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank `rank`'s contiguous piece of the epoch's row sequence, padded to `rows_per_rank` rows by
    repeating its last row (pieces differ by at most one row, so at most one repeat)."""
    n = len(sequence)
    if world == 1:
        return sequence
    if n < world:
        raise ValueError(f"{n} rows cannot be shared by {world} ranks: every rank needs at least one row")
    piece = sequence[rank * n // world : (rank + 1) * n // world]
    pad = rows_per_rank(n, world) - len(piece)
    return np.concatenate([piece, piece[len(piece) - pad :]])


def _visits(share: np.ndarray, chunk_rows: int) -> tuple[ChunkVisit, ...]:
    """The share's runs of rows of one chunk, in order (a padding row joins its chunk's visit)."""
    chunks = share // chunk_rows
    starts = np.flatnonzero(np.r_[True, chunks[1:] != chunks[:-1]]) if len(share) else np.empty(0, np.int64)
    ends = np.r_[starts[1:], len(share)]
    return tuple(ChunkVisit(int(chunks[s]), np.sort(share[s:e])) for s, e in zip(starts, ends))


def _from_batch(plan: EpochPlan, first: int, chunk_rows: int) -> EpochPlan:
    """The plan's batches from `first` on, the chunks they need (in reading order), and when each
    chunk is used for the last time."""
    batches = plan.batches[first:]
    last_use = {}
    for index, batch in enumerate(batches):
        for chunk in np.unique(batch // chunk_rows).tolist():
            last_use[chunk] = index
    finished = [[] for _ in batches]
    for chunk, index in last_use.items():
        finished[index].append(chunk)
    visits = tuple(visit for visit in plan.visits if visit.chunk in last_use)
    return replace(plan, visits=visits, batches=batches, finished=tuple(tuple(f) for f in finished))
