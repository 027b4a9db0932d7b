"""Faces of Debian font packages and one glyph drawn in one face: the ``typefaces`` and
``symbols`` sets are both "a class is a character, its images are the faces that draw it".

A face is one font file, kept when its style is a plain weight/slant (Regular, Book, Bold,
Italic, Oblique, Light, Demi, Medium, and their slanted forms; condensed, extra-light and other
widths are left out so a family gives at most a handful of faces) and named by its family,
which is the image's *style* (cross-style retrieval: queries of one family against the others).
Two files with the same (family, style) keep the first in path order.

Which characters a face has is read from its ``cmap`` (fontTools), and every drawing is checked
against the face's own ``.notdef`` drawing and for ink, so a class never holds an empty box.

Drawing (``GlyphPainter``): white ink on black, drawn at 4x and box-downsampled. The em is 62%
of the image and the baseline sits at 74% of its height, so case and position are kept (``o``
and ``O``, ``,`` and ``'`` differ); the ink is centred horizontally. A glyph that would leave the
frame (wide ligatures, tall stacked marks) is centred instead, and scaled down where it is larger.
"""

from __future__ import annotations

import hashlib
import io
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dml_dist.data.sources.debian import package_files

FONT_SUFFIXES = (".ttf", ".otf")
_WEIGHTS = {"regular", "book", "roman", "medium", "light", "demi", "bold"}
_SLANTS = {"italic", "oblique", "slanted"}
_SUPERSAMPLE = 4
_EM = 0.62
_BASELINE = 0.74
_MARGIN = 0.04
_ABSENT = 0x10FFFF  # a noncharacter: no face maps it, so drawing it draws the face's .notdef

# Words in the Unicode names of the CJK (and other East Asian) characters, which are kept for
# the team's independent checks and never enter a set built here.
_EAST_ASIAN_WORDS = ("CJK", "IDEOGRAPH", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO", "KANBUN", "KANGXI")
_EAST_ASIAN_RANGES = (
    (0x1100, 0x11FF),
    (0x2E80, 0x2FFF),
    (0x3000, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xA000, 0xA4CF),  # Yi (wide, from the same typographic tradition)
    (0xA960, 0xA97F),
    (0xAC00, 0xD7FF),
    (0xF900, 0xFAFF),
    (0xFE30, 0xFE4F),
    (0xFF00, 0xFFEF),
    (0x16FE0, 0x18AFF),
    (0x1B000, 0x1B2FF),
    (0x1F200, 0x1F2FF),
    (0x20000, 0x3FFFF),
)


def is_east_asian(codepoint: int) -> bool:
    """True for CJK ideographs, kana, hangul, bopomofo, Yi, Tangut, Nushu and the CJK symbol and
    compatibility blocks."""
    if any(lo <= codepoint <= hi for lo, hi in _EAST_ASIAN_RANGES):
        return True
    return any(word in unicodedata.name(chr(codepoint), "") for word in _EAST_ASIAN_WORDS)


def is_plain_character(codepoint: int, categories: Iterable[str]) -> bool:
    """A named, non-East-Asian character of one of ``categories`` without a compatibility
    decomposition (so no styled copies of another class: math alphanumerics, presentation forms,
    ligatures, circled or fullwidth letters)."""
    char = chr(codepoint)
    return (
        unicodedata.category(char) in categories
        and bool(unicodedata.name(char, ""))
        and not unicodedata.decomposition(char).startswith("<")
        and not is_east_asian(codepoint)
    )


def class_name(codepoint: int) -> str:
    """``U+0416 CYRILLIC CAPITAL LETTER ZHE``: a character class's name in the class index."""
    return f"U+{codepoint:04X} {unicodedata.name(chr(codepoint))}"


@dataclass(frozen=True)
class Face:
    """One font file of a package: its family (the style of its images) and its characters."""

    package: str
    path: Path
    family: str
    subfamily: str
    codepoints: frozenset[int]


def is_plain_style(subfamily: str) -> bool:
    """Regular, Bold, Italic, Bold Oblique, Light, Demi Italic...; not Condensed or ExtraLight."""
    words = subfamily.lower().split()
    if len(words) == 1:
        return words[0] in _WEIGHTS or words[0] in _SLANTS
    return len(words) == 2 and words[0] in _WEIGHTS and words[1] in _SLANTS


def package_faces(packages: Sequence[str], excluded_families: Iterable[str] = ()) -> list[Face]:
    """The plain-style faces of ``packages``, sorted by (family, style), one per (family, style)."""
    try:
        from fontTools.ttLib import TTFont  # the `datasets` extra: only this command needs it
    except ImportError as err:
        raise ValueError("datasets: reading fonts needs fontTools: pip install 'dml-dist[datasets]'") from err

    excluded = set(excluded_families)
    faces: dict[tuple[str, str], Face] = {}
    for package in packages:
        for path in package_files(package, FONT_SUFFIXES):
            font = TTFont(str(path), lazy=True)
            names = font["name"]
            family = str(names.getDebugName(16) or names.getDebugName(1))
            subfamily = str(names.getDebugName(17) or names.getDebugName(2))
            if family in excluded or not is_plain_style(subfamily) or (family, subfamily) in faces:
                continue
            faces[(family, subfamily)] = Face(package, path, family, subfamily, frozenset(font.getBestCmap() or {}))
    return [faces[key] for key in sorted(faces)]


@dataclass(frozen=True)
class Glyph:
    """One character drawn in one face: its pixels (uint8 [size, size]) and their digest."""

    pixels: np.ndarray
    digest: str

    def png(self) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.pixels, mode="L").save(buffer, format="PNG")
        return buffer.getvalue()


class GlyphPainter:
    """Draws characters of one face as ``image_size`` x ``image_size`` grayscale images."""

    def __init__(self, face: Face, image_size: int):
        self.face, self.image_size = face, image_size
        self.canvas = image_size * _SUPERSAMPLE
        self.em = round(_EM * self.canvas)
        self.font = self._font(self.em)
        self.notdef = self._draw(_ABSENT)

    def _font(self, size: int) -> ImageFont.FreeTypeFont:
        # Basic layout: one code point -> its cmap glyph, no shaping (an Arabic letter alone is
        # its isolated form either way), the same on every build of Pillow.
        return ImageFont.truetype(str(self.face.path), size=size, layout_engine=ImageFont.Layout.BASIC)

    def glyph(self, codepoint: int) -> Glyph | None:
        """The drawing, or None where the face draws nothing, its ``.notdef`` box, or an outline
        FreeType cannot raster."""
        try:
            pixels = self._draw(codepoint)
        except OSError:  # "raster overflow": a broken or degenerate outline
            return None
        if pixels is None or (self.notdef is not None and np.array_equal(pixels, self.notdef)):
            return None
        return Glyph(pixels, hashlib.sha1(pixels.tobytes()).hexdigest())

    def _draw(self, codepoint: int) -> np.ndarray | None:
        """uint8 [image_size, image_size], or None when the glyph has no ink."""
        char = chr(codepoint)
        font = self.font
        left, top, right, bottom = font.getbbox(char, anchor="ls")
        if right <= left or bottom <= top:
            return None
        margin = _MARGIN * self.canvas
        baseline = _BASELINE * self.canvas
        fits = right - left <= self.canvas - 2 * margin and top + baseline >= margin
        if fits and bottom + baseline <= self.canvas - margin:
            x, y = self.canvas / 2 - (left + right) / 2, baseline
        else:  # leaves the frame: centred, and scaled down to fit where it is too large
            scale = min(1.0, (self.canvas - 2 * margin) / max(right - left, bottom - top))
            font = self._font(max(1, int(self.em * scale)))
            left, top, right, bottom = font.getbbox(char, anchor="ls")
            x, y = self.canvas / 2 - (left + right) / 2, self.canvas / 2 - (top + bottom) / 2
        image = Image.new("L", (self.canvas, self.canvas), 0)
        ImageDraw.Draw(image).text((x, y), char, fill=255, font=font, anchor="ls")
        small = image.resize((self.image_size, self.image_size), Image.Resampling.BOX)
        pixels = np.asarray(small, dtype=np.uint8)
        return pixels if pixels.max() > 0 else None
