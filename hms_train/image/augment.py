"""Batched training augmentations of composed images, on the batch's device, per-sample random parameters.

Each augmentation is a small pure function of the images and its already-drawn parameters (a mask of the
samples it applies to, factors, positions, an affine matrix), so it can be tested on its own. `Augmenter`
draws those parameters for the whole batch at once from one `torch.Generator` and chains the functions;
nothing loops over the samples in Python, so the cost does not grow with per-sample Python overhead and
the same code runs on CPU and CUDA.

Images are (B, 1, H, W) composed by `hms_train.image.compose` from an image layout: each part's chain blocks
LL, RL, LP, RP stacked top to bottom. Targets are (B, 6) vote fractions summing to 1. Geometric
augmentations act on the whole image except the hemisphere swap, which mirrors each part's own chain
blocks. Models that also take the raw signal refuse the ones that would change the image alone
(`IMAGE_ONLY`, see `hms_train.run.forward.make_augmenter`).

Defaults follow the seed solution's recipe (docs HMS.md section 4): brightness/contrast, time flip,
XY masking (1-10 stripes of 5-10 px), shift-scale-rotate (shift 0.15, scale 0.05, rotate 15 deg, p 0.7),
mixup (Beta(0.5, 0.5), p 0.3) on soft labels; plus the left/right "brain flip" (hemisphere swap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F

from hms_prep.domain import CHAINS, MIRRORED_CHAINS

N_CHAINS = len(CHAINS)
# The probabilities of augmentations that move image content in time or across chains, or mix samples:
# applied to the image alone they would desynchronise it from a raw signal the model also takes.
IMAGE_ONLY = ("hemisphere_swap_p", "hflip_p", "vflip_p", "ssr_p", "mixup_p")
# "time": stripes of whole columns only (Richard's XYMasking had its y masks commented out).
MASK_AXES = ("both", "time")


@dataclass
class AugmentConfig:
    """Every probability and strength of the training augmentations; defaults = the seed recipe."""

    # An alias of the image layout, applied when the image is composed (hms_train.image.layout.side_by_side):
    # the Kaggle part's width, a random span of it in training, its first columns at evaluation.
    random_crop_width: int | None = None
    brightness_contrast_p: float = 0.6
    brightness: float = 0.2  # offset drawn from U(-brightness, brightness) and added
    contrast: float = 0.2  # factor drawn from 1 + U(-contrast, contrast) and multiplied
    hflip_p: float = 0.5  # time reversal
    vflip_p: float = 0.0  # whole-image vertical flip (reverses chain order and frequency axis)
    hemisphere_swap_p: float = 0.5  # LL <-> RL and LP <-> RP; the label is kept
    xy_mask_p: float = 0.5
    mask_axes: Literal[MASK_AXES] = "both"  # time stripes and frequency stripes, or time stripes only
    mask_stripes: tuple[int, int] = (1, 10)  # stripes per axis, inclusive range
    mask_width: tuple[int, int] = (5, 10)  # stripe width in pixels, inclusive range
    ssr_p: float = 0.7
    shift: float = 0.15  # fraction of the image's width / height
    scale: float = 0.05  # zoom factor drawn from 1 + U(-scale, scale)
    rotate_deg: float = 15.0
    mixup_p: float = 0.3
    mixup_alpha: float = 0.5

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation at all (every probability 0, no crop): for benchmarks and ablations."""
        probabilities = {f.name: 0.0 for f in fields(cls) if f.name.endswith("_p")}
        return cls(random_crop_width=None, **probabilities)


# --- the augmentations, each given its drawn parameters -------------------------------------------------


def _per_sample(values: torch.Tensor) -> torch.Tensor:
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
    return torch.where(_per_sample(mask), swapped, images)


def time_flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse the column (time) order where `mask` (B,) is True."""
    return torch.where(_per_sample(mask), images.flip(-1), images)


def vertical_flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse the row order of the whole image where `mask` (B,) is True."""
    return torch.where(_per_sample(mask), images.flip(-2), images)


def brightness_contrast(images: torch.Tensor, contrast: torch.Tensor, brightness: torch.Tensor) -> torch.Tensor:
    """`images * contrast + brightness` with one factor and one offset per sample ((B,) each)."""
    return images * _per_sample(contrast) + _per_sample(brightness)


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
    mixed_images = torch.lerp(images[perm], images, _per_sample(lam).to(images.dtype))
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


# --- drawing the parameters and chaining the augmentations ----------------------------------------------


class Augmenter:
    """Training augmentation of a batch: each augmentation is applied to a random subset of samples,
    each sample with its own random parameters, all drawn from `generator` (on the images' device;
    None = torch's default generator).

    `mirror_rows` is the hemisphere swap's map of the image's chain blocks, from the image layout
    (`ImageLayout.mirror_rows`); None treats the whole image as one part of 4 equal blocks. Crops are
    not here: they belong to the layout and happen when the image is composed (`hms_train.image.compose`).
    `hms_train.run.forward.make_augmenter` builds one from a training config.
    """

    def __init__(
        self,
        config: AugmentConfig,
        generator: torch.Generator | None = None,
        mirror_rows: torch.Tensor | None = None,
    ):
        if config.random_crop_width is not None:
            raise ValueError("augment.random_crop_width is an image-layout setting applied when the image is "
                             "composed; build the Augmenter with hms_train.run.forward.make_augmenter")
        self.config = config
        self.generator = generator
        self.mirror_rows = mirror_rows

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, train: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented (images, targets) in train mode; the inputs unchanged when `train` is False."""
        if not train:
            return images, targets
        config = self.config
        if config.hemisphere_swap_p > 0:
            chosen = self._chosen(images, config.hemisphere_swap_p)
            images = hemisphere_swap(images, chosen, self.mirror_rows)
        if config.hflip_p > 0:
            images = time_flip(images, self._chosen(images, config.hflip_p))
        if config.vflip_p > 0:
            images = vertical_flip(images, self._chosen(images, config.vflip_p))
        if config.brightness_contrast_p > 0:
            images = self._brightness_contrast(images)
        if config.ssr_p > 0:
            images = self._shift_scale_rotate(images)
        if config.xy_mask_p > 0:  # after the warp, so the stripes stay straight
            images = self._xy_mask(images)
        if config.mixup_p > 0:
            images, targets = self._mixup(images, targets)
        return images, targets

    def _uniform(self, images: torch.Tensor, low: float, high: float) -> torch.Tensor:
        """(B,) uniform draws in [low, high)."""
        u = torch.rand(images.shape[0], generator=self.generator, device=images.device)
        return low + (high - low) * u

    def _chosen(self, images: torch.Tensor, p: float) -> torch.Tensor:
        """(B,) bool: which samples an augmentation of probability `p` applies to."""
        return self._uniform(images, 0.0, 1.0) < p

    def _brightness_contrast(self, images: torch.Tensor) -> torch.Tensor:
        config = self.config
        chosen = self._chosen(images, config.brightness_contrast_p)
        contrast = self._uniform(images, 1 - config.contrast, 1 + config.contrast)
        brightness = self._uniform(images, -config.brightness, config.brightness)
        # unchosen samples get factor 1 and offset 0: exactly unchanged
        return brightness_contrast(images, torch.where(chosen, contrast, 1.0), torch.where(chosen, brightness, 0.0))

    def _shift_scale_rotate(self, images: torch.Tensor) -> torch.Tensor:
        config = self.config
        chosen = self._chosen(images, config.ssr_p)
        max_angle = math.radians(config.rotate_deg)
        theta = affine_theta(
            angle_rad=self._uniform(images, -max_angle, max_angle),
            zoom=self._uniform(images, 1 - config.scale, 1 + config.scale),
            shift_x=self._uniform(images, -config.shift, config.shift),
            shift_y=self._uniform(images, -config.shift, config.shift),
            height=images.shape[-2],
            width=images.shape[-1],
        )
        # bilinear resampling with an identity matrix is only identical up to rounding: keep the
        # unchosen samples' pixels exactly
        return torch.where(_per_sample(chosen), shift_scale_rotate(images, theta), images)

    def _xy_mask(self, images: torch.Tensor) -> torch.Tensor:
        config = self.config
        batch, _, height, width = images.shape
        chosen = self._chosen(images, config.xy_mask_p)[:, None]
        columns = stripe_mask(batch, width, config.mask_stripes, config.mask_width, self.generator, images.device)
        if config.mask_axes == "time":
            rows = torch.zeros(batch, height, dtype=torch.bool, device=images.device)
        else:
            rows = stripe_mask(batch, height, config.mask_stripes, config.mask_width, self.generator, images.device)
        return xy_mask(images, columns & chosen, rows & chosen)

    def _mixup(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        batch = images.shape[0]
        chosen = self._chosen(images, config.mixup_p)
        lam = sample_symmetric_beta(batch, config.mixup_alpha, self.generator, images.device)
        lam = torch.where(chosen, lam, 1.0)
        perm = torch.randperm(batch, generator=self.generator, device=images.device)
        return mixup(images, targets, lam, perm)
