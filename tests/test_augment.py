"""augment.py: each knob moves a digit by what its param says, blanks stay background, draws are seeded."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from mnist_mlp.core.augment import (
    affine_grid,
    augment_batch,
    augmented_figure,
    describe,
    elastic_field,
    is_active,
    sampling_matrices,
    smoothing_matrix,
)
from mnist_mlp.params import AugmentParams

CENTER = 14.0  # the image's center in pixel coordinates (pixel i spans [i, i + 1))


def dots(count: int, row: int, col: int, background: float = 0.0) -> torch.Tensor:
    """(count, 28, 28) images, blank but for one bright 2x2 square: pixels row, row + 1 and col, col + 1, center (col + 1, row + 1)."""
    images = torch.full((count, 28, 28), background)
    images[:, row : row + 2, col : col + 2] = background + 1.0
    return images


def centers(images: torch.Tensor, background: float = 0.0) -> torch.Tensor:
    """(count, 2) the (x, y) center of mass of each image's ink, in pixels from the top-left corner."""
    ink = (images - background).clamp(min=0)
    coords = torch.arange(28, dtype=images.dtype) + 0.5
    mass = ink.sum(dim=(1, 2))
    return torch.stack([(ink.sum(dim=1) * coords).sum(1) / mass, (ink.sum(dim=2) * coords).sum(1) / mass], dim=1)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_all_zero_is_off_and_draws_nothing():
    off = AugmentParams()
    assert not is_active(off) and describe(off) == "off"
    batch = torch.rand(4, 784)
    state = torch.get_rng_state()
    assert augment_batch(batch, off, background=-0.4) is batch
    assert torch.equal(torch.get_rng_state(), state)  # the default preset's random streams do not move


def test_describe_names_the_knobs_in_use():
    assert describe(AugmentParams(shift=2, rotation=10)) == "shift 2, rotation 10"
    assert describe(AugmentParams(elastic_alpha=34, elastic_sigma=4)) == "elastic_alpha 34, elastic_sigma 4"
    assert describe(AugmentParams(scale=0.1, elastic_sigma=4)) == "scale 0.1"  # a sigma without alpha does nothing


def test_the_grid_is_torchs_affine_grid():
    matrices = sampling_matrices(16, AugmentParams(shift=3, rotation=30, scale=0.2, shear=15), torch.zeros(1), seeded())
    expected = F.affine_grid(matrices, [16, 1, 28, 28], align_corners=False)
    torch.testing.assert_close(affine_grid(matrices), expected)


def test_shift_moves_each_axis_by_at_most_shift_pixels():
    images = dots(400, 12, 12)  # ink centered on (13, 13)
    moved = centers(augment_batch(images, AugmentParams(shift=3), 0.0, seeded()))
    offset = moved - 13.0
    assert offset.abs().max() <= 3.0 + 1e-4
    assert offset.abs().max() > 2.8  # the whole range is used
    assert (offset > 1).any() and (offset < -1).any()  # both directions
    assert (
        offset[:, 0].std() > 1 and offset[:, 1].std() > 1 and abs(torch.corrcoef(offset.T)[0, 1]) < 0.2
    )  # axes drawn apart


def test_rotation_turns_the_digit_about_the_center_by_at_most_rotation_degrees():
    images = dots(400, 13, 21)  # 8 pixels right of the center
    moved = centers(augment_batch(images, AugmentParams(rotation=20), 0.0, seeded())) - CENTER
    angles = torch.rad2deg(torch.atan2(moved[:, 1], moved[:, 0]))
    radius = moved.norm(dim=1)
    assert angles.abs().max() <= 20.5 and angles.abs().max() > 18
    assert (angles > 5).any() and (angles < -5).any()
    torch.testing.assert_close(radius, torch.full_like(radius, 8.0), atol=0.1, rtol=0)


def test_scale_stretches_each_axis_by_up_to_scale():
    images = dots(400, 17, 17)  # 4 pixels right of and below the center
    moved = centers(augment_batch(images, AugmentParams(scale=0.2), 0.0, seeded())) - CENTER
    factors = moved / 4.0
    # bilinear sampling of a small dot shifts its center of mass by a few hundredths of a pixel
    assert factors.min() >= 0.8 - 0.03 and factors.max() <= 1.2 + 0.03
    assert factors.min() < 0.85 and factors.max() > 1.15
    assert (factors[:, 0] - factors[:, 1]).abs().max() > 0.1  # each axis on its own


def test_shear_slides_rows_sideways_by_up_to_tan_shear():
    images = dots(400, 20, 13)  # 7 pixels below the center, on the vertical axis
    moved = centers(augment_batch(images, AugmentParams(shear=20), 0.0, seeded())) - CENTER
    slide = moved[:, 0] / moved[:, 1]
    assert slide.abs().max() <= math.tan(math.radians(20)) + 0.01 and slide.abs().max() > 0.3
    torch.testing.assert_close(moved[:, 1], torch.full_like(moved[:, 1], 7.0), atol=0.05, rtol=0)  # rows stay put


def test_elastic_field_is_smooth_noise_scaled_by_alpha():
    like = torch.zeros(1)
    weak = elastic_field(64, AugmentParams(elastic_alpha=10, elastic_sigma=4), like, seeded())
    strong = elastic_field(64, AugmentParams(elastic_alpha=20, elastic_sigma=4), like, seeded())
    torch.testing.assert_close(strong, 2 * weak)  # the same noise, twice the displacement
    assert weak.shape == (64, 28, 28, 2)
    # smooth: neighbours move together far more than the unsmoothed noise would (correlation 0)
    flat = weak[..., 0]
    neighbours = torch.corrcoef(torch.stack([flat[:, :, :-1].flatten(), flat[:, :, 1:].flatten()]))[0, 1]
    assert neighbours > 0.9
    rough = elastic_field(64, AugmentParams(elastic_alpha=10, elastic_sigma=0.3), like, seeded())[..., 0]
    assert torch.corrcoef(torch.stack([rough[:, :, :-1].flatten(), rough[:, :, 1:].flatten()]))[0, 1] < 0.5


def test_smoothing_is_a_gaussian_convolution_with_zero_outside():
    sigma = 2.5
    noise = torch.rand(3, 2, 28, 28, dtype=torch.float64)
    smooth = smoothing_matrix(sigma, noise)
    offsets = torch.arange(-27, 28, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    planes = noise.reshape(6, 1, 28, 28)
    expected = F.conv2d(
        F.conv2d(planes, kernel.view(1, 1, 1, -1), padding=(0, 27)), kernel.view(1, 1, -1, 1), padding=(27, 0)
    )
    torch.testing.assert_close(smooth @ noise @ smooth, expected.reshape(3, 2, 28, 28))


def test_elastic_distortion_moves_ink_locally():
    images = dots(200, 12, 12)
    settings = AugmentParams(elastic_alpha=34, elastic_sigma=4)
    warped = augment_batch(images, settings, 0.0, seeded())
    moved = (centers(warped) - 13.0).norm(dim=1)
    assert 0.2 < moved.mean() < 3  # a pixel or two, not across the image
    assert warped.min() >= 0 and warped.max() <= 1  # bilinear: each pixel a blend of the digit's own


def test_background_stays_background_in_normalized_units():
    background = -0.4242  # a blank pixel after standardization: not grid_sample's padding 0
    images = dots(32, 10, 10, background).reshape(32, 784)
    settings = AugmentParams(shift=8, rotation=90, scale=0.5, shear=45, elastic_alpha=100, elastic_sigma=2)
    warped = augment_batch(images, settings, background, seeded())
    assert warped.shape == (32, 784)
    assert warped.min() >= background - 1e-5  # nothing darker than blank came in from outside the frame
    blank = torch.full((8, 784), background)
    torch.testing.assert_close(augment_batch(blank, settings, background, seeded()), blank)


def test_draws_come_from_the_generator_fresh_for_every_sample():
    images = dots(16, 12, 12)
    settings = AugmentParams(shift=2, rotation=10, scale=0.1, shear=5, elastic_alpha=30, elastic_sigma=4)
    first = augment_batch(images, settings, 0.0, seeded(3))
    assert torch.equal(first, augment_batch(images, settings, 0.0, seeded(3)))
    assert not torch.equal(first, augment_batch(images, settings, 0.0, seeded(4)))
    assert all(not torch.equal(first[0], first[i]) for i in range(1, 16))  # one digit, 16 different deformations
    torch.manual_seed(5)
    from_global = augment_batch(images, settings, 0.0)
    torch.manual_seed(5)
    assert torch.equal(from_global, augment_batch(images, settings, 0.0))  # no generator: torch's seeded global RNG


def test_the_figure_shows_each_digit_stored_then_augmented():
    images = (dots(20, 12, 12) * 255).to(torch.uint8)
    labels = torch.arange(20) % 10
    figure = augmented_figure(images, labels, AugmentParams(rotation=15), seed=0, digits=3, versions=4)
    assert len(figure.axes) == 3 * 5
    assert "rotation 15" in figure._suptitle.get_text()
    off = augmented_figure(images, labels, AugmentParams(), seed=0, digits=2, versions=2)
    assert "train.augment is off" in off._suptitle.get_text()
    assert len(off.axes) == 2  # off: each digit once, as stored, not copies of it that nothing deformed
