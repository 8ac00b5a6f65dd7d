"""A run state that knows its world (hms_train/data/sampler.py SamplerState, hms_train/run/checkpoint.py):
the sampler's identity of a fold and stage, per-rank augmentation generators that differ between ranks
and come back per rank on resume, and a checkpoint that refuses another number of processes."""

import dataclasses

import numpy as np
import pytest
import torch

from hms_train.data.sampler import ChunkSampler, SamplerState
from hms_train.image.augment import AugmentConfig, Augmenter
from hms_train.run.checkpoint import Position, TrainingState, check_world
from hms_train.run.config import TrainConfig
from hms_train.run.parts import training_parts

ROWS = np.arange(64)


def test_the_state_holds_the_folds_and_stages_identity():
    # the values the loop used before (seed + 7919 * fold, epoch + 100 * stage): runs draw as they did
    assert SamplerState(seed=3, epoch=2, fold=1, stage=1).plan_key == (3 + 7919, 2 + 100)
    assert SamplerState(seed=3, fold=2).augment_seed == 3002  # rank 0: seed * 1000 + fold, as before
    sampler = ChunkSampler(8, 4)
    orders = {(fold, stage): np.concatenate(sampler.plan(ROWS, SamplerState(5, fold=fold, stage=stage)).batches)
              for fold in (0, 1) for stage in (0, 1)}
    assert len({order.tobytes() for order in orders.values()}) == 4, "each fold and stage its own order"


def rank_augmenter(rank: int, world: int = 2) -> Augmenter:
    seed = SamplerState(seed=7, rank=rank, world=world, fold=1).augment_seed
    config = AugmentConfig.from_values({"brightness_contrast": {"p": 1.0}, "xy_mask": {"p": 1.0}})
    config = AugmentConfig({**AugmentConfig.off().steps, **config.steps})
    return Augmenter(config, torch.Generator().manual_seed(seed))


def test_two_ranks_draw_different_augmentations():
    images, targets = torch.ones(4, 1, 16, 32), torch.full((4, 6), 1 / 6)
    first, second, again = (rank_augmenter(rank)(images, targets)[0] for rank in (0, 1, 1))
    assert not torch.equal(first, second), "ranks 0 and 1 drew the same parameters"
    assert torch.equal(second, again), "a rank's draws are a function of its state"


def test_each_rank_resumes_its_own_generator(tmp_path):
    """Every rank's generator state is saved (rank 0 writes them all); a resumed rank 1 draws what it
    would have drawn uninterrupted, not rank 0's continuation."""
    config = TrainConfig(inputs=["eeg_10s"], ema_decay=0.0)
    world, fold = 2, 1
    model = torch.nn.Linear(3, 6)
    parts = training_parts(config, model, 1e-3, 1, 10)
    generators = [torch.Generator().manual_seed(SamplerState(7, rank=r, world=world, fold=fold).augment_seed)
                  for r in range(world)]
    for generator in generators:
        torch.rand(5, generator=generator)  # some steps before the checkpoint
    state = TrainingState(model, parts.optimizer, parts.scheduler, None, generators[0],
                          SamplerState(7, rank=0, world=world, fold=fold))
    state.position = Position(fold, "stage1", 0, epoch=0, batch=3, step=3)
    saved = state.state_dict([g.get_state() for g in generators])
    assert saved["sampler"] == {"seed": 7, "epoch": 0, "rank": 0, "world": 2, "batch": 3, "fold": 1, "stage": 0}
    uninterrupted = [torch.rand(5, generator=g) for g in generators]

    for rank in range(world):
        fresh = torch.Generator().manual_seed(SamplerState(7, rank=rank, world=world, fold=fold).augment_seed)
        resumed = TrainingState(model, parts.optimizer, parts.scheduler, None, fresh,
                                SamplerState(7, rank=rank, world=world, fold=fold))
        resumed.load_state_dict(saved)
        assert torch.equal(torch.rand(5, generator=fresh), uninterrupted[rank])


def test_another_number_of_processes_is_refused_in_one_line(tmp_path):
    saved = {"sampler": dataclasses.asdict(SamplerState(world=2, rank=0))}
    with pytest.raises(ValueError) as caught:
        check_world(saved, 1, tmp_path / "fold0_last.pt")
    assert str(caught.value) == (f"{tmp_path / 'fold0_last.pt'}: written by a run of 2 process(es), resumed with 1; "
                                 "resume it with 2 (torchrun --nproc-per-node 2, or no torchrun for 1)")
    check_world(saved, 2, tmp_path / "fold0_last.pt")
    check_world({}, 1, tmp_path / "fold0_last.pt")  # written before the state was saved: one process
