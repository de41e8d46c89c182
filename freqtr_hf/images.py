"""The one image reader of the project: evaluation, analysis, fine-tuning and the Space all read images here.

Every mode Pillow opens becomes 8-bit RGB the way a person sees it: 16-bit and 32-bit integer images are scaled to
8 bits (Pillow's own `convert("RGB")` clips them, which turns a 16-bit photo white), float images are scaled from
their range, transparency is composited over white, and the EXIF orientation is applied. A file that cannot be read raises `ImageReadError` naming
the file; an image over `max_pixels` is refused from its header, before it is decoded.

Only the formats people keep photos in are read (`IMAGE_FORMATS`); Pillow is never asked to try its other readers,
some of which run external programs (its EPS reader starts Ghostscript) or parse document formats.
"""

import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


DEFAULT_MAX_PIXELS = 40_000_000
# Pillow's names of the formats read; anything else is refused unread, whatever its file name says
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# what a refused file most likely is, for the message: leading bytes of common non-image uploads
DOCUMENT_SIGNATURES = {b"%!PS": "a PostScript document", b"\xc5\xd0\xd3\xc6": "an EPS document", b"%PDF": "a PDF document"}
ACCEPTED = "JPEG, PNG, WebP, GIF, BMP or TIFF"


class ImageReadError(ValueError):
    """An image file that cannot be read, with the file's name in the message."""


def to_rgb(image: Image.Image) -> Image.Image:
    """An opened image of any mode as 8-bit RGB: integer modes scaled by their bit depth, float modes by their
    range, transparency over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            scale, low = 65535.0, 0.0
        elif image.mode == "I":
            # 32-bit integer images (Pillow's mode for most 16-bit PNGs): 16-bit range unless values exceed it
            scale, low = (65535.0 if values.max(initial=0) <= 65535 else float(values.max())), 0.0
        else:
            low, high = float(values.min(initial=0)), float(values.max(initial=0))
            scale = max(high - low, 1e-12)
        image = Image.fromarray(((values - low) * 255.0 / scale).clip(0, 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


ImageSource = str | os.PathLike | Image.Image | dict


def read_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An 8-bit RGB image from a file path, an opened (possibly lazily decoded) Pillow image, or an undecoded
    `datasets` image (`{"path": ..., "bytes": ...}`, from `Image(decode=False)`).

    Raises `ImageReadError` naming the file when it is not an image, is truncated or corrupt, or holds more than
    `max_pixels` pixels (checked from the header, before decoding)."""
    name = _image_name(source)
    try:
        if isinstance(source, dict):
            data = source.get("bytes")
            image = _open(io.BytesIO(data) if data is not None else source["path"], name)
        elif isinstance(source, (str, os.PathLike)):
            image = _open(source, name)
        else:
            image = source
        width, height = image.size
        if width * height > max_pixels:
            raise ImageReadError(
                f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels, over the limit of "
                f"{max_pixels / 1e6:.0f}; downscale it"
            )
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))  # phone photos upright, as a browser shows them
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"{name}: not a readable image ({type(error).__name__}: {error})") from error


def _open(file: str | os.PathLike | io.BytesIO, name: str) -> Image.Image:
    """Open (not decode) a file with Pillow's readers of `IMAGE_FORMATS` alone."""
    try:
        return Image.open(file, formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        if isinstance(file, io.BytesIO):
            head = file.getvalue()[:4]
        else:
            with open(file, "rb") as handle:
                head = handle.read(4)
        kind = next((what for signature, what in DOCUMENT_SIGNATURES.items() if head.startswith(signature)), None)
        raise ImageReadError(
            f"{name}: {'is ' + kind + ', not an image' if kind else 'not a readable image'}; the images read here are "
            f"{ACCEPTED} files"
        ) from None


def _image_name(source: ImageSource) -> str:
    """The file a source came from, for messages."""
    if isinstance(source, dict):
        return str(source.get("path") or "image")
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "filename", "") or "image")
