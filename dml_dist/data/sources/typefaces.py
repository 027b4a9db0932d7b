"""``typefaces``: a class is a character, its images are that character in the faces of Debian's
font packages (grayscale, white on black).

Characters: letters and digits (Unicode categories Lu, Ll, Lt, Lo, Nd) of every script the
packages draw (Latin, Greek, Cyrillic, Armenian, Georgian, Hebrew, Arabic, Devanagari, Thai,
Ethiopic, Cherokee, Canadian syllabics...), never CJK, kana or hangul (kept for the team's
independent checks), and never a compatibility character (``fonts.is_plain_character``). A class
needs at least 4 faces from at least 3 families; homoglyphs across scripts are merged into the
first (``glyphs``). The style of an image is its font family.

The tiny variant (tests): three small packages (DejaVu, FreeFont, Liberation), Latin, Greek and Cyrillic only, 40
classes drawn at random (seeded) from those that qualify.
"""

from __future__ import annotations

import unicodedata

from dml_dist.data.sources.debian import installed_versions
from dml_dist.data.sources.fonts import is_plain_character, package_faces
from dml_dist.data.sources.glyphs import font_classes
from dml_dist.data.sources.writing import BuildSettings, BuiltSet

NAME = "typefaces"
SUMMARY = "printed letters and digits of many scripts (no CJK), a class per character, an image per typeface"
DEFAULT_IMAGE_SIZE = 32
GENERATOR_VERSION = 1
# Package -> licence of the fonts it ships (from its /usr/share/doc/PACKAGE/copyright).
PACKAGES = {
    "fonts-dejavu-core": "Bitstream Vera licence (DejaVu changes public domain)",
    "fonts-dejavu-extra": "Bitstream Vera licence (DejaVu changes public domain)",
    "fonts-freefont-ttf": "GPL-3+ with font exception",
    "fonts-liberation2": "OFL-1.1",
    "fonts-crosextra-carlito": "OFL-1.1",
    "fonts-crosextra-caladea": "Apache-2.0",
    "fonts-noto-core": "OFL-1.1",
    "fonts-urw-base35": "AGPL-3 with font exception",
    "fonts-sil-charis": "OFL-1.1",
    "fonts-sil-andika": "OFL-1.1",
    "fonts-paratype": "ParaType Free Font License",
    "fonts-gfs-didot": "OFL-1.1",
    "fonts-sil-ezra": "OFL-1.1",
    "fonts-hosny-amiri": "OFL-1.1",
    "fonts-lohit-deva": "OFL-1.1",
    "fonts-samyak-deva": "GPL-3+ with font exception",
    "fonts-tlwg-garuda-ttf": "GPL-2+ with font exception",
    "fonts-tlwg-loma-ttf": "GPL-2+ with font exception",
    "fonts-sil-abyssinica": "OFL-1.1",
}
TINY_PACKAGES = ("fonts-dejavu-core", "fonts-freefont-ttf", "fonts-liberation2")
TINY_NUM_CLASSES = 40
MIN_FACES, MIN_STYLES = 4, 3
# Variants of a face kept under another family name (Amiri Quran), or a second Hebrew face with
# the same outlines (Ezra SIL SR): they would give one typeface two style names.
EXCLUDED_FAMILIES = ("Amiri Quran", "Amiri Quran Colored", "Ezra SIL SR")
_CATEGORIES = ("Lu", "Ll", "Lt", "Lo", "Nd")
_TINY_SCRIPTS = ("LATIN", "GREEK", "CYRILLIC")


def is_candidate(codepoint: int) -> bool:
    return is_plain_character(codepoint, _CATEGORIES)


def is_tiny_candidate(codepoint: int) -> bool:
    return is_candidate(codepoint) and unicodedata.name(chr(codepoint)).startswith(_TINY_SCRIPTS)


def packages(tiny: bool) -> tuple[str, ...]:
    """The Debian packages a build reads."""
    return TINY_PACKAGES if tiny else tuple(PACKAGES)


def build(settings: BuildSettings) -> BuiltSet:
    versions = installed_versions(NAME, packages(settings.tiny))
    faces = package_faces(list(versions), EXCLUDED_FAMILIES)
    classes = font_classes(
        faces,
        is_tiny_candidate if settings.tiny else is_candidate,
        settings.image_size,
        MIN_FACES,
        MIN_STYLES,
        tiny_count=TINY_NUM_CLASSES if settings.tiny else None,
        seed=settings.seed,
    )
    return BuiltSet(settings, versions, classes, channels=1)
