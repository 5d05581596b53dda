"""Batched, seeded image augmentations on CPU or GPU tensors (course notes §4.9).

    augment = Compose([RandomCrop(padding=2), RandAugment(num_ops=2, magnitude=9), CutMix(num_classes=10)])
    images, labels = augment(images, labels, generator)       # (N, C, H, W) in [0, 1], (N,) int64
    trainer = Trainer(model, optimizer, config, augment=augment)

Every augmentation is a callable `(images, labels, generator) -> (images, labels)` on a whole batch:
images (N, C, H, W) floats in [0, 1], labels (N,) class indices or (N, K) probabilities. Random
choices are drawn per sample from the CPU `generator` (then moved to the images' device), so a batch
is augmented identically for the same generator state on any device. Geometric transforms fill with
0 (black). Label-preserving ones pass the labels through; MixUp and CutMix return probabilities.

- flips, random crops (pad and crop), rotations;
- RandAugment (Cubuk et al. 2020): each image gets `num_ops` operations drawn uniformly from
  identity, translate x/y, rotate, shear x/y, scale, equalize, posterize, solarize, contrast,
  brightness, sharpness, autocontrast, at one shared magnitude M in 0..30;
- MixUp (Zhang et al. 2018): x = λ·x_i + (1−λ)·x_j, y likewise, λ ~ Beta(α, α) per batch;
- CutMix (Yun et al. 2019): a box of x_j pasted into x_i, labels mixed by the box's actual area;
- Cutout (DeVries & Taylor 2017): a square set to 0; Random Erasing (Zhong et al. 2020): with
  probability p, a rectangle of random area and aspect ratio filled with noise.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "AUGMENTATIONS",
    "Compose",
    "CutMix",
    "Cutout",
    "MixUp",
    "RandAugment",
    "RandomCrop",
    "RandomErasing",
    "RandomFlip",
    "RandomRotation",
    "affine",
    "build_augment",
    "equalize",
    "one_hot",
]

Labels = torch.Tensor
Augmentation = Callable[[torch.Tensor, Labels, torch.Generator], tuple[torch.Tensor, Labels]]


def _check(images: torch.Tensor, who: str) -> None:
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"{who}: expected floating images of shape (N, C, H, W) but got {tuple(images.shape)} {images.dtype}")


def _uniform(n: int, generator: torch.Generator, low: float, high: float, device: torch.device) -> torch.Tensor:
    return (low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)).float().to(device)


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded from `generator` (for Beta draws, which torch cannot seed)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


def one_hot(labels: Labels, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(N,) class indices as (N, K) probabilities; (N, K) probabilities unchanged."""
    if labels.dim() == 2:
        return labels.to(dtype)
    return F.one_hot(labels, num_classes).to(dtype)


class Compose:
    """Applies augmentations in order."""

    def __init__(self, augmentations: Sequence[Augmentation]) -> None:
        self.augmentations = list(augmentations)

    def __call__(self, images: torch.Tensor, labels: Labels, generator: torch.Generator) -> tuple[torch.Tensor, Labels]:
        for augmentation in self.augmentations:
            images, labels = augmentation(images, labels, generator)
        return images, labels


# ------------------------------------------------------------------------------- geometric transforms


def affine(images: torch.Tensor, angle: torch.Tensor | None = None, translate: torch.Tensor | None = None,
           scale: torch.Tensor | None = None, shear: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Per-sample affine transforms about the image centre, bilinear, zero fill.

    Args:
        images: (N, C, H, W).
        angle: (N,) rotation in degrees, counter-clockwise.
        translate: (N, 2) shift as a share of the (width, height).
        scale: (N,) zoom factor (>1 enlarges).
        shear: (N, 2) shear factors along x and y.
    """
    n = images.shape[0]
    device = images.device
    matrix = torch.eye(2, device=device).repeat(n, 1, 1)  # maps output coordinates to input coordinates
    if shear is not None:
        shear_matrix = torch.eye(2, device=device).repeat(n, 1, 1)
        shear_matrix[:, 0, 1], shear_matrix[:, 1, 0] = shear[:, 0], shear[:, 1]
        matrix = shear_matrix @ matrix
    if angle is not None:
        radians = torch.deg2rad(angle)
        cos, sin = torch.cos(radians), torch.sin(radians)
        # Output pixel p samples the input at R·p; with y pointing down, this R turns the image counter-clockwise.
        rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        matrix = rotation @ matrix
    if scale is not None:
        matrix = matrix / scale[:, None, None]
    offset = torch.zeros(n, 2, 1, device=device)
    if translate is not None:
        offset = -2.0 * translate[:, :, None]  # grid coordinates span [-1, 1]: a share s of the side is 2s
    theta = torch.cat([matrix, offset], dim=2).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class RandomFlip:
    """Flips each image with probability p, horizontally (dim=-1) or vertically (dim=-2)."""

    def __init__(self, p: float = 0.5, dim: int = -1) -> None:
        if dim not in (-1, -2):
            raise ValueError(f"RandomFlip: 'dim' expected -1 (horizontal) or -2 (vertical) but got {dim}")
        self.p, self.dim = p, dim

    def __call__(self, images: torch.Tensor, labels: Labels, generator: torch.Generator) -> tuple[torch.Tensor, Labels]:
        _check(images, "RandomFlip")
        flip = (torch.rand(images.shape[0], generator=generator) < self.p).to(images.device)
        return torch.where(flip[:, None, None, None], images.flip(self.dim), images), labels


class RandomCrop:
    """Pads each image by `padding` zeros on every side and crops a random window of the original size."""

    def __init__(self, padding: int = 4) -> None:
        if padding < 0:
            raise ValueError(f"RandomCrop: 'padding' expected a non-negative integer but got {padding}")
        self.padding = padding

    def __call__(self, images: torch.Tensor, labels: Labels, generator: torch.Generator) -> tuple[torch.Tensor, Labels]:
        _check(images, "RandomCrop")
        n, _, h, w = images.shape
        padded = F.pad(images, [self.padding] * 4)
        top = torch.randint(0, 2 * self.padding + 1, (n,), generator=generator).to(images.device)
        left = torch.randint(0, 2 * self.padding + 1, (n,), generator=generator).to(images.device)
        rows = (top[:, None] + torch.arange(h, device=images.device))[:, :, None]  # (N, H, 1)
        cols = (left[:, None] + torch.arange(w, device=images.device))[:, None, :]  # (N, 1, W)
        batch = torch.arange(n, device=images.device)[:, None, None]
        return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous(), labels


class RandomRotation:
    """Rotates each image by an angle drawn uniformly from [−degrees, degrees]."""

    def __init__(self, degrees: float = 15.0) -> None:
        self.degrees = degrees

    def __call__(self, images: torch.Tensor, labels: Labels, generator: torch.Generator) -> tuple[torch.Tensor, Labels]:
        _check(images, "RandomRotation")
        angle = _uniform(images.shape[0], generator, -self.degrees, self.degrees, images.device)
        return affine(images, angle=angle), labels


# ------------------------------------------------------------------------------------- colour and RandAugment


def equalize(images: torch.Tensor) -> torch.Tensor:
    """Histogram equalization of each image channel over 256 grey levels (values in [0, 1]).

    Each level maps to its cumulative share of the channel's pixels, stretched so the lowest level
    present becomes 0 (PIL's ImageOps.equalize rule, written from its description).
    """
    n, c, h, w = images.shape
    levels = (images.clamp(0, 1) * 255).round().long().reshape(n * c, h * w)
    histogram = torch.zeros(n * c, 256, device=images.device).scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float32))
    cdf = histogram.cumsum(1)
    first = cdf.gather(1, (histogram > 0).float().argmax(1, keepdim=True))  # pixels at the lowest level present
    span = (h * w - first).clamp(min=1)
    table = ((cdf - first) / span).clamp(0, 1)
    flat = (histogram > 0).sum(1, keepdim=True) <= 1  # a constant channel stays as it is
    equalized = table.gather(1, levels).to(images.dtype)
    return torch.where(flat, images.reshape(n * c, h * w), equalized).reshape(n, c, h, w)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """other + factor·(images − other), clamped to [0, 1]: factor 1 is the identity (PIL ImageEnhance)."""
    return (other + factor[:, None, None, None] * (images - other)).clamp(0, 1)


def _smooth(images: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3×3, centre weight 5, total 13), border pixels kept."""
    kernel = torch.ones(3, 3, device=images.device, dtype=images.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(images.shape[1], 1, 3, 3)
    smoothed = F.conv2d(F.pad(images, [1, 1, 1, 1], mode="replicate"), kernel, groups=images.shape[1])
    return smoothed


class RandAugment:
    """RandAugment (Cubuk et al. 2020): `num_ops` random operations per image at magnitude M.

    Magnitudes map linearly from M ∈ [0, 30] to each operation's range at M = 30 (the paper's
    ranges): rotate ±30°, translate ±45% of the side, shear ±0.3, scale 1 ± 0.3, posterize down to
    4 bits, solarize threshold down to 0, contrast/brightness/sharpness factor 1 ± 0.9. Signs are
    random per image.
    """

    OPS = ("identity", "translate_x", "translate_y", "rotate", "shear_x", "shear_y", "scale", "equalize",
           "posterize", "solarize", "contrast", "brightness", "sharpness", "autocontrast")  # fmt: skip

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0) -> None:
        if num_ops < 0 or not 0 <= magnitude <= 30:
            raise ValueError(f"RandAugment: expected num_ops ≥ 0 and magnitude in [0, 30] but got {num_ops}, {magnitude}")
        self.num_ops, self.magnitude = num_ops, magnitude

    def apply(self, op: str, images: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """Operation `op` on every image of `images`, with per-image signs ±1 (N,)."""
        m = self.magnitude / 30.0
        n = images.shape[0]
        zeros = torch.zeros(n, device=images.device)
        if op == "identity":
            return images
        if op in ("translate_x", "translate_y"):
            shift = 0.45 * m * sign
            return affine(images, translate=torch.stack([shift, zeros] if op == "translate_x" else [zeros, shift], 1))
        if op == "rotate":
            return affine(images, angle=30.0 * m * sign)
        if op in ("shear_x", "shear_y"):
            amount = 0.3 * m * sign
            return affine(images, shear=torch.stack([amount, zeros] if op == "shear_x" else [zeros, amount], 1))
        if op == "scale":
            return affine(images, scale=1.0 + 0.3 * m * sign)
        if op == "equalize":
            return equalize(images)
        if op == "posterize":
            bits = 8 - round(4 * m)
            step = 2 ** (8 - bits)
            return torch.floor(images.clamp(0, 1) * 255 / step) * step / 255
        if op == "solarize":
            threshold = 1.0 - m
            return torch.where(images >= threshold, 1.0 - images, images)
        factor = 1.0 + 0.9 * m * sign
        if op == "contrast":
            mean = images.mean(dim=(1, 2, 3), keepdim=True).expand_as(images)
            return _blend(images, mean, factor)
        if op == "brightness":
            return _blend(images, torch.zeros_like(images), factor)
        if op == "sharpness":
            return _blend(images, _smooth(images), factor)
        if op == "autocontrast":
            low = images.amin(dim=(2, 3), keepdim=True)
            high = images.amax(dim=(2, 3), keepdim=True)
            return torch.where(high > low, (images - low) / (high - low).clamp(min=1e-12), images)
        raise ValueError(f"RandAugment: unknown operation {op!r}")

    def __call__(self, images: torch.Tensor, labels: Labels, generator: torch.Generator) -> tuple[torch.Tensor, Labels]:
        _check(images, "RandAugment")
        n = images.shape[0]
        for _ in range(self.num_ops):
            choice = torch.randint(0, len(self.OPS), (n,), generator=generator)
            sign = (torch.randint(0, 2, (n,), generator=generator) * 2 - 1).float().to(images.device)
            result = images.clone()
            for index in choice.unique().tolist():
                members = (choice == index).nonzero().flatten().to(images.device)
                result[members] = self.apply(self.OPS[index], images[members], sign[members]).to(images.dtype)
            images = result
        return images, labels


# ------------------------------------------------------------------------------------ mixing and erasing


class MixUp:
    """x = λ·x_i + (1−λ)·x_j and y = λ·y_i + (1−λ)·y_j for a random pairing j of the batch, λ ~ Beta(α, α)."""

    def __init__(self, num_classes: int, alpha: float = 0.2) -> None:
        if alpha <= 0:
            raise ValueError(f"MixUp: 'alpha' expected a positive number but got {alpha}")
        self.num_classes, self.alpha = num_classes, alpha

    def __call__(self, images: torch.Tensor, labels: Labels, generator: torch.Generator) -> tuple[torch.Tensor, Labels]:
        _check(images, "MixUp")
        lam = float(_numpy_rng(generator).beta(self.alpha, self.alpha))
        partner = torch.randperm(images.shape[0], generator=generator).to(images.device)
        targets = one_hot(labels, self.num_classes, images.dtype)
        return lam * images + (1 - lam) * images[partner], lam * targets + (1 - lam) * targets[partner]


class CutMix:
    """Pastes a box of a partner image into each image; labels mixed by the box's share of the area.

    The box has area ≈ (1−λ)·H·W, λ ~ Beta(α, α) per batch, centred uniformly and clipped to the
    image; the label weight of the partner is the clipped box's exact share of the pixels.
    """

    def __init__(self, num_classes: int, alpha: float = 1.0) -> None:
        if alpha <= 0:
            raise ValueError(f"CutMix: 'alpha' expected a positive number but got {alpha}")
        self.num_classes, self.alpha = num_classes, alpha

    def __call__(self, images: torch.Tensor, labels: Labels, generator: torch.Generator) -> tuple[torch.Tensor, Labels]:
        _check(images, "CutMix")
        n, _, h, w = images.shape
        lam = float(_numpy_rng(generator).beta(self.alpha, self.alpha))
        partner = torch.randperm(n, generator=generator).to(images.device)
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(0, h, (1,), generator=generator)), int(torch.randint(0, w, (1,), generator=generator))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, h)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, w)
        mixed = images.clone()
        mixed[:, :, top:bottom, left:right] = images[partner, :, top:bottom, left:right]
        share = (bottom - top) * (right - left) / (h * w)
        targets = one_hot(labels, self.num_classes, images.dtype)
        return mixed, (1 - share) * targets + share * targets[partner]


def _box_mask(top: torch.Tensor, left: torch.Tensor, box_h: torch.Tensor, box_w: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 1, H, W) masks of one box per image: rows [top, top+box_h), columns [left, left+box_w), clipped."""
    rows, cols = torch.arange(h)[None, :], torch.arange(w)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
    return (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]


class Cutout:
    """Sets a size×size square (clipped at the borders) of each image to 0."""

    def __init__(self, size: int = 8) -> None:
        if size < 1:
            raise ValueError(f"Cutout: 'size' expected a positive integer but got {size}")
        self.size = size

    def __call__(self, images: torch.Tensor, labels: Labels, generator: torch.Generator) -> tuple[torch.Tensor, Labels]:
        _check(images, "Cutout")
        n, _, h, w = images.shape
        # Centres anywhere in the image, as in DeVries & Taylor: the square may hang over the edge.
        top = torch.randint(0, h, (n,), generator=generator) - self.size // 2
        left = torch.randint(0, w, (n,), generator=generator) - self.size // 2
        size = torch.full((n,), self.size)
        mask = _box_mask(top, left, size, size, h, w).to(images.device)
        return images.masked_fill(mask, 0.0), labels


class RandomErasing:
    """With probability p, fills a rectangle of area in `area` (share of the image) and aspect ratio
    in `ratio` (log-uniform) with uniform noise (Zhong et al. 2020)."""

    def __init__(self, p: float = 0.5, area: tuple[float, float] = (0.02, 0.33), ratio: tuple[float, float] = (0.3, 3.3)) -> None:
        if not 0.0 <= p <= 1.0 or not 0.0 < area[0] <= area[1] < 1.0 or not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"RandomErasing: expected p in [0, 1], 0 < area ≤ 1, 0 < ratio but got {p}, {area}, {ratio}")
        self.p, self.area, self.ratio = p, area, ratio

    def __call__(self, images: torch.Tensor, labels: Labels, generator: torch.Generator) -> tuple[torch.Tensor, Labels]:
        _check(images, "RandomErasing")
        n, c, h, w = images.shape
        erase = torch.rand(n, generator=generator) < self.p
        area = _uniform(n, generator, *self.area, torch.device("cpu")) * h * w
        log_ratio = _uniform(n, generator, math.log(self.ratio[0]), math.log(self.ratio[1]), torch.device("cpu"))
        box_h = torch.sqrt(area * torch.exp(log_ratio)).round().long().clamp(1, h)
        box_w = torch.sqrt(area / torch.exp(log_ratio)).round().long().clamp(1, w)
        top = (torch.rand(n, generator=generator) * (h - box_h + 1)).long()
        left = (torch.rand(n, generator=generator) * (w - box_w + 1)).long()
        mask = (_box_mask(top, left, box_h, box_w, h, w) & erase[:, None, None, None]).to(images.device)
        noise = torch.rand(images.shape, generator=generator).to(images.device, images.dtype)
        return torch.where(mask, noise, images), labels


# ------------------------------------------------------------------------------------------ by name

AUGMENTATIONS = ("none", "flip", "crop", "rotate", "randaugment", "mixup", "cutmix", "cutout", "erasing")


def build_augment(name: str, num_classes: int, image_size: int) -> Augmentation | None:
    """An augmentation by name, for recipes (`--set augment=cutmix`), sized for the images.

    "crop" pads by an eighth of the side; "cutout" cuts a square of half the side (DeVries & Taylor's
    CIFAR setting); the mixing ones return probabilities for `num_classes` classes.
    """
    if name not in AUGMENTATIONS:
        raise ValueError(f"build_augment: unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}")
    padding = max(1, image_size // 8)
    table: dict[str, Callable[[], Augmentation | None]] = {
        "none": lambda: None,
        "flip": lambda: RandomFlip(),
        "crop": lambda: RandomCrop(padding),
        "rotate": lambda: RandomRotation(15.0),
        "randaugment": lambda: Compose([RandomCrop(padding), RandAugment(2, 9)]),
        "mixup": lambda: Compose([RandomCrop(padding), MixUp(num_classes)]),
        "cutmix": lambda: Compose([RandomCrop(padding), CutMix(num_classes)]),
        "cutout": lambda: Compose([RandomCrop(padding), Cutout(max(1, image_size // 2))]),
        "erasing": lambda: Compose([RandomCrop(padding), RandomErasing()]),
    }
    return table[name]()
