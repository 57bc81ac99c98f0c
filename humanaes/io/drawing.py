"""Text on Pillow images, shared by the evaluation plots and the data-build contact sheets."""

from __future__ import annotations

from PIL import ImageDraw, ImageFont

_BLACK = (20, 20, 20)


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at `size` pixels."""
    # Pillow >= 10.1 ships a scalable default font when FreeType is present; older or
    # FreeType-less builds fall back to the small bitmap font (still readable).
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - old Pillow
        return ImageFont.load_default()



def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, fill=_BLACK, anchor: str = "mm") -> None:
    """Draw text anchored at xy: anchor[0] in l/m/r (horizontal), anchor[1] in t/m (vertical).

    Positioned from the text's bounding box rather than Pillow's `anchor=`, which bitmap
    fonts (the fallback without FreeType) do not support.
    """
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    # Vertical placement from a fixed reference string, so labels with and without descenders
    # ("poor", "bad") sit on the same baseline.
    _, top, _, bottom = draw.textbbox((0, 0), "Hg", font=font)
    w, h = right - left, bottom - top
    x = xy[0] - left - {"l": 0, "m": w / 2, "r": w}[anchor[0]]
    y = xy[1] - top - {"t": 0, "m": h / 2}[anchor[1]]
    draw.text((x, y), text, font=font, fill=fill)
