"""Digit pictures drawn with Pillow's bundled font, and a tiny model that reads them.

Real MNIST is off limits to tests, so the predict tests need digits of their own: glyphs
rendered like a person's image (any canvas, colors, margins, JPEG), and a small MLP
trained on MNIST-form versions of plain renders, saved as a real checkpoint.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mnist_mlp.core.checkpoint import save_checkpoint
from mnist_mlp.core.model import MLP
from mnist_mlp.data.mnist import Normalization
from mnist_mlp.serving.predict import mnist_pixels

# (canvas size, glyph size, where, ink RGB, paper RGB, format): how people's images differ
STYLES = {
    "black-on-white": ((200, 200), 120, (40, 20), (0, 0, 0), (255, 255, 255), "PNG"),
    "white-on-black-small": ((40, 40), 28, (8, 4), (255, 255, 255), (0, 0, 0), "PNG"),
    "blue-on-yellow-jpeg": ((300, 240), 150, (90, 30), (30, 40, 170), (250, 230, 120), "JPEG"),
    "off-center-large": ((1200, 800), 160, (950, 560), (40, 40, 40), (235, 235, 235), "PNG"),
    "light-on-dark-gray": ((160, 300), 90, (20, 150), (220, 220, 220), (60, 60, 60), "JPEG"),
}


def glyph(digit: int, size: int, stroke: int = 0, angle: float = 0.0) -> Image.Image:
    """The digit in white on black ("L"), on a canvas just larger than the glyph."""
    font = ImageFont.load_default(size=size)
    canvas = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(canvas).text(
        (size // 2, size // 3), str(digit), fill=255, font=font, stroke_width=stroke, stroke_fill=255
    )
    return canvas.rotate(angle, resample=Image.Resampling.BICUBIC).crop(canvas.getbbox())


def picture(digit: int, style: str) -> Image.Image:
    canvas_size, size, where, ink, paper, _ = STYLES[style]
    mask = glyph(digit, size, stroke=max(1, size // 25))
    canvas = Image.new("RGB", canvas_size, paper)
    canvas.paste(Image.new("RGB", mask.size, ink), where, mask)
    return canvas


def save_picture(image: Image.Image, path: Path, image_format: str = "PNG") -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({"quality": 80} if image_format == "JPEG" else {}))
    path.write_bytes(buffer.getvalue())
    return path


def write_styled_digits(folder: Path) -> dict[Path, int]:
    """Every digit in every style, as files; returns path -> true label."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for style, spec in STYLES.items():
        suffix = ".jpg" if spec[-1] == "JPEG" else ".png"
        for digit in range(10):
            truth[save_picture(picture(digit, style), folder / f"{digit}-{style}{suffix}", spec[-1])] = digit
    return truth


def training_set() -> tuple[np.ndarray, np.ndarray]:
    """(N, 784) pixels in [0, 1] and labels: plain renders in several sizes, strokes and slants."""
    pixels, labels = [], []
    for digit in range(10):
        for size in (40, 60, 90):
            for stroke in (0, 1, 2, 3):
                for angle in (-8, 0, 8):
                    image = np.asarray(glyph(digit, size, stroke * size // 30, angle), dtype=np.float32) / 255
                    pixels.append(mnist_pixels(image).reshape(-1))
                    labels.append(digit)
    return np.stack(pixels), np.array(labels)


FONT_NORMALIZATION = Normalization(mean=0.13, std=0.31)


def train_font_model(path: Path, normalization: Normalization = FONT_NORMALIZATION) -> Path:
    """A tiny MLP that reads the rendered digits, saved as a real checkpoint with `normalization`."""
    torch.manual_seed(0)
    pixels, labels = training_set()
    inputs = (torch.from_numpy(pixels) - normalization.mean) / normalization.std
    targets = torch.from_numpy(labels)
    model = MLP([64], "relu", 0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    model.eval()
    params = {"train": {"hidden_sizes": [64], "activation": "relu", "dropout": 0.0}}
    save_checkpoint(path, model, normalization, params, {"epochs": 1, "device": "cpu"})
    return path
