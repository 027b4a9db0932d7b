"""``icons``: a class is a freedesktop icon name (``document-open``, ``battery-low``,
``application-pdf``), its images are the icon themes that draw it (RGB, on a mid-grey ground).

Themes are the icon folders of Debian's icon-theme packages (dark and light variants of a theme
are left out: they recolour the same drawings). Within a theme, an icon's file is the one drawn
at the largest size (a scalable SVG first, then the largest PNG), so small-size simplified
drawings are not used. SVGs are rendered by librsvg (``rsvg-convert``, Debian's
``librsvg2-bin``), PNGs resized with Lanczos; either is fitted into the frame keeping its
aspect ratio and laid over the ground by its alpha. Symbolic (one-colour) icons are left out,
and so is a drawing that hardly shows on the ground (grey panel icons).

Icon themes alias names (``gtk-open`` and ``document-open`` one file): a file's content belongs
to the first name (in sorted order, of those drawn by at least 3 themes) that uses it in that
theme. Within a class a drawing that is a near copy of another theme's (forks such as
``elementary`` and ``elementary-xfce``: mean absolute pixel difference under ``NEAR_COPY``)
counts once. A class needs at least 3 themes. The style of an image is its theme.

The tiny variant (tests): four themes, 40 classes drawn at random (seeded) from those that
qualify.
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dml_dist.data.sources.debian import installed_versions, package_files
from dml_dist.data.sources.writing import BuildSettings, BuiltSet, ImageClass, StyledImage

NAME = "icons"
SUMMARY = "freedesktop icons in RGB, a class per icon name, an image per icon theme"
DEFAULT_IMAGE_SIZE = 64
GENERATOR_VERSION = 1
# Package -> licence of its icons (from its /usr/share/doc/PACKAGE/copyright).
PACKAGES = {
    "adwaita-icon-theme": "LGPL-3 or CC-BY-SA-3.0",
    "tango-icon-theme": "public domain",
    "breeze-icon-theme": "LGPL-3+",
    "elementary-xfce-icon-theme": "GPL-2+",
    "elementary-icon-theme": "GPL-3+",
    "suru-icon-theme": "CC-BY-SA-3.0",
    "numix-icon-theme": "GPL-3+",
    "lxde-icon-theme": "LGPL-3+",
    "gnome-colors-common": "GPL-2+",
    "librsvg2-bin": "LGPL-2.1+ (the SVG renderer)",
}
RENDERER = "librsvg2-bin"
TINY_PACKAGES = ("adwaita-icon-theme", "tango-icon-theme", "breeze-icon-theme", "elementary-xfce-icon-theme")
TINY_NUM_CLASSES = 40
MIN_THEMES = 3
# Recoloured variants of a theme in the same packages.
EXCLUDED_THEMES = ("default", "breeze-dark", "Numix-Light") + tuple(
    f"elementary-xfce-{shade}" for shade in ("dark", "darker", "darkest")
)
GROUND = (128, 128, 128)
MIN_CONTRAST = 8.0  # mean |image - ground| over the frame, 0..255: below it the icon is not seen
NEAR_COPY = 8.0  # mean |a - b| of two drawings of a class, 0..255: below it they are one drawing
_ICONS = Path("/usr/share/icons")
_SCALABLE = 10_000  # a scalable SVG outranks every fixed size


@dataclass(frozen=True)
class IconFile:
    theme: str
    package: str
    path: Path


def _size_of(path: Path) -> int:
    """The size an icon file is drawn at, from its folders (``48x48``, ``48@2x``, ``scalable``)."""
    if path.suffix.lower() == ".svg" and "scalable" in path.parts:
        return _SCALABLE
    size = 0
    for part in path.parts:
        match = re.fullmatch(r"(\d+)(?:x\d+)?(?:@(\d)x)?", part)
        if match:
            size = max(size, int(match.group(1)) * int(match.group(2) or 1))
    return size


def theme_icons(packages: Sequence[str]) -> dict[str, dict[str, IconFile]]:
    """Theme -> icon name -> its largest drawing, for the themes of ``packages``."""
    best: dict[str, dict[str, tuple[tuple[int, int, str], Path, str]]] = {}
    for package in packages:
        for path in package_files(package, (".svg", ".png")):
            relative = path.relative_to(_ICONS) if path.is_relative_to(_ICONS) else None
            if relative is None or len(relative.parts) < 2 or relative.parts[0] in EXCLUDED_THEMES:
                continue
            name = path.stem
            if "symbolic" in name or "symbolic" in relative.parts:
                continue
            rank = (_size_of(relative), path.suffix.lower() == ".svg", str(relative))
            theme = best.setdefault(relative.parts[0], {})
            if name not in theme or rank > theme[name][0]:
                theme[name] = (rank, path, package)
    return {
        theme: {name: IconFile(theme, package, path) for name, (_, path, package) in sorted(icons.items())}
        for theme, icons in sorted(best.items())
    }


def icon_classes(themes: dict[str, dict[str, IconFile]]) -> dict[str, list[IconFile]]:
    """Icon name -> its files (one per theme, no file in two classes, no copies), >= 3 themes.

    Only names drawn by at least ``MIN_THEMES`` themes are read at all; among them a file's
    content belongs to the first name, in sorted order, that uses it in that theme.
    """
    counts = Counter(name for icons in themes.values() for name in icons)
    owner: set[tuple[str, str]] = set()  # (theme, content digest) already given to a class
    classes: dict[str, list[IconFile]] = {}
    for name in sorted(name for name, count in counts.items() if count >= MIN_THEMES):
        files, seen = [], set()
        for theme in sorted(themes):
            icon = themes[theme].get(name)
            if icon is None:
                continue
            digest = hashlib.sha1(icon.path.read_bytes()).hexdigest()
            if (theme, digest) in owner:
                continue
            owner.add((theme, digest))
            if digest not in seen:
                seen.add(digest)
                files.append(icon)
        if len(files) >= MIN_THEMES:
            classes[name] = files
    return classes


def render(icon: IconFile, image_size: int) -> np.ndarray | None:
    """``icon`` fitted into ``image_size`` pixels over the grey ground: uint8 [size, size, 3]; None
    where it hardly differs from the ground (mean absolute difference under ``MIN_CONTRAST``)."""
    if icon.path.suffix.lower() == ".svg":
        drawn = subprocess.run(
            ["rsvg-convert", "--keep-aspect-ratio", "-w", str(image_size), "-h", str(image_size), str(icon.path)],
            capture_output=True,
            check=True,
        ).stdout
        picture = Image.open(io.BytesIO(drawn)).convert("RGBA")
    else:
        picture = Image.open(icon.path).convert("RGBA")
    scale = image_size / max(picture.size)
    if scale != 1.0:
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    frame = Image.new("RGBA", (image_size, image_size), (*GROUND, 255))
    frame.alpha_composite(picture, ((image_size - picture.width) // 2, (image_size - picture.height) // 2))
    pixels = np.asarray(frame.convert("RGB"))
    if _difference(pixels, np.array(GROUND)) < MIN_CONTRAST:
        return None  # grey on the grey ground, or almost empty: nothing to see
    return pixels


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two images (0..255)."""
    return float(np.abs(a.astype(np.int16) - b).mean())


def distinct_drawings(drawings: list[tuple[IconFile, np.ndarray]]) -> list[tuple[IconFile, np.ndarray]]:
    """The drawings of one class less near copies: a drawing within ``NEAR_COPY`` of one kept
    before it (themes forked from one another, ``elementary`` and ``elementary-xfce``) counts once."""
    kept: list[tuple[IconFile, np.ndarray]] = []
    for icon, pixels in drawings:
        if all(_difference(pixels, other) >= NEAR_COPY for _, other in kept):
            kept.append((icon, pixels))
    return kept


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _render_or_none(icon: IconFile, image_size: int) -> np.ndarray | None:
    """``render``, or None for a file librsvg or Pillow cannot read (left out of its class)."""
    try:
        return render(icon, image_size)
    except (subprocess.CalledProcessError, OSError):
        return None


def packages(tiny: bool) -> tuple[str, ...]:
    """The Debian packages a build reads: icon themes and the SVG renderer."""
    return (*TINY_PACKAGES, RENDERER) if tiny else tuple(PACKAGES)


def build(settings: BuildSettings) -> BuiltSet:
    versions = installed_versions(NAME, packages(settings.tiny))
    files = icon_classes(theme_icons([p for p in versions if p != RENDERER]))
    names = sorted(files)
    if settings.tiny:
        chosen = np.random.default_rng(settings.seed).choice(len(names), TINY_NUM_CLASSES, replace=False)
        names = [names[i] for i in sorted(chosen)]
    jobs = [icon for name in names for icon in files[name]]
    with ThreadPoolExecutor() as pool:  # rsvg-convert runs as processes: threads keep both cores busy
        pictures = dict(zip(jobs, pool.map(lambda icon: _render_or_none(icon, settings.image_size), jobs), strict=True))
    classes = []
    for name in names:
        drawn = [(icon, pixels) for icon in files[name] if (pixels := pictures[icon]) is not None]
        images = tuple(
            StyledImage(encode_png(pixels), icon.theme, f"{icon.package}:{icon.path.relative_to(_ICONS)}")
            for icon, pixels in distinct_drawings(drawn)
        )
        if len(images) >= MIN_THEMES:
            classes.append(ImageClass(name, images))
    return BuiltSet(settings, versions, classes, channels=3)
