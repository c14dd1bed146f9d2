"""Deformed training digits: random affine + elastic distortion of a whole batch at once.

Every batch gets fresh transforms, drawn from torch's seeded RNG on the batch's device and applied
with one `grid_sample` (affine grid + a Gaussian-smoothed displacement field, as in Simard et al.
2003), so a seeded CPU run stays bit-identical and there is no per-sample Python. The params
(`train.augment`) describe the transform of the digit; all zero leaves the batch untouched.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from mnist_mlp.data.mnist import IMAGE_SIDE
from mnist_mlp.params import AugmentParams

# grid_sample's coordinates (align_corners=False) run from -1 to 1 across the image's 28 pixels
_UNITS_PER_PIXEL = 2.0 / IMAGE_SIDE


def is_active(settings: AugmentParams) -> bool:
    return any((settings.shift, settings.rotation, settings.scale, settings.shear, settings.elastic_alpha))


def describe(settings: AugmentParams) -> str:
    """'shift 2, rotation 10, ...' (the keys in use), or 'off'."""
    if not is_active(settings):
        return "off"
    used = {key: value for key, value in settings.model_dump().items() if value}
    if not settings.elastic_alpha:
        used.pop("elastic_sigma", None)  # no elastic field to smooth
    return ", ".join(f"{key} {value:g}" for key, value in used.items())


def _uniform(count: int, bound: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(count,) values drawn uniformly from [-bound, bound]."""
    draw = torch.rand(count, device=like.device, dtype=like.dtype, generator=generator)
    return draw.mul_(2.0).sub_(1.0).mul_(bound)


def sampling_matrices(
    count: int, settings: AugmentParams, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(count, 2, 3) matrices for `affine_grid`: each the inverse of a random digit transform.

    The digit is sheared, scaled (each axis on its own), rotated and shifted; `affine_grid` wants
    the opposite map, from an output pixel to where it is read in the input.
    """
    rotation = _uniform(count, math.radians(settings.rotation), like, generator)
    shear = torch.tan(_uniform(count, math.radians(settings.shear), like, generator))
    scale_x = 1.0 + _uniform(count, settings.scale, like, generator)
    scale_y = 1.0 + _uniform(count, settings.scale, like, generator)
    shift_x = _uniform(count, settings.shift * _UNITS_PER_PIXEL, like, generator)
    shift_y = _uniform(count, settings.shift * _UNITS_PER_PIXEL, like, generator)
    cos, sin = torch.cos(rotation), torch.sin(rotation)
    # forward: M = R(rotation) @ [[1, shear], [0, 1]] @ diag(scale_x, scale_y), then + shift;
    # inverse: diag(1/scale_x, 1/scale_y) @ [[1, -shear], [0, 1]] @ R(-rotation)
    a = (cos + shear * sin) / scale_x
    b = (sin - shear * cos) / scale_x
    c = -sin / scale_y
    d = cos / scale_y
    linear = torch.stack([torch.stack([a, b], dim=1), torch.stack([c, d], dim=1)], dim=1)  # (count, 2, 2)
    shift = torch.stack([shift_x, shift_y], dim=1).unsqueeze(2)  # (count, 2, 1)
    return torch.cat([linear, -linear @ shift], dim=2)  # (count, 2, 3)


def affine_grid(matrices: torch.Tensor) -> torch.Tensor:
    """`F.affine_grid(matrices, (B, 1, 28, 28), align_corners=False)`, in a few elementwise ops.

    torch's version multiplies a copy of the base grid per sample (a bmm with an inner size of 3), several times slower on the CPU.
    """
    centers = (torch.arange(IMAGE_SIDE, device=matrices.device, dtype=matrices.dtype) + 0.5) * _UNITS_PER_PIXEL - 1.0
    x, y = centers.view(1, 1, -1), centers.view(1, -1, 1)  # pixel centers: x along a row, y down a column
    rows = matrices.view(-1, 2, 3, 1, 1)
    grid_x = rows[:, 0, 0] * x + rows[:, 0, 1] * y + rows[:, 0, 2]  # (B, 28, 28)
    grid_y = rows[:, 1, 0] * x + rows[:, 1, 1] * y + rows[:, 1, 2]
    return torch.stack([grid_x, grid_y], dim=3)


def smoothing_matrix(sigma: float, like: torch.Tensor) -> torch.Tensor:
    """(28, 28) G with G @ v = v convolved with a normalized Gaussian, zero outside the image.

    Smoothing a field F along both axes is then G @ F @ G.T: two small matmuls for the whole
    batch, much cheaper on the CPU than a depthwise convolution with a kernel as wide as the image.
    """
    offsets = torch.arange(IMAGE_SIDE, device=like.device, dtype=like.dtype)
    distance = offsets.view(-1, 1) - offsets.view(1, -1)  # (28, 28): i - j
    weights = torch.exp(-0.5 * (distance / sigma) ** 2)
    # normalized over every offset a 28-pixel image can have (-27..27), as a convolution kernel is
    full = torch.exp(
        -0.5 * (torch.arange(1 - IMAGE_SIDE, IMAGE_SIDE, device=like.device, dtype=like.dtype) / sigma) ** 2
    )
    return weights / full.sum()


def elastic_field(
    count: int, settings: AugmentParams, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(count, 28, 28, 2) displacements in grid units: uniform noise in [-1, 1] per pixel and axis,
    smoothed by a Gaussian of `elastic_sigma` pixels (zero outside the image), times `elastic_alpha` pixels."""
    noise = torch.rand(count, 2, IMAGE_SIDE, IMAGE_SIDE, device=like.device, dtype=like.dtype, generator=generator)
    noise = noise.mul_(2.0).sub_(1.0)
    smooth = smoothing_matrix(settings.elastic_sigma, like)  # symmetric: G.T = G
    field = smooth @ noise @ smooth  # (count, 2, 28, 28): columns, then rows
    return field.mul_(settings.elastic_alpha * _UNITS_PER_PIXEL).permute(0, 2, 3, 1)


def augment_batch(
    images: torch.Tensor, settings: AugmentParams, background: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fresh random deformations of a float batch (B, 784) or (B, 28, 28); the same shape back.

    `background` is the value of a blank pixel in the batch's units (0 for pixels in [0, 1], below 0
    once standardized): whatever moves in from outside the image is background, not 0.
    """
    if not is_active(settings):
        return images
    count = len(images)
    planes = images.reshape(count, 1, IMAGE_SIDE, IMAGE_SIDE) - background  # blank = 0 = grid_sample's padding
    grid = affine_grid(sampling_matrices(count, settings, planes, generator))  # (B, 28, 28, 2)
    if settings.elastic_alpha > 0:
        grid = grid + elastic_field(count, settings, planes, generator)
    warped = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.add_(background).reshape(images.shape)


def augmented_figure(
    images: torch.Tensor, labels: torch.Tensor, settings: AugmentParams, seed: int, digits: int = 8, versions: int = 7
):
    """A grid of training digits: each row one digit as stored, then `versions` deformations of it (one row of
    digits as stored when augmentation is off)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(images), generator=generator)[:digits]
    originals = images.index_select(0, chosen).to(torch.float32).div_(255.0)  # (D, 28, 28), pixels in [0, 1]
    if not is_active(settings):  # nothing deforms: each digit once, not eight identical copies
        figure, grid = plt.subplots(1, len(chosen), figsize=(1.1 * len(chosen), 1.5), squeeze=False)
        for axes, image, index in zip(grid[0], originals, chosen.tolist()):
            axes.imshow(image.numpy(), cmap="gray_r", vmin=0, vmax=1)
            axes.set_xticks([]), axes.set_yticks([])
            axes.set_title(str(int(labels[index])), fontsize=11)
        figure.suptitle("Training digits as the net sees them: train.augment is off, nothing deforms them", fontsize=10)
        return figure
    repeated = originals.repeat_interleave(versions, dim=0)  # (D * V, 28, 28)
    warped = augment_batch(repeated, settings, background=0.0, generator=generator).clamp_(0.0, 1.0)
    warped = warped.view(len(chosen), versions, IMAGE_SIDE, IMAGE_SIDE)
    figure, grid = plt.subplots(
        len(chosen), versions + 1, figsize=(1.1 * (versions + 1), 1.15 * len(chosen)), squeeze=False
    )
    for row, index in enumerate(chosen.tolist()):
        for column in range(versions + 1):
            axes = grid[row, column]
            axes.imshow(
                (originals[row] if column == 0 else warped[row, column - 1]).numpy(), cmap="gray_r", vmin=0, vmax=1
            )
            axes.set_xticks([]), axes.set_yticks([])
            if column == 0:
                axes.set_ylabel(str(int(labels[index])), rotation=0, labelpad=10, fontsize=11)
        if row == 0:
            grid[0, 0].set_title("stored", fontsize=9)
            for column in range(1, versions + 1):
                grid[0, column].set_title("augmented" if column == 1 else "", fontsize=9)
    figure.suptitle(f"Training digits as the net sees them (train.augment: {describe(settings)})", fontsize=10)
    return figure
