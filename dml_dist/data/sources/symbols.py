"""``symbols``: a class is a symbol (arrows, mathematical operators, technical and geometric
shapes, box drawing, dingbats, Braille, currency...), its images are the faces that draw it.

Unlike ``typefaces`` the classes are pictograms rather than letters of a script: shapes that
differ by an arrowhead, a stroke weight or a dot's position (``⇒`` and ``⇛``, ``┤`` and ``┫``,
``⠁`` and ``⠂``), in fonts that often draw them very differently. Characters of Unicode
categories Sm, So and Sc, no CJK, no compatibility characters; at least 4 faces from at least 3
families; grayscale, white on black, placed on the em as in ``typefaces`` (``fonts``).

The tiny variant (tests): three packages, arrows, mathematical operators and geometric shapes
only, 40 classes drawn at random (seeded) from those that qualify.
"""

from __future__ import annotations

from dml_dist.data.sources import typefaces
from dml_dist.data.sources.debian import installed_versions
from dml_dist.data.sources.fonts import is_plain_character, package_faces
from dml_dist.data.sources.glyphs import font_classes
from dml_dist.data.sources.writing import BuildSettings, BuiltSet

NAME = "symbols"
SUMMARY = "mathematical, technical and pictographic symbols (no CJK), a class per symbol, an image per typeface"
DEFAULT_IMAGE_SIZE = 32
GENERATOR_VERSION = 1
PACKAGES = {
    **typefaces.PACKAGES,
    "fonts-symbola": "free for any use (George Douros)",
    "fonts-stix": "OFL-1.1",
}
TINY_PACKAGES = ("fonts-dejavu-core", "fonts-freefont-ttf", "fonts-symbola")
TINY_NUM_CLASSES = 40
MIN_FACES, MIN_STYLES = 4, 3
# STIXGeneral is version 1 of STIX (the same outlines under a second name); the STIX size and
# integral variants and STIXNonUnicode draw alternates, not characters of their own.
EXCLUDED_FAMILIES = (
    *typefaces.EXCLUDED_FAMILIES,
    "STIXGeneral",
    "STIXNonUnicode",
    "STIXVariants",
    "STIXIntegralsD",
    "STIXIntegralsSm",
    "STIXIntegralsUp",
    "STIXIntegralsUpD",
    "STIXIntegralsUpSm",
    "STIXSizeOneSym",
    "STIXSizeTwoSym",
    "STIXSizeThreeSym",
    "STIXSizeFourSym",
    "STIXSizeFiveSym",
)
_CATEGORIES = ("Sm", "So", "Sc")
_TINY_BLOCKS = ((0x2190, 0x21FF), (0x2200, 0x22FF), (0x25A0, 0x25FF))


def is_candidate(codepoint: int) -> bool:
    return is_plain_character(codepoint, _CATEGORIES)


def is_tiny_candidate(codepoint: int) -> bool:
    return is_candidate(codepoint) and any(lo <= codepoint <= hi for lo, hi in _TINY_BLOCKS)


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
