"""A retrieval gallery PNG: held-out queries with their top-k results, wrong results marked.

One row per query (one query from each of ``num_queries`` held-out classes, chosen with a fixed
seed); the query in the first column with a blue frame, then its k nearest gallery images by
cosine similarity, the query itself excluded: a green frame when the result is of the query's
class, a red frame and a red cross when it is not. Each query is captioned with its class's name
from the shard set's manifest (``Latin/character03``), or ``class <label>`` where the set has no
names; a wrong result is captioned with the class it belongs to. ``write_run_gallery`` writes it to
``gallery.png`` in the run directory, at the end of training (rank 0) and in ``dml-dist eval``.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: write files only

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dml_dist.config.schema import ExperimentConfig  # noqa: E402
from dml_dist.data.shard_layout import class_caption, read_class_names  # noqa: E402
from dml_dist.eval.embed import read_images  # noqa: E402
from dml_dist.eval.heldout import HeldOut  # noqa: E402
from dml_dist.eval.retrieval import normalize_rows  # noqa: E402

GALLERY = "gallery.png"


def pick_queries(labels_N: np.ndarray, query_idx: np.ndarray, num_queries: int, seed: int = 0) -> np.ndarray:
    """Rows of ``num_queries`` distinct classes (one each), a pure function of the seed."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels_N[query_idx])
    chosen = rng.choice(classes, size=min(num_queries, classes.size), replace=False)
    rows = [int(rng.choice(query_idx[labels_N[query_idx] == c])) for c in chosen]
    return np.asarray(rows, dtype=np.int64)


def top_k(emb_ND: np.ndarray, queries: np.ndarray, gallery_idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(neighbour rows [Q, k], similarities [Q, k]) of each query in the gallery, itself excluded."""
    unit = normalize_rows(emb_ND)
    sims_QG = unit[queries] @ unit[gallery_idx].T
    sims_QG[gallery_idx[None, :] == queries[:, None]] = -np.inf
    k = min(k, gallery_idx.size - 1) if np.isin(queries, gallery_idx).any() else min(k, gallery_idx.size)
    order = np.argsort(-sims_QG, axis=1, kind="stable")[:, :k]
    return gallery_idx[order], np.take_along_axis(sims_QG, order, axis=1)


def write_gallery(
    path: str | Path,
    emb_ND: np.ndarray,
    labels_N: np.ndarray,
    keys: list[str],
    shards: str | Path,
    query_idx: np.ndarray | None = None,
    gallery_idx: np.ndarray | None = None,
    num_queries: int = 8,
    k: int = 5,
    seed: int = 0,
    title: str = "",
) -> Path:
    """Render the gallery of the module docstring to ``path`` and return it."""
    everything = np.arange(labels_N.shape[0])
    query_idx = everything if query_idx is None else query_idx
    gallery_idx = everything if gallery_idx is None else gallery_idx
    queries = pick_queries(labels_N, query_idx, num_queries, seed)
    neighbours, sims = top_k(emb_ND, queries, gallery_idx, k)
    rows_needed = set(queries.tolist()) | set(neighbours.ravel().tolist())
    images = read_images(shards, {keys[r] for r in rows_needed})
    names = read_class_names(shards)
    num_cols = 1 + neighbours.shape[1]
    figure, axes = plt.subplots(
        len(queries),
        num_cols,
        figsize=(max(1.5 * num_cols, 6.0), 1.6 * len(queries) + 0.4),
        squeeze=False,
        constrained_layout=True,
    )
    wrong_total = 0
    for row, (q, found, sim) in enumerate(zip(queries, neighbours, sims, strict=True)):
        _show(axes[row, 0], images.get(keys[q]), "tab:blue", f"query\n{class_caption(names, labels_N[q])}")
        for col, (n, s) in enumerate(zip(found, sim, strict=True), start=1):
            correct = labels_N[n] == labels_N[q]
            wrong_total += int(not correct)
            ax = axes[row, col]
            caption = f"#{col} cos {s:.2f}" + ("" if correct else f"\n{class_caption(names, labels_N[n])}")
            _show(ax, images.get(keys[n]), "tab:green" if correct else "tab:red", caption)
            if not correct:
                ax.text(
                    0.88, 0.86, "\u2717", color="red", fontsize=16, ha="center", va="center", transform=ax.transAxes
                )
    total = neighbours.size
    heading = f"top-{neighbours.shape[1]} results of held-out queries: {total - wrong_total}/{total} correct"
    figure.suptitle(f"{title}\n{heading} (red frame, cross: wrong class)" if title else heading, fontsize=9)
    path = Path(path)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def write_run_gallery(run_dir: str | Path, held: HeldOut, shards: str | Path, config: ExperimentConfig) -> Path | None:
    """``gallery.png`` in the run directory (None when turned off); a failure is printed, not raised,
    so a finished training is never lost to a figure."""
    if config.eval.gallery_queries <= 0:
        return None
    try:
        return write_gallery(
            Path(run_dir) / GALLERY,
            held.emb,
            held.labels,
            held.keys,
            shards,
            held.query_idx,
            held.gallery_idx,
            num_queries=config.eval.gallery_queries,
            k=config.eval.gallery_top_k,
            seed=config.train.seed,
            title=Path(run_dir).name,
        )
    except Exception as err:  # noqa: BLE001
        print(f"eval: could not write {GALLERY}: {err}", flush=True)
        return None


def _show(ax: plt.Axes, data: bytes | None, colour: str, caption: str) -> None:
    if data is not None:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"))
        ax.imshow(pixels, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(4)
    ax.set_title(caption, fontsize=8)
