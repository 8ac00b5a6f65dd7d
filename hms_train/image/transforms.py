"""The augmentations' tensor work: each a small pure function of (B, 1, H, W) images (and (B, 6) targets)
and its already-drawn parameters (a mask of the samples it applies to, factors, positions, an affine
matrix), so it can be tested on its own; batched, on the images' device. augment.py registers them as
steps and draws their parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hms_prep.domain import CHAINS, MIRRORED_CHAINS

N_CHAINS = len(CHAINS)
# "time": stripes of whole columns only (Richard's XYMasking had its y masks commented out).
MASK_AXES = ("both", "time")


# --- the augmentations, each given its drawn parameters -------------------------------------------------


def per_sample(values: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast one value per sample over its image."""
    return values.reshape(-1, 1, 1, 1)


def hemisphere_swap(images: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Swap chain blocks LL <-> RL and LP <-> RP where `mask` (B,) is True; the label is kept.

    `rows` is the image's mirror map from its layout (`ImageLayout.mirror_rows`): the source row of each
    row (H,) or of each pixel (H, W), so every part's own chain blocks swap wherever the part sits.
    None: the whole image is one part, 4 blocks of H / 4 rows (rows block 0 <-> 1, 2 <-> 3).
    """
    height = images.shape[-2]
    if rows is None:
        blocks = torch.arange(height, device=images.device).reshape(N_CHAINS, height // N_CHAINS)
        rows = blocks[list(MIRRORED_CHAINS)].reshape(-1)
    rows = rows.to(images.device)
    if rows.ndim == 1:
        swapped = images.index_select(-2, rows)
    else:
        swapped = torch.gather(images, -2, rows.expand_as(images))
    return torch.where(per_sample(mask), swapped, images)


def time_flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse the column (time) order where `mask` (B,) is True."""
    return torch.where(per_sample(mask), images.flip(-1), images)


def part_time_flip(images: torch.Tensor, mask: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Reverse each part's columns in place where `mask` (B,) is True; `columns` (H, W) is the source
    column of every pixel (`ImageLayout.part_flip_columns`)."""
    flipped = torch.gather(images, -1, columns.to(images.device).expand_as(images))
    return torch.where(per_sample(mask), flipped, images)


def vertical_flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse the row order of the whole image where `mask` (B,) is True."""
    return torch.where(per_sample(mask), images.flip(-2), images)


def block_autocontrast(images: torch.Tensor, blocks: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """torchvision's `autocontrast` of each chosen (sample, block): the block's pixels rescaled by its own
    min and max to [0, 1] (a constant block: only clamped); `blocks` (H, W) numbers the blocks 0..K-1
    (-1: left alone), `chosen` (B, K) bool. One batched pass: per-block min and max by scatter_reduce."""
    batch, count = chosen.shape
    flat = images.reshape(batch, -1)
    ids = blocks.reshape(-1)
    inside = ids >= 0
    index = ids.clamp(min=0).expand(batch, -1)
    big = torch.finfo(flat.dtype).max
    minimum = flat.new_full((batch, count), big).scatter_reduce(1, index, torch.where(inside, flat, big), "amin")
    maximum = flat.new_full((batch, count), -big).scatter_reduce(1, index, torch.where(inside, flat, -big), "amax")
    constant = maximum == minimum  # torchvision: minimum 0 and scale 1, so the block is only clamped
    span = torch.where(constant, torch.ones_like(maximum), maximum - minimum)
    minimum = torch.where(constant, torch.zeros_like(minimum), minimum)
    rescaled = ((flat - minimum.gather(1, index)) / span.gather(1, index)).clamp(0.0, 1.0)
    apply = chosen.gather(1, index) & inside
    return torch.where(apply, rescaled, flat).reshape(images.shape)


def brightness_contrast(images: torch.Tensor, contrast: torch.Tensor, brightness: torch.Tensor) -> torch.Tensor:
    """`images * contrast + brightness` with one factor and one offset per sample ((B,) each)."""
    return images * per_sample(contrast) + per_sample(brightness)


def stripe_mask(
    batch: int,
    length: int,
    stripes: tuple[int, int],
    width: tuple[int, int],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(B, length) bool: per sample a random count in `stripes` of stripes, each of a random width in
    `width` (both inclusive ranges) at a random position wholly inside `length`; True = masked."""
    most = stripes[1]
    count = torch.randint(stripes[0], stripes[1] + 1, (batch, 1), generator=generator, device=device)
    active = torch.arange(most, device=device) < count  # (B, most): the first `count` stripes are used
    widths = torch.randint(width[0], width[1] + 1, (batch, most), generator=generator, device=device)
    widths = widths.clamp(max=length)
    room = (length - widths + 1).float()
    starts = (torch.rand(batch, most, generator=generator, device=device) * room).long()
    position = torch.arange(length, device=device)
    covered = (position >= starts[..., None]) & (position < (starts + widths)[..., None])
    return (covered & active[..., None]).any(dim=1)


def xy_mask(images: torch.Tensor, column_mask: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
    """Set to 0 the columns where `column_mask` (B, W) and the rows where `row_mask` (B, H) is True."""
    masked = column_mask[:, None, None, :] | row_mask[:, None, :, None]
    return images.masked_fill(masked, 0.0)


def affine_theta(
    angle_rad: torch.Tensor,
    zoom: torch.Tensor,
    shift_x: torch.Tensor,
    shift_y: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """(B, 2, 3) `affine_grid` matrices: rotate by `angle_rad` and zoom by `zoom` about the centre, then
    move content right by `shift_x` * width and down by `shift_y` * height (all (B,)).

    The rotation is done in pixel units, so a non-square image is rotated, not sheared. The matrix maps
    output to input coordinates (normalised to [-1, 1]), hence the inverse rotation and zoom.
    """
    cos, sin = torch.cos(angle_rad), torch.sin(angle_rad)
    # inverse rotation and zoom in pixels, conjugated by the pixel -> normalised scaling diag(2/W, 2/H)
    m00, m01 = cos / zoom, sin * (height / width) / zoom
    m10, m11 = -sin * (width / height) / zoom, cos / zoom
    tx, ty = 2 * shift_x, 2 * shift_y  # shifts in normalised units
    row0 = torch.stack([m00, m01, -(m00 * tx + m01 * ty)], dim=-1)
    row1 = torch.stack([m10, m11, -(m10 * tx + m11 * ty)], dim=-1)
    return torch.stack([row0, row1], dim=1)


def shift_scale_rotate(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp each sample by its (B, 2, 3) `theta` (bilinear; pixels from outside the image are 0)."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def mixup(
    images: torch.Tensor, targets: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each sample with its partner `perm[b]` with weight `lam[b]` (B,) on both image and soft label:
    lam * own + (1 - lam) * partner. lam = 1 leaves a sample as it is; labels still sum to 1."""
    # lerp(partner, own, lam) = lam * own + (1 - lam) * partner in one pass; exact at lam = 1
    mixed_images = torch.lerp(images[perm], images, per_sample(lam).to(images.dtype))
    mixed_targets = torch.lerp(targets[perm], targets, lam.reshape(-1, 1).to(targets.dtype))
    return mixed_images, mixed_targets


def sample_symmetric_beta(
    batch: int, alpha: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(B,) draws from Beta(alpha, alpha) using `generator`.

    torch.distributions.Beta cannot take a generator; its own sampler (a 2-component Dirichlet) can, so
    it is called directly to keep augmentation reproducible from the Augmenter's generator.
    """
    concentration = torch.full((batch, 2), float(alpha), device=device)
    return torch._sample_dirichlet(concentration, generator=generator)[:, 0]
