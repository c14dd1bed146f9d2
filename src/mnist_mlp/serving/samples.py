"""Real MNIST test digits rendered the way people's own images look, for trying `mnist-mlp predict`.

One digit per class (the first of each in the test split), each in a different style:
dark ink on white paper, large canvases, off-center, colored, JPEG, transparent PNG.
The true label starts each file name (`7-blue-on-yellow.png`), so a check can score them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from mnist_mlp import files
from mnist_mlp.data.mnist import load_split
from mnist_mlp.errors import UserError

Style = Callable[[Image.Image], Image.Image]  # grayscale "L", light digit on black, enlarged -> picture


def _ink_on_paper(ink: tuple[int, int, int], paper: tuple[int, int, int]) -> Style:
    def render(digit: Image.Image) -> Image.Image:
        return Image.composite(Image.new("RGB", digit.size, ink), Image.new("RGB", digit.size, paper), digit)

    return render


def _on_canvas(size: tuple[int, int], at: tuple[int, int], style: Style) -> Style:
    def render(digit: Image.Image) -> Image.Image:
        canvas = Image.new("L", size, 0)
        canvas.paste(digit, at)
        return style(canvas)

    return render


def _transparent(digit: Image.Image) -> Image.Image:
    black = Image.new("RGBA", digit.size, (0, 0, 0, 0))
    black.putalpha(digit)
    return black


# name -> (scale of the 28x28 digit, how it is drawn, file format)
STYLES: list[tuple[str, int, Style, str]] = [
    ("black-on-white", 10, _ink_on_paper((0, 0, 0), (255, 255, 255)), "PNG"),
    ("white-on-black-original-size", 1, lambda digit: digit, "PNG"),
    ("blue-on-yellow", 8, _ink_on_paper((20, 40, 160), (250, 235, 140)), "PNG"),
    (
        "off-center-large-canvas",
        6,
        _on_canvas((640, 480), (40, 260), _ink_on_paper((30, 30, 30), (240, 240, 240))),
        "PNG",
    ),
    ("jpeg-pencil-on-gray", 12, _ink_on_paper((70, 70, 70), (200, 200, 190)), "JPEG"),
    ("small-in-corner", 3, _on_canvas((400, 300), (300, 10), _ink_on_paper((0, 0, 0), (255, 255, 255))), "PNG"),
    ("red-on-white-jpeg", 5, _ink_on_paper((200, 20, 20), (255, 255, 255)), "JPEG"),
    ("white-on-green", 9, _ink_on_paper((255, 255, 255), (20, 110, 60)), "PNG"),
    ("transparent-background", 10, _transparent, "PNG"),
    ("light-on-dark-wide-canvas", 7, _on_canvas((900, 300), (600, 60), lambda canvas: canvas), "JPEG"),
]


def render_samples(test_split: str | Path, out_dir: str | Path) -> list[Path]:
    """Write one styled image per digit 0-9 to `out_dir`; return their paths."""
    split = load_split(test_split)
    labels = split.labels.numpy()
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out_dir}: {exc.strerror}") from None
    written = []
    for digit, (name, scale, style, image_format) in enumerate(STYLES):
        index = int(np.flatnonzero(labels == digit)[0])
        image = Image.fromarray(split.images[index].numpy())
        image = image.resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
        picture = style(image)
        suffix = ".jpg" if image_format == "JPEG" else ".png"
        path = out_dir / f"{digit}-{name}{suffix}"
        buffer = io.BytesIO()
        picture.save(buffer, format=image_format, **({"quality": 85} if image_format == "JPEG" else {}))
        try:
            files.write_bytes(path, buffer.getvalue())
        except OSError as exc:  # a read-only folder, a full disk
            raise UserError(f"cannot write {path}: {exc.strerror}") from None
        written.append(path)
    return written
