"""Real data sets of different kinds built from Debian packages (``dml-dist datasets NAME OUT``).

One module per set, each with ``NAME``, ``SUMMARY``, ``DEFAULT_IMAGE_SIZE``, ``PACKAGES``
(package -> licence), ``GENERATOR_VERSION``, ``packages(tiny)`` (those a build reads) and
``build(settings) -> BuiltSet``:

- ``typefaces``: a class is a letter or digit of one of many scripts (no CJK), its images the
  typefaces that draw it; grayscale, thousands of classes, many confusable;
- ``icons``: a class is a freedesktop icon name, its images the icon themes that draw it; RGB;
- ``symbols``: a class is a mathematical, technical or pictographic symbol, its images the
  typefaces that draw it; grayscale.

Shared parts: ``debian`` (package versions and files), ``fonts`` (faces and glyph drawing),
``glyphs`` (character classes from faces), ``writing`` (split by class, shard sets).
"""

from __future__ import annotations

from types import ModuleType

from dml_dist.data.sources import icons, symbols, typefaces

SETS: dict[str, ModuleType] = {module.NAME: module for module in (typefaces, icons, symbols)}


def all_packages() -> list[str]:
    """Every Debian package a full build of any set reads, sorted (``make dataset-packages``)."""
    return sorted({package for module in SETS.values() for package in module.PACKAGES})
