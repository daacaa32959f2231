"""Synthetic product shots: distinct, repeatable from the seed, cheap to make."""

from __future__ import annotations

import colorsys
import hashlib
import io
import random

#: Sides of the synthetic product shots, in pixels (a catalogue photo's order of size).
DEFAULT_SIZE = (400, 800)


def synthetic_image(rng: random.Random, size: tuple[int, int] = DEFAULT_SIZE) -> tuple[bytes, str]:
    """A product shot: a coloured object on a plain or gradient light background."""
    from PIL import Image, ImageDraw

    width, height = rng.randint(*size), rng.randint(*size)

    def light() -> tuple[int, int, int]:
        return tuple(rng.randint(200, 255) for _ in range(3))  # type: ignore[return-value]

    if rng.random() < 0.5:
        image = Image.new("RGB", (width, height), light())
    else:
        mask = Image.linear_gradient("L").rotate(rng.choice([0, 90, 180, 270]))
        image = Image.composite(
            Image.new("RGB", (width, height), light()),
            Image.new("RGB", (width, height), light()),
            mask.resize((width, height)),
        )
    red, green, blue = colorsys.hsv_to_rgb(
        rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.3, 0.8)
    )
    colour = (int(red * 255), int(green * 255), int(blue * 255))
    x0, y0 = int(width * rng.uniform(0.1, 0.3)), int(height * rng.uniform(0.1, 0.3))
    x1, y1 = int(width * rng.uniform(0.7, 0.9)), int(height * rng.uniform(0.7, 0.9))
    draw = ImageDraw.Draw(image)
    shape = rng.choice(["ellipse", "rectangle", "polygon"])
    if shape == "ellipse":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif shape == "rectangle":
        draw.rounded_rectangle((x0, y0, x1, y1), radius=rng.randint(0, 30), fill=colour)
    else:
        points = [(rng.randint(x0, x1), rng.randint(y0, y1)) for _ in range(rng.randint(3, 7))]
        draw.polygon(points, fill=colour)
        draw.ellipse(
            ((x0 + x1) // 2 - 30, (y0 + y1) // 2 - 30, (x0 + x1) // 2 + 30, (y0 + y1) // 2 + 30),
            fill=colour,
        )
    buffer = io.BytesIO()
    if rng.random() < 0.7:
        image.save(buffer, "JPEG", quality=rng.randint(80, 95))
        return buffer.getvalue(), ".jpg"
    image.save(buffer, "PNG")
    return buffer.getvalue(), ".png"


class ImageSource:
    """Distinct synthetic images (no two byte-identical), repeatable from the seed."""

    def __init__(self, seed: int, size: tuple[int, int] = DEFAULT_SIZE):
        self._rng = random.Random(seed)
        self._size = size
        self._seen: set[str] = set()

    def next(self) -> tuple[bytes, str]:
        while True:
            data, ext = synthetic_image(self._rng, self._size)
            digest = sha256(data)
            if digest not in self._seen:
                self._seen.add(digest)
                return data, ext


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
