"""Classify a person's own digit images: MNIST's preprocessing, then the trained model.

MNIST digits are light on dark, cropped to their bounding box, scaled (aspect kept,
anti-aliased) so the longer side is 20 px, then pasted into a 28x28 field with the
center of mass at (14, 14). A photo, scan or drawing gets the same treatment here, so
the model sees what it was trained on whatever the image's size, colors or margins.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from mnist_mlp.data.mnist import IMAGE_SIDE as FIELD
from mnist_mlp.data.mnist import INPUT_SIZE, NUM_CLASSES
from mnist_mlp.errors import UserError

BOX = 20
CENTER = 14.0  # where MNIST's centers of mass sit (measured on the test split: 13.99, 14.00)
# Ink contrast (0..1) below which an image counts as blank: a flat page plus JPEG noise.
MIN_CONTRAST = 0.15
# After stretching ink to 0..1, fainter pixels are paper grain or JPEG ringing, not strokes.
INK_FLOOR = 0.2
# Specks with less than this share of the ink are dust and must not stretch the bounding box.
MIN_BLOB_SHARE = 0.02
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # 16-bit, 32-bit integer and float greyscale


class ImageError(UserError, ValueError):
    """One image that cannot be classified; the message names the file and why."""


class ModelError(UserError, ValueError):
    """A model that does not map (B, 784) pixels in [0, 1] to (B, 10) probabilities."""


@dataclass
class Prediction:
    file: str
    label: int | None = None
    top_k: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {
            "file": self.file,
            "label": self.label,
            "top_k": [{"label": label, "probability": probability} for label, probability in self.top_k],
        }


def load_image(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    if not path.is_file():
        raise ImageError(f"{path}: not a file; expected a PNG or JPEG image")
    try:
        with Image.open(path) as image:
            image.load()
            # phone photos store their rotation in EXIF instead of rotating the pixels
            return ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read; expected a PNG or JPEG") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: unreadable image ({exc}); expected a PNG or JPEG") from None


def grayscale(image: Image.Image) -> np.ndarray:
    """(H, W) float32 in [0, 1]; transparency is flattened onto a backdrop that contrasts with the ink."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3]
        luminance = np.asarray(image.convert("RGBA").convert("L"), dtype=np.float32) / 255.0
        ink_is_light = alpha.sum() > 0 and float((luminance * alpha).sum() / alpha.sum()) > 0.5
        backdrop = 0.0 if ink_is_light else 1.0
        return luminance * alpha + backdrop * (1.0 - alpha)
    if image.mode in DEEP_MODES:  # convert("L") would clip every value above 255 to white
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        return np.clip(values / _white_level(image.mode, values), 0.0, 1.0).astype(np.float32)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _white_level(mode: str, values: np.ndarray) -> float:
    """The value that is white: 65535 for 16-bit (a 16-bit PNG may open as "I"); for "F" 1 or 255 as its values say."""
    top = float(values.max(initial=0.0))
    levels = (1.0, 255.0, 65535.0) if mode == "F" else (65535.0,)
    return next((level for level in levels if top <= level), top)


def mnist_pixels(gray: np.ndarray, name: str = "image") -> np.ndarray:
    """A grayscale image (H, W) in [0, 1] -> the 28x28 MNIST form, light digit on black, in [0, 1]."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    ink = 1.0 - gray if background > 0.5 else gray.copy()  # MNIST is light on dark
    ink -= min(background, 1.0 - background)
    contrast = float(ink.max())
    if contrast < MIN_CONTRAST:
        raise ImageError(f"{name}: no digit found (blank or uniform image, contrast {max(contrast, 0):.2f})")
    ink = np.clip(ink / contrast, 0.0, 1.0)
    ink[ink < INK_FLOOR] = 0.0
    ink = _without_specks(ink)

    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.LANCZOS))
    small = np.clip(small, 0.0, None)
    small /= small.max()  # thin strokes from a large image must not fade to gray

    center_row, center_col = ndimage.center_of_mass(small)
    top = int(np.clip(round(CENTER - center_row), 0, FIELD - small.shape[0]))
    left = int(np.clip(round(CENTER - center_col), 0, FIELD - small.shape[1]))
    out = np.zeros((FIELD, FIELD), dtype=np.float32)
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out


def _without_specks(ink: np.ndarray) -> np.ndarray:
    blobs, count = ndimage.label(ink > 0, structure=np.ones((3, 3)))
    if count <= 1:
        return ink
    mass = ndimage.sum(ink, blobs, index=np.arange(1, count + 1))
    keep = np.concatenate([[False], mass >= MIN_BLOB_SHARE * mass.sum()])
    return np.where(keep[blobs], ink, 0.0)


def image_pixels(path: str | Path) -> np.ndarray:
    """The 784 pixels in [0, 1] the model takes for the image at `path` (float32)."""
    return mnist_pixels(grayscale(load_image(path)), name=str(path)).reshape(INPUT_SIZE)


def is_mlflow_model(model: str) -> bool:
    """An MLflow model URI, or a folder holding an MLflow model (its MLmodel file)."""
    return model.startswith(("runs:/", "models:/")) or (Path(model) / "MLmodel").is_file()


def load_classifier(model: str) -> torch.nn.Module:
    """Pixels in [0, 1] (B, 784) -> probabilities (B, 10), from a checkpoint or an MLflow model.

    Neither path unpickles code: checkpoints load with weights_only=True, MLflow models
    are torch.export programs (see loading.load_pixel_classifier).
    """
    if is_mlflow_model(model):
        from mnist_mlp.tracking import loading

        classifier = loading.load_pixel_classifier(model)
    else:
        from mnist_mlp.core.checkpoint import load_checkpoint

        classifier = load_checkpoint(model).classifier()
    check_classifier(classifier, model)
    return classifier


def check_classifier(classifier: torch.nn.Module, model: str) -> None:
    """One row of 784 pixels must give one row of 10 probabilities."""
    probe = torch.full((1, INPUT_SIZE), 0.5)
    try:
        with torch.no_grad():
            out = classifier(probe)
    except Exception as exc:  # noqa: BLE001 - whatever a foreign module raises on the wrong shape
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{model}: model does not take one row of {INPUT_SIZE} pixels ({reason})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, NUM_CLASSES):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{model}: model returns {shape} for one image, expected (1, {NUM_CLASSES}) probabilities")
    if not torch.allclose(out.sum(dim=1), torch.ones(1), atol=1e-3) or bool((out < 0).any()):
        raise ModelError(f"{model}: model returns scores that are not probabilities (rows must sum to 1)")


def predict_files(paths: Sequence[str | Path], classifier: torch.nn.Module, top_k: int = 3) -> list[Prediction]:
    """One Prediction per path, in order; an unusable image gets its error, the others are still classified."""
    if not 1 <= top_k <= NUM_CLASSES:
        raise UserError(f"--top-k {top_k}: expected 1 to {NUM_CLASSES}")
    results, rows, pixels = [], [], []
    for path in paths:
        try:
            pixels.append(image_pixels(path))
            rows.append(len(results))
            results.append(Prediction(file=str(path)))
        except ImageError as exc:
            results.append(Prediction(file=str(path), error=str(exc)))
    if pixels:
        with torch.no_grad():
            probabilities = classifier(torch.from_numpy(np.stack(pixels)))  # (N, 10)
        values, labels = probabilities.topk(top_k, dim=1)
        for row, top_values, top_labels in zip(rows, values.tolist(), labels.tolist()):
            results[row].label = top_labels[0]
            results[row].top_k = [(int(label), float(value)) for label, value in zip(top_labels, top_values)]
    return results


def format_text(results: list[Prediction]) -> str:
    """`file: label  (label p%, ...)` per classified image; failures are reported separately."""
    lines = []
    for result in results:
        if result.error is None:
            ranked = ", ".join(f"{label} {100 * probability:.1f}%" for label, probability in result.top_k)
            lines.append(f"{result.file}: {result.label}  ({ranked})")
    return "\n".join(lines)


def format_json(results: list[Prediction], model: str) -> str:
    return json.dumps({"model": model, "predictions": [result.as_dict() for result in results]}, indent=2)
