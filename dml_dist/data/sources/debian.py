"""What the data-set builders read from Debian: installed package versions and their files.

The builders take their images only from packages installed with ``apt-get`` (fonts, icon
themes), so a set is named by (package, version) pairs that anyone can install again; the
versions enter each set's manifest. ``dpkg-query`` answers both questions; a package that is
missing is named with the ``apt-get install`` line that brings it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path


def installed_versions(set_name: str, packages: Sequence[str]) -> dict[str, str]:
    """Package -> installed version of each of ``packages``; ``ValueError`` naming those missing."""
    if shutil.which("dpkg-query") is None:
        raise ValueError(
            f"datasets {set_name}: needs Debian packages ({' '.join(packages)}), and this system has no dpkg-query"
        )
    query = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    )
    versions = {}
    for line in query.stdout.splitlines():
        name, version, status = line.split("\t")
        if status.startswith("ii"):
            versions[name.partition(":")[0]] = version
    missing = [p for p in packages if p not in versions]
    if missing:
        raise ValueError(
            f"datasets {set_name}: Debian package{'s' if len(missing) > 1 else ''} not installed: "
            f"{' '.join(missing)} (apt-get install {' '.join(missing)}; `make dataset-packages` lists all)"
        )
    return {p: versions[p] for p in packages}


def package_files(package: str, suffixes: tuple[str, ...]) -> list[Path]:
    """The files of an installed package whose names end in one of ``suffixes``, sorted."""
    listing = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, check=True)
    paths = (Path(line) for line in listing.stdout.splitlines())
    return sorted(p for p in paths if p.name.lower().endswith(suffixes) and p.is_file())
