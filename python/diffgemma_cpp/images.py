"""Images for the vision models: decoding a source into RGB pixels (``Image``), and putting images into a prompt.

``load_image(source)`` takes a local path (``str`` or ``Path``), a ``file://`` URL, a ``data:image/...;base64,``
URL, the encoded bytes of an image file, a ``PIL.Image.Image``, a (height, width, 3) or (height, width) uint8
numpy array, or an ``Image``. Remote ``http(s)://`` URLs are refused: diffgemma_cpp never fetches anything.
Decoding files needs Pillow (``pip install "diffgemma-cpp[vision]"``); arrays and ``Image`` objects do not.

The pixels are those HF transformers' Gemma-4 processor works from, for the same input:

- an encoded file (path, URL, bytes): its EXIF orientation applied, then converted to RGB with any alpha channel
  dropped, not composited (HF loads a path / URL / base64 image so: torchvision's ``decode_image(mode=RGB)`` and
  the PIL backend's ``load_image`` give the same pixels for every 8-bit mode, CMYK JPEGs included);
- a ``PIL.Image.Image``: as given, without EXIF rotation, and transparency composited onto white (HF's
  ``convert_to_rgb``, which its processor applies to image objects);
- 16-bit grayscale (PNG ``I;16``): scaled to 8 bits (v / 257). Here we differ from HF on purpose: it hands the
  16-bit values on unscaled (torchvision) or clips them at 255 (Pillow), neither of which is the picture.

The pixel cap ``MAX_PIXELS`` is the C header's ``DIFFGEMMA_IMAGE_MAX_PIXELS``; a file is measured by the size
its header declares, before any pixel is decoded (a decompression bomb never gets allocated).

In a chat, an image is an OpenAI content part ``{"type": "image_url", "image_url": {"url": ...}}`` or HF's
``{"type": "image", "url" | "path" | "image" | "base64": ...}``. ``split_image_parts`` turns the first form into
the second, as HF's processor does before rendering (so the template renders each image as its marker, for
Gemma-4 ``<|image|>``), and collects the sources in order; ``expand_image_markers`` then writes each marker as
HF's ``Gemma4Processor`` does: begin-of-image, one image soft token per projector output row, end-of-image.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import sys
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._native import lib
from .errors import ImageError, VisionDependencyError

__all__ = ["Image", "MAX_PIXELS", "BOI_TEXT", "EOI_TEXT", "load_image", "c_images", "split_image_parts",
           "expand_image_markers"]

MAX_PIXELS = int(lib.DIFFGEMMA_IMAGE_MAX_PIXELS)

# Gemma-4's begin- and end-of-image tokens (HF tokenizer boi_token / eoi_token; ids 255999 / 258882 in the
# release vocabulary). The image soft token between them is the model's (Model.image_token, "<|image|>").
BOI_TEXT = "<|image>"
EOI_TEXT = "<image|>"

# Keys of an HF image content part that name its image, in the order HF's processor reads them.
_HF_IMAGE_KEYS = ("image", "url", "path", "base64")
_PIP_HINT = 'pip install "diffgemma-cpp[vision]"'
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Image:
    """Decoded pixels: ``height`` rows of ``width`` RGB triples, 8 bits each, no row padding (``diffgemma_image``)."""

    width: int
    height: int
    rgb: bytes = field(repr=False)

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ImageError(f"Image.{name} must be a positive integer, got {value!r}")
        _check_pixels(self.width, self.height, "the image")
        if isinstance(self.rgb, (bytearray, memoryview)):
            object.__setattr__(self, "rgb", bytes(self.rgb))
        if not isinstance(self.rgb, bytes):
            raise ImageError(f"Image.rgb must be bytes, got {type(self.rgb).__name__}")
        if len(self.rgb) != self.width * self.height * 3:
            raise ImageError(f"Image.rgb holds {len(self.rgb)} bytes; a {self.width}x{self.height} RGB image "
                             f"needs width * height * 3 = {self.width * self.height * 3}")

    def to_numpy(self) -> np.ndarray:
        """The pixels as a read-only (height, width, 3) uint8 array (no copy)."""
        return np.frombuffer(self.rgb, dtype=np.uint8).reshape(self.height, self.width, 3)


def _check_pixels(width: int, height: int, what: str) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"{what} is empty ({width}x{height} pixels)")
    if width * height > MAX_PIXELS:
        raise ImageError(f"{what} has {width}x{height} = {width * height} pixels, over the limit of {MAX_PIXELS} "
                         "(DIFFGEMMA_IMAGE_MAX_PIXELS); scale it down first")


# ---- decoding ------------------------------------------------------------------------------------


def load_image(source: Any) -> Image:
    """Decode ``source`` into an ``Image`` (see the module docstring for the sources and the pixels).

    Raises ``ImageError`` for a source we refuse or cannot decode (a remote URL, a missing file, data that is not
    an image, too many pixels) and ``VisionDependencyError`` when decoding it needs Pillow and it is missing."""
    if isinstance(source, Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _from_file(io.BytesIO(bytes(source)), "the image data")
    if isinstance(source, os.PathLike):
        return _from_path(Path(source))
    if isinstance(source, str):
        return _from_text(source)
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(source, pil.Image):
        return _from_pil_object(source)
    raise ImageError(f"cannot read an image from a {type(source).__name__}: give a local path, a data: or file:// "
                     "URL, the file's bytes, a PIL image or a (height, width, 3) uint8 array")


def _from_text(text: str) -> Image:
    head = text[:64].lower()
    if head.startswith("data:"):
        return _from_file(io.BytesIO(_data_url_bytes(text)), "the data: URL")
    if head.startswith("file://"):
        return _from_path(_file_url_path(text))
    if head.startswith(("http://", "https://")):
        raise ImageError("remote image URLs are refused: diffgemma_cpp never fetches anything from the network; "
                         "download the image and pass a local path or a data:image/...;base64 URL")
    if _URL_SCHEME.match(head):
        raise ImageError(f"unsupported image URL scheme {head.split('://', 1)[0]!r}: give a local path, a file:// "
                         "or a data:image/...;base64 URL")
    if not text:
        raise ImageError("the image source is an empty string")
    return _from_path(Path(text))


def _data_url_bytes(url: str) -> bytes:
    comma = url.find(",")
    if comma < 0:
        raise ImageError("malformed data: URL (no comma before the data); expected data:image/png;base64,...")
    params = [p.strip().lower() for p in url[5:comma].split(";")]
    if params[0] and not params[0].startswith("image/"):
        raise ImageError(f"the data: URL's type is {params[0]!r}, not an image/... type")
    if "base64" not in params[1:]:
        raise ImageError("only base64 data: URLs are supported (data:image/png;base64,...)")
    return _base64_bytes(url[comma + 1:], "the data: URL")


def _base64_bytes(text: str, what: str) -> bytes:
    payload = "".join(text.split())
    payload += "=" * (-len(payload) % 4)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"{what} is not valid base64: {exc}") from None


def _file_url_path(url: str) -> Path:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ImageError(f"file:// URLs must name a local file (host {parts.netloc!r} is not this machine)")
    return Path(urllib.request.url2pathname(parts.path))


def _from_path(path: Path) -> Image:
    if not path.is_file():
        raise ImageError(f"no such image file: {path}")
    return _from_file(path, f"the image file {path}")


def _pil() -> Any:
    try:
        import PIL.Image
        import PIL.ImageOps  # noqa: F401 - exif_transpose
    except ImportError:
        raise VisionDependencyError(f"decoding image files needs Pillow: {_PIP_HINT} (or pass the pixels as a "
                                    "(height, width, 3) uint8 numpy array)") from None
    return PIL.Image


def _from_file(file: Any, what: str) -> Image:
    """Decode an encoded image (a path or a binary stream) as HF loads a path / URL / base64 image."""
    pil = _pil()
    import PIL.ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pil.DecompressionBombWarning)  # our cap is the lower one
            image = pil.open(file)
    except pil.DecompressionBombError as exc:
        raise ImageError(f"{what} is too large to decode safely: {exc}") from None
    except pil.UnidentifiedImageError:
        raise ImageError(f"{what} is not an image format we can read (Pillow could not identify it)") from None
    except OSError as exc:
        raise ImageError(f"{what} could not be read: {exc}") from None
    with image:
        _check_pixels(image.width, image.height, what)  # the header's size: nothing decoded yet
        try:
            image.load()
            upright = PIL.ImageOps.exif_transpose(image)
            return _rgb_from_pil(upright, composite_alpha=False)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise OSError, SyntaxError, ValueError, ...
            raise ImageError(f"{what} could not be decoded: {type(exc).__name__}: {exc}") from None


def _from_pil_object(image: Any) -> Image:
    """A caller's PIL image, as HF's processor takes an image object (no EXIF rotation; alpha onto white)."""
    _check_pixels(image.width, image.height, "the PIL image")
    try:
        return _rgb_from_pil(image, composite_alpha=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a lazily opened image decodes here
        raise ImageError(f"the PIL image could not be converted to RGB: {type(exc).__name__}: {exc}") from None


def _rgb_from_pil(image: Any, *, composite_alpha: bool) -> Image:
    pil = sys.modules["PIL.Image"]
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _from_array(_sixteen_bit_to_8(np.asarray(image)))
    if composite_alpha and ("A" in image.getbands() or image.info.get("transparency") is not None):
        rgba = image.convert("RGBA")
        white = pil.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = pil.alpha_composite(white, rgba).convert("RGB")
    else:
        rgb = image.convert("RGB")
    return Image(rgb.width, rgb.height, rgb.tobytes())


def _sixteen_bit_to_8(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":  # mode F: taken as already on the 8-bit scale, as Pillow's own conversion does
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    scaled = (values.astype(np.int64) * 255 + 32767) // 65535  # round(v / 257) without floating point
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _from_array(array: np.ndarray) -> Image:
    if array.dtype != np.uint8:
        raise ImageError(f"an image array must hold uint8 values 0..255, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        height, width = array.shape
        _check_pixels(width, height, "the image array")
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 3:
        height, width = array.shape[:2]
        _check_pixels(width, height, "the image array")
    else:
        raise ImageError(f"an image array must be (height, width, 3) RGB or (height, width) gray, got shape "
                         f"{array.shape} (composite an alpha channel first, or pass a PIL image)")
    return Image(int(width), int(height), np.ascontiguousarray(array).tobytes())


def c_images(images: list) -> tuple[Any, list]:
    """``(array, keep)``: ``images`` as a C ``diffgemma_image[]`` (for ``diffgemma_set_images``, which copies them);
    ``keep`` holds the array and the pixel buffers alive until that call returns."""
    from ._native import ffi

    array = ffi.new("diffgemma_image[]", max(len(images), 1))
    keep: list = [array]
    for slot, image in zip(array, images):
        if not isinstance(image, Image):
            raise ImageError(f"expected a diffgemma_cpp.images.Image, got {type(image).__name__} (see load_image)")
        pixels = ffi.from_buffer("uint8_t[]", image.rgb)
        keep.append(pixels)
        slot.rgb, slot.width, slot.height = pixels, image.width, image.height
    return array, keep


# ---- images in a chat ----------------------------------------------------------------------------


def _is_image_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in ("image_url", "image")


def split_image_parts(messages: Any) -> tuple[Any, list]:
    """``(messages for the template, image sources in order)``.

    OpenAI ``image_url`` parts become HF's ``{"type": "image", "url": ...}`` (what HF's processor hands its
    template); HF ``image`` parts pass unchanged. The sources are in message order, then content order, as HF's
    processor collects them; a message list without image parts comes back as it was."""
    if not isinstance(messages, (list, tuple)):
        return messages, []
    sources: list = []
    out = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list) or not any(_is_image_part(p) for p in content):
            out.append(message)
            continue
        parts = []
        for j, part in enumerate(content):
            if not _is_image_part(part):
                parts.append(part)
                continue
            where = f"messages[{i}].content[{j}]"
            if part["type"] == "image_url":
                info = part.get("image_url")
                url = info.get("url") if isinstance(info, dict) else info
                if not isinstance(url, str) or not url:
                    raise ImageError(f"{where}: an image_url part needs image_url.url (a data: URL, a file:// URL "
                                     "or a local path)")
                parts.append({"type": "image", "url": url})
                sources.append(url)
            else:
                named = [k for k in _HF_IMAGE_KEYS if part.get(k) is not None]
                if len(named) != 1:
                    raise ImageError(f"{where}: an image part needs exactly one of {', '.join(_HF_IMAGE_KEYS)}"
                                     + (f", got {', '.join(named)}" if named else ""))
                value = part[named[0]]
                if named[0] == "base64":
                    if not isinstance(value, str):
                        raise ImageError(f"{where}: 'base64' must be a string")
                    value = _base64_bytes(value, f"{where}.base64")
                parts.append(part)
                sources.append(value)
        out.append({**message, "content": parts})
    return out, sources


def expand_image_markers(text: str, images: list, *, marker: str, image_token: int, boi: int, eoi: int,
                         n_tokens: Callable[[int, int], int], tokenize: Callable[[str, bool], list]) -> list[int]:
    """The token ids of a rendered prompt whose image markers (``marker``: the image token's text, written once per
    image part by the template) each become ``boi``, ``n_tokens(width, height)`` x ``image_token``, ``eoi``, as HF's
    Gemma4Processor expands them; image i fills the i-th marker. The text between markers is tokenized piece by
    piece (``tokenize(text, add_bos)``, specials parsed), which equals tokenizing the expanded text whole: the
    begin- and end-of-image tokens are special tokens, where the tokenizer splits anyway."""
    pieces = text.split(marker)
    if len(pieces) - 1 != len(images):
        raise ImageError(f"the chat template wrote {len(pieces) - 1} image marker(s) {marker!r} for {len(images)} "
                         f"image(s): each image part must be rendered once (does the text itself contain "
                         f"{marker!r}, or does this template drop images?)")
    ids = list(tokenize(pieces[0], True))
    for image, piece in zip(images, pieces[1:]):
        count = int(n_tokens(image.width, image.height))
        if count < 1:
            raise ImageError(f"the projector gives no soft tokens for a {image.width}x{image.height} image")
        ids.append(boi)
        ids.extend([image_token] * count)
        ids.append(eoi)
        ids.extend(tokenize(piece, False))
    return ids
