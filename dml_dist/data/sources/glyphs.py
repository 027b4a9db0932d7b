"""Character classes from font faces: each class is one code point, its images the faces that draw it.

Shared by ``typefaces`` (letters and digits) and ``symbols`` (math, technical, dingbats). From
every face's drawings of the candidate code points (``fonts.GlyphPainter``: no ``.notdef``
boxes, no empty images):

1. within a class, a drawing identical to one already kept (a face that copies another's
   outlines) is dropped, so no image is in a class twice;
2. homoglyphs: a class whose drawings equal those of an earlier class (in code point order) in
   at least half of its faces (Latin ``A``, Greek ``Α`` and Cyrillic ``А`` share outlines in most
   fonts) is dropped whole; where they collide in fewer faces, only the colliding drawings go,
   so no image ever belongs to two classes;
3. a class is kept with at least ``min_faces`` drawings from at least ``min_styles`` families.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from dml_dist.data.sources.fonts import Face, Glyph, GlyphPainter, class_name
from dml_dist.data.sources.writing import ImageClass, StyledImage
from dml_dist.observability.progress import progress_bar


def mapped_candidates(faces: Sequence[Face], is_candidate: Callable[[int], bool], min_faces: int) -> list[int]:
    """The candidate code points that at least ``min_faces`` faces map (by their ``cmap``), sorted."""
    counts = Counter(codepoint for face in faces for codepoint in face.codepoints)
    return sorted(c for c, n in counts.items() if n >= min_faces and is_candidate(c))


def draw_candidates(
    faces: Sequence[Face], codepoints: Iterable[int], image_size: int
) -> dict[int, list[tuple[Face, Glyph]]]:
    """Code point -> (face, drawing) for each of ``codepoints`` that each face draws, in face order."""
    wanted = frozenset(codepoints)
    drawings: dict[int, list[tuple[Face, Glyph]]] = {}
    with progress_bar(len(faces), desc="faces", unit="face") as bar:
        for face in faces:
            painter = GlyphPainter(face, image_size)
            for codepoint in sorted(face.codepoints & wanted):
                glyph = painter.glyph(codepoint)
                if glyph is not None:
                    drawings.setdefault(codepoint, []).append((face, glyph))
            bar.update(1)
    return drawings


def glyph_classes(
    drawings: dict[int, list[tuple[Face, Glyph]]], min_faces: int, min_styles: int
) -> dict[int, ImageClass]:
    """Code point -> class, for the kept classes (rules 1-3 of the module docstring), in code point order."""
    owner: dict[tuple[str, str, str], int] = {}  # (family, style, pixel digest) -> code point
    classes: dict[int, ImageClass] = {}
    for codepoint in sorted(drawings):
        unique: dict[str, tuple[Face, Glyph]] = {}
        for face, glyph in drawings[codepoint]:
            unique.setdefault(glyph.digest, (face, glyph))
        kept = [(f, g) for f, g in unique.values() if (f.family, f.subfamily, g.digest) not in owner]
        if 2 * (len(unique) - len(kept)) >= len(unique):
            continue  # a homoglyph of an earlier class
        if len(kept) < min_faces or len({face.family for face, _ in kept}) < min_styles:
            continue
        for face, glyph in kept:
            owner[(face.family, face.subfamily, glyph.digest)] = codepoint
        images = tuple(
            StyledImage(glyph.png(), face.family, f"{face.package}:{face.path.name}:U+{codepoint:04X}")
            for face, glyph in kept
        )
        classes[codepoint] = ImageClass(class_name(codepoint), images)
    return classes


def font_classes(
    faces: Sequence[Face],
    is_candidate: Callable[[int], bool],
    image_size: int,
    min_faces: int,
    min_styles: int,
    tiny_count: int | None = None,
    seed: int = 0,
) -> list[ImageClass]:
    """The classes of the candidate characters of ``faces``; with ``tiny_count``, that many classes
    at most, drawn at random (seeded) before anything is drawn, so a tiny set builds in seconds."""
    candidates = mapped_candidates(faces, is_candidate, min_faces)
    if tiny_count is None:
        return list(glyph_classes(draw_candidates(faces, candidates, image_size), min_faces, min_styles).values())
    order = np.random.default_rng(seed).permutation(len(candidates))
    picked = [candidates[i] for i in order[: 2 * tiny_count]]  # twice as many: some fail the rules
    classes = glyph_classes(draw_candidates(faces, picked, image_size), min_faces, min_styles)
    chosen = [codepoint for codepoint in picked if codepoint in classes][:tiny_count]
    return [classes[codepoint] for codepoint in sorted(chosen)]
