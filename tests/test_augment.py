"""replearn.data.augment: seeded, batched, and labels accounted for."""

from __future__ import annotations


import pytest
import torch

from replearn.data.augment import (
    AUGMENTATIONS,
    Compose,
    CutMix,
    Cutout,
    MixUp,
    RandAugment,
    RandomCrop,
    RandomErasing,
    RandomFlip,
    RandomRotation,
    affine,
    build_augment,
    equalize,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 16, c: int = 1, h: int = 12, w: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=_gen(seed))


ALL = [RandomFlip(), RandomCrop(2), RandomRotation(20), RandAugment(2, 15), MixUp(10), CutMix(10), Cutout(4), RandomErasing(p=1.0)]


@pytest.mark.parametrize("augmentation", ALL, ids=lambda a: type(a).__name__)
def test_seeded_batched_and_shape_preserving(augmentation) -> None:
    images, labels = _images(), torch.arange(16) % 10
    first = augmentation(images, labels, _gen(3))
    again = augmentation(images, labels, _gen(3))
    other = augmentation(images, labels, _gen(4))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert first[0].shape == images.shape and first[0].dtype == images.dtype
    assert torch.equal(images, _images())  # the input is not modified in place


@pytest.mark.parametrize("augmentation", ALL, ids=lambda a: type(a).__name__)
def test_bad_input_is_a_clear_error(augmentation) -> None:
    with pytest.raises(ValueError, match=r"expected floating images of shape \(N, C, H, W\) but got \(4, 5\)"):
        augmentation(torch.rand(4, 5), torch.zeros(4, dtype=torch.long), _gen())


def test_flip_flips_exactly_the_chosen_images() -> None:
    images = _images()
    out, _ = RandomFlip(p=0.5)(images, torch.zeros(16), _gen(1))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 16
    vertical, _ = RandomFlip(p=1.0, dim=-2)(images, torch.zeros(16), _gen(1))
    assert torch.equal(vertical, images.flip(-2))


def test_crop_is_a_shifted_window_of_the_padded_image() -> None:
    images = _images(n=8, h=6, w=5)
    out, _ = RandomCrop(2)(images, torch.zeros(8), _gen(2))
    padded = torch.nn.functional.pad(images, [2, 2, 2, 2])
    for o, p in zip(out, padded):
        windows = [(t, l) for t in range(5) for l in range(5) if torch.equal(p[:, t : t + 6, l : l + 5], o)]
        assert windows  # some offset in [0, 2·padding] reproduces the crop


def test_affine_rotation_and_translation_geometry() -> None:
    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 4, 6] = 1.0  # two pixels right of the centre
    quarter = affine(image, angle=torch.tensor([90.0]))
    row, col = divmod(int(quarter.flatten().argmax()), 9)
    assert (row, col) == (2, 4)  # counter-clockwise: now two pixels above the centre
    shifted = affine(image, translate=torch.tensor([[1 / 9, 0.0]]))
    assert divmod(int(shifted.flatten().argmax()), 9) == (4, 7)
    assert torch.allclose(affine(image, angle=torch.zeros(1)), image, atol=1e-6)


def test_equalize_spreads_levels() -> None:
    ramp = torch.linspace(0.2, 0.3, 64).reshape(1, 1, 8, 8)
    out = equalize(ramp)
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    assert (out.flatten().diff() >= 0).all()  # order of grey levels kept
    constant = torch.full((1, 1, 4, 4), 0.5)
    assert torch.equal(equalize(constant), constant)


@pytest.mark.parametrize("op", RandAugment.OPS)
def test_every_randaugment_op_keeps_range_and_identity_at_magnitude_0(op: str) -> None:
    images = _images(n=4)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0])
    out = RandAugment(1, 20).apply(op, images, sign)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1 + 1e-6
    if op not in ("equalize", "autocontrast", "posterize", "solarize"):
        torch.testing.assert_close(RandAugment(1, 0).apply(op, images, sign), images, atol=1e-5, rtol=0)


def test_mixup_mixes_images_and_labels_with_one_lambda() -> None:
    images = torch.stack([torch.full((1, 4, 4), float(k)) for k in range(8)])  # image k is constant k
    labels = torch.arange(8)
    out, soft = MixUp(num_classes=8, alpha=0.4)(images, labels, _gen(5))
    assert soft.shape == (8, 8) and torch.allclose(soft.sum(1), torch.ones(8))
    # Each image is λ·k + (1−λ)·partner(k), and its label puts λ on k and 1−λ on the partner.
    expected_value = (soft * torch.arange(8.0)).sum(1)
    torch.testing.assert_close(out[:, 0, 0, 0], expected_value)
    own = soft[torch.arange(8), labels]
    mixed = own < 1 - 1e-6  # images paired with themselves keep weight 1
    assert mixed.any() and torch.allclose(own[mixed], own[mixed][0])  # one λ for the batch
    assert ((soft > 1e-6).sum(1) == torch.where(mixed, 2, 1)).all()  # each mixed label has exactly one partner


def test_cutmix_labels_are_the_pasted_area() -> None:
    n, h, w = 16, 12, 10
    images = torch.stack([torch.full((1, h, w), float(k)) for k in range(n)])
    labels = torch.arange(n)
    for seed in range(5):
        out, soft = CutMix(num_classes=n, alpha=1.0)(images, labels, _gen(seed))
        assert torch.allclose(soft.sum(1), torch.ones(n))
        for k in range(n):
            # The label weight of each class is its share of the pixels.
            share = torch.stack([(out[k] == c).float().mean() for c in range(n)])
            torch.testing.assert_close(soft[k], share)


def test_cutout_and_erasing_change_one_box() -> None:
    images = torch.ones(32, 2, 10, 10)
    out, labels = Cutout(4)(images, torch.arange(32), _gen(0))
    zeros = (out == 0).all(1)  # (N, H, W): both channels cleared together
    for mask in zeros:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4  # one square, clipped at the borders
        assert mask.sum() == len(rows) * len(cols)
    assert torch.equal(labels, torch.arange(32))
    erased, _ = RandomErasing(p=0.5, area=(0.1, 0.2))(images, torch.arange(32), _gen(0))
    changed = (erased != 1).flatten(1).any(1)
    assert 5 < changed.sum() < 27  # about half the images
    share = (erased != 1).flatten(1).float().mean(1)[changed]
    assert (share <= 0.3).all()


def test_compose_and_build_by_name() -> None:
    images, labels = _images(n=8, h=8, w=8), torch.arange(8) % 10
    chain = Compose([RandomCrop(1), CutMix(10)])
    out, soft = chain(images, labels, _gen(0))
    assert soft.shape == (8, 10)
    for name in AUGMENTATIONS:
        augment = build_augment(name, num_classes=10, image_size=8)
        if augment is None:
            assert name == "none"
            continue
        out, y = augment(images, labels, _gen(1))
        assert out.shape == images.shape and y.shape[0] == 8
    with pytest.raises(ValueError, match="unknown augmentation 'jitter'; choose one of none, flip"):
        build_augment("jitter", 10, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_same_result_on_gpu() -> None:
    images, labels = _images(), torch.arange(16) % 10
    for augmentation in ALL:
        cpu = augmentation(images, labels, _gen(3))
        gpu = augmentation(images.cuda(), labels.cuda(), _gen(3))
        torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gpu[1].cpu().to(cpu[1].dtype), cpu[1])
