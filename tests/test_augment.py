"""Batched augmentations: each function on constructed inputs, then the Augmenter's per-sample draws."""

import math
from collections import Counter

import pytest
import scipy.stats
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hms_train.image.compose import compose, random_crop
from hms_train.image.layout import LayoutConfig, PartConfig, PartSource, resolve_layout
from hms_train.image.augment import AugmentConfig, Augmenter
from hms_train.image.transforms import (affine_theta, brightness_contrast, hemisphere_swap, mixup,
                                        sample_symmetric_beta, shift_scale_rotate, stripe_mask, time_flip,
                                        vertical_flip, xy_mask)

F_BINS = 5  # frequency rows per chain block in the small test images


def chain_image(batch: int = 2, width: int = 6) -> torch.Tensor:
    """(B, 1, 4*F, W) whose value says sample, chain block, row in block and column."""
    b = torch.arange(batch).reshape(-1, 1, 1, 1, 1)
    chain = torch.arange(4).reshape(1, 1, -1, 1, 1)
    row = torch.arange(F_BINS).reshape(1, 1, 1, -1, 1)
    col = torch.arange(width).reshape(1, 1, 1, 1, -1)
    return (b * 1000 + chain * 100 + row * 10 + col).float().reshape(batch, 1, 4 * F_BINS, width)


def soft_targets(batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.softmax(torch.randn(batch, 6, generator=generator), dim=1)


def only(**enabled) -> AugmentConfig:
    """A config with every augmentation off except the given settings (the flat keys of earlier configs,
    which AugmentConfig still reads: hflip_p, mixup_p, ...)."""
    return AugmentConfig.from_values({**AugmentConfig.off().to_dict(), **enabled})


def test_hemisphere_swap_moves_chain_blocks_and_keeps_targets():
    images = chain_image()
    swapped = hemisphere_swap(images, torch.tensor([True, False]))
    blocks, out = images.reshape(2, 1, 4, F_BINS, -1), swapped.reshape(2, 1, 4, F_BINS, -1)
    for a, b in [(0, 1), (1, 0), (2, 3), (3, 2)]:
        assert torch.equal(out[0, :, a], blocks[0, :, b])
    assert torch.equal(swapped[1], images[1])

    targets = soft_targets(2, torch.Generator().manual_seed(0))
    out_images, out_targets = Augmenter(only(hemisphere_swap_p=1.0))(images, targets)
    assert torch.equal(out_images, hemisphere_swap(images, torch.tensor([True, True])))
    assert torch.equal(out_targets, targets)


def test_time_and_vertical_flips_reverse_columns_and_rows_of_chosen_samples():
    images = chain_image()
    mask = torch.tensor([False, True])
    flipped = time_flip(images, mask)
    assert torch.equal(flipped[0], images[0])
    assert torch.equal(flipped[1, 0, :, 0], images[1, 0, :, -1])
    assert torch.equal(flipped[1, 0], images[1, 0][:, range(5, -1, -1)])
    upside_down = vertical_flip(images, mask)
    assert torch.equal(upside_down[0], images[0])
    assert torch.equal(upside_down[1, 0], images[1, 0][range(19, -1, -1), :])


def test_brightness_contrast_is_a_per_sample_affine_map():
    images = chain_image()
    out = brightness_contrast(images, torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.25]))
    assert torch.equal(out[0], images[0])
    assert torch.equal(out[1], images[1] * 0.5 + 0.25)


def runs(mask_1d: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    lengths, current = [], 0
    for value in mask_1d.tolist() + [False]:
        if value:
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return lengths


def test_single_stripes_zero_one_band_of_the_configured_width_and_nothing_else():
    generator = torch.Generator().manual_seed(1)
    batch, height, width = 16, 40, 60
    columns = stripe_mask(batch, width, (1, 1), (5, 10), generator)
    rows = stripe_mask(batch, height, (1, 1), (5, 10), generator)
    out = xy_mask(torch.ones(batch, 1, height, width), columns, rows)
    for b in range(batch):
        (col_run,) = runs(columns[b])
        (row_run,) = runs(rows[b])
        assert 5 <= col_run <= 10 and 5 <= row_run <= 10
        zero_count = int((out[b] == 0).sum())
        assert zero_count == height * col_run + width * row_run - col_run * row_run
        assert torch.equal(out[b, 0, :, columns[b]], torch.zeros(height, col_run))
        assert torch.equal(out[b, 0, rows[b], :], torch.zeros(row_run, width))
        assert bool((out[b, 0][~rows[b]][:, ~columns[b]] == 1).all())


def test_augmenter_masks_whole_stripes_within_the_configured_counts():
    generator = torch.Generator().manual_seed(2)
    config = only(xy_mask_p=1.0, mask_stripes=(1, 10), mask_width=(5, 10))
    images, _ = Augmenter(config, generator)(torch.ones(32, 1, 400, 812), torch.ones(32, 6) / 6)
    assert set(images.unique().tolist()) == {0.0, 1.0}
    zero = images[:, 0] == 0
    zero_columns, zero_rows = zero.all(dim=1), zero.all(dim=2)
    # every zero pixel lies in a fully masked column or row
    assert torch.equal(zero, zero_columns[:, None, :] | zero_rows[:, :, None])
    for b in range(32):
        for stripes in (runs(zero_columns[b]), runs(zero_rows[b])):
            assert 1 <= len(stripes) <= 10
            assert min(stripes) >= 5 and sum(stripes) <= 10 * 10  # overlapping stripes may merge


def test_mixup_mixes_image_and_label_with_the_same_weight():
    a, b = torch.full((1, 1, 4, 3), 2.0), torch.full((1, 1, 4, 3), -1.0)
    images = torch.cat([a, b])
    targets = torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 0.5, 0.5, 0, 0, 0]])
    lam = torch.tensor([0.25, 1.0])
    mixed_images, mixed_targets = mixup(images, targets, lam, perm=torch.tensor([1, 0]))
    assert torch.allclose(mixed_images[0], 0.25 * a[0] + 0.75 * b[0])
    assert torch.allclose(mixed_targets[0], 0.25 * targets[0] + 0.75 * targets[1])
    assert torch.equal(mixed_images[1], b[0]) and torch.equal(mixed_targets[1], targets[1])
    torch.testing.assert_close(mixed_targets.sum(dim=1), torch.ones(2))


def test_augmenter_mixup_weights_agree_between_images_and_labels():
    generator = torch.Generator().manual_seed(3)
    batch = 64
    # image b is the constant b, so the mixed image's value reveals the weights used
    images = torch.arange(batch, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(batch, 1, 8, 8).clone()
    targets = torch.eye(6)[torch.arange(batch) % 6]
    out_images, out_targets = Augmenter(only(mixup_p=0.5), generator)(images, targets)
    torch.testing.assert_close(out_targets.sum(dim=1), torch.ones(batch))
    changed = (out_images != images).flatten(1).any(dim=1)
    assert 0 < int(changed.sum()) < batch
    own_weight = out_targets[torch.arange(batch), torch.arange(batch) % 6]
    for b in torch.nonzero(~changed).flatten().tolist():
        assert own_weight[b] == 1.0 and torch.equal(out_targets[b], targets[b])


def test_symmetric_beta_draws_follow_the_beta_distribution():
    generator = torch.Generator().manual_seed(4)
    for alpha in (0.5, 2.0):
        draws = sample_symmetric_beta(20_000, alpha, generator).double().numpy()
        assert scipy.stats.kstest(draws, scipy.stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def test_shift_scale_rotate_identity_and_shift():
    images = torch.rand(3, 1, 20, 30, generator=torch.Generator().manual_seed(5))
    zero, one = torch.zeros(3), torch.ones(3)
    identity = affine_theta(zero, one, zero, zero, 20, 30)
    torch.testing.assert_close(shift_scale_rotate(images, identity), images, rtol=0, atol=1e-5)

    shifted = shift_scale_rotate(images, affine_theta(zero, one, torch.full((3,), 3 / 30), zero, 20, 30))
    torch.testing.assert_close(shifted[..., 3:], images[..., :-3], rtol=0, atol=1e-5)  # content moved right
    torch.testing.assert_close(shifted[..., :3], torch.zeros(3, 1, 20, 3), rtol=0, atol=1e-5)

    down = shift_scale_rotate(images, affine_theta(zero, one, zero, torch.full((3,), 2 / 20), 20, 30))
    torch.testing.assert_close(down[..., 2:, :], images[..., :-2, :], rtol=0, atol=1e-5)


def test_rotation_turns_pixels_not_normalised_coordinates():
    half_turn = shift_scale_rotate(
        chain_image(1), affine_theta(torch.tensor([math.pi]), torch.ones(1), torch.zeros(1), torch.zeros(1), 20, 6)
    )
    torch.testing.assert_close(half_turn, chain_image(1).flip(-1).flip(-2), rtol=0, atol=1e-3)
    # on a wide image, a point 4 px right of the centre turns to 4 px above or below it
    impulse = torch.zeros(1, 1, 21, 41)
    impulse[0, 0, 10, 24] = 1.0
    quarter_turn = shift_scale_rotate(
        impulse, affine_theta(torch.tensor([math.pi / 2]), torch.ones(1), torch.zeros(1), torch.zeros(1), 21, 41)
    )
    assert quarter_turn.max() == pytest.approx(1.0, abs=1e-4)
    assert divmod(int(quarter_turn.argmax()), 41) in {(14, 20), (6, 20)}


def test_random_crop_cuts_each_sample_at_its_own_start():
    images = chain_image(batch=3, width=12)
    cropped = random_crop(images, 5, torch.tensor([0, 7, 3]))
    assert cropped.shape == (3, 1, 20, 5)
    for b, start in enumerate([0, 7, 3]):
        assert torch.equal(cropped[b], images[b, ..., start:start + 5])


def chain_parts(batch: int, widths: dict[str, int]) -> dict[str, torch.Tensor]:
    """(B, 4, F, T) parts whose values are chain_image's: part columns are the image's columns."""
    return {name: chain_image(batch, width).reshape(batch, 4, F_BINS, width) for name, width in widths.items()}


def crop_layout(widths: dict[str, int], crops: dict[str, int], image_width: int | None = None,
                train_crop: str = "first", freqs: int = F_BINS):
    """Mel parts side by side; the parts in `crops` cut to that width at a random start in training."""
    parts = tuple(PartConfig(name, width=crops.get(name), train_crop="random" if name in crops else "first")
                  for name in widths)
    config = LayoutConfig.parse(LayoutConfig(parts=parts, width=image_width, train_crop=train_crop))
    return resolve_layout(config, {name: PartSource.image_part((4, freqs, width)) for name, width in widths.items()})


def test_layout_random_crop_gives_requested_width_of_input_slices():
    """The whole image cropped to 12 of its 30 columns at a random start per sample."""
    images = chain_image(batch=8, width=30)
    layout = crop_layout({"eeg": 30}, {}, image_width=12, train_crop="random")
    cropped = compose(layout, chain_parts(8, {"eeg": 30}), train=True, generator=torch.Generator().manual_seed(6))
    assert cropped.shape == (8, 1, 20, 12)
    starts = cropped[:, 0, 0, 0].long() % 100  # the column encoded in the first pixel
    for b in range(8):
        assert torch.equal(cropped[b], images[b, ..., starts[b]:starts[b] + 12])
    assert len(set(starts.tolist())) > 1
    with pytest.raises(ValueError, match="wider than 'eeg'"):
        crop_layout({"eeg": 30}, {"eeg": 31})


def test_layout_crops_only_the_given_part():
    """E.g. the kaggle part (20 columns, at 10..30 of the canvas) cropped to 12, the EEG columns 0..10 kept."""
    images = chain_image(batch=8, width=30)
    parts = {"eeg": chain_parts(8, {"eeg": 30})["eeg"][..., :10], "spec": chain_parts(8, {"eeg": 30})["eeg"][..., 10:]}
    layout = crop_layout({"eeg": 10, "spec": 20}, {"spec": 12})
    cropped = compose(layout, parts, train=True, generator=torch.Generator().manual_seed(6))
    assert cropped.shape == (8, 1, 20, 22)
    assert torch.equal(cropped[..., :10], images[..., :10])
    starts = cropped[:, 0, 0, 10].long() % 100
    assert bool((starts >= 10).all() and (starts <= 18).all())
    for b in range(8):
        assert torch.equal(cropped[b, ..., 10:], images[b, ..., starts[b]:starts[b] + 12])
    evaluation = compose(layout, parts, train=False)
    assert torch.equal(evaluation, images[..., :22])  # evaluation keeps the part's first 12 columns


def test_the_removed_crop_alias_says_how_to_migrate():
    with pytest.raises(ValueError, match=r"augment.random_crop_width was removed: .*\[layout\]"):
        AugmentConfig.from_values({"random_crop_width": 8})
    assert AugmentConfig.from_values({"random_crop_width": None}) == AugmentConfig()  # an old config.json


def test_each_sample_draws_its_own_flip():
    images = torch.rand(64, 1, 8, 10, generator=torch.Generator().manual_seed(7))
    out, _ = Augmenter(only(hflip_p=0.5), torch.Generator().manual_seed(8))(images, torch.ones(64, 6) / 6)
    same = (out == images).flatten(1).all(dim=1)
    flipped = (out == images.flip(-1)).flatten(1).all(dim=1)
    assert bool((same | flipped).all())
    assert 10 < int(flipped.sum()) < 54


def test_evaluation_mode_changes_nothing():
    images = torch.rand(4, 1, 20, 16)
    targets = soft_targets(4, torch.Generator().manual_seed(9))
    augmenter = Augmenter(AugmentConfig(), torch.Generator().manual_seed(9))
    out_images, out_targets = augmenter(images, targets, train=False)
    assert torch.equal(out_images, images) and torch.equal(out_targets, targets)
    off_images, off_targets = Augmenter(AugmentConfig.off())(images, targets)
    assert torch.equal(off_images, images) and torch.equal(off_targets, targets)


def test_full_pipeline_is_deterministic_with_a_seeded_generator():
    parts = {"eeg": torch.randn(16, 4, 10, 64, generator=torch.Generator().manual_seed(10))}
    targets = soft_targets(16, torch.Generator().manual_seed(10))
    layout = crop_layout({"eeg": 64}, {"eeg": 48}, freqs=10)
    config = AugmentConfig()

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return Augmenter(config, generator)(compose(layout, parts, train=True, generator=generator), targets)

    first, again, other = run(11), run(11), run(12)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert first[0].shape == (16, 1, 40, 48) and first[0].dtype == torch.float32
    assert bool(first[0].isfinite().all())
    torch.testing.assert_close(first[1].sum(dim=1), torch.ones(16))


class OperatorCounter(TorchDispatchMode):
    """Counts the tensor operators run inside it."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func)] += 1
        return func(*args, **(kwargs or {}))


def test_no_python_loop_over_the_batch():
    """The same operators run, the same number of times, for a batch of 2 and a batch of 32: composing
    with per-part and whole-image random crops, then every augmentation."""
    config = AugmentConfig.from_values({"vertical_flip": {"p": 0.5}})
    layout = crop_layout({"a": 30, "b": 30}, {"b": 20}, image_width=40, train_crop="random")

    def operators(batch):
        parts = chain_parts(batch, {"a": 30, "b": 30})
        targets = torch.ones(batch, 6) / 6
        generator = torch.Generator().manual_seed(13)
        with OperatorCounter() as counter:
            Augmenter(config, generator)(compose(layout, parts, train=True, generator=generator), targets)
        return counter.calls

    small, large = operators(2), operators(32)
    assert small == large and sum(small.values()) > 0


def test_autocontrast_is_torchvisions_on_each_chosen_chain_sub_image():
    """David's "contrast" (D/utils.py: RandomApply([RandomChoice([v2.RandomAutocontrast()])], p=0.5) on each
    chain sub-image): each chosen block equals torchvision's autocontrast of that block alone, the others
    and the padding (-1) are untouched; a constant block is only clamped, as torchvision does."""
    import torchvision.transforms.v2.functional as TF

    from hms_train.image.transforms import block_autocontrast

    blocks = torch.full((8, 10), -1, dtype=torch.int64)
    blocks[:, :6] = torch.arange(4).repeat_interleave(2)[:, None]  # part 0: 4 chains of 2 rows, 6 columns
    blocks[:4, 6:] = 4 + torch.arange(4)[:, None]  # part 1: 4 chains of 1 row, 4 columns; rows 4-7 padding
    images = torch.randn(3, 1, 8, 10, generator=torch.Generator().manual_seed(0)) * 3
    images[1, 0, 0:2, :6] = 0.5  # a constant block
    chosen = torch.rand(3, 8, generator=torch.Generator().manual_seed(1)) < 0.5
    chosen[1, 0] = True
    out = block_autocontrast(images, blocks, chosen)
    for b in range(3):
        for k in range(8):
            where = blocks == k
            rows, cols = where.nonzero()[:, 0], where.nonzero()[:, 1]
            block = images[b, :, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            expected = TF.autocontrast(block) if chosen[b, k] else block
            torch.testing.assert_close(out[b, :, rows.min():rows.max() + 1, cols.min():cols.max() + 1], expected)
    assert torch.equal(out[:, :, 4:, 6:], images[:, :, 4:, 6:])
    assert chosen.any() and (~chosen).any()
