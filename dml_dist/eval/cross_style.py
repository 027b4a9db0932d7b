"""Cross-style retrieval: a query must find its class among images of other styles.

A data set built by ``dml-dist datasets`` records each image's style in its manifest
(``source.styles``: style -> sample keys; a style is a font family or an icon theme). Plain
leave-one-out Recall@1 lets a query match a near copy of itself, the same class drawn by a sister
face of its own family; the question a user of such a model asks is whether a character drawn in
one typeface retrieves the same character drawn in another.

Cross-style Recall@1: for each query q with at least one same-class image of another style,
1 if its nearest neighbour by cosine among the images whose style differs from q's is of q's
class, averaged over those queries:

    R@1_x = mean_{q : exists g, y_g = y_q, s_g != s_q}  [ y_{argmax_{g : s_g != s_q} <e_q, e_g>} = y_q ]

Exact: blocked products of the normalized embeddings [B, D] x [D, N], the query's own style
masked to -inf (a faiss search would need k as large as the largest style to be exact).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dml_dist.data.shard_layout import read_manifest


def style_ids(directory: str | Path, keys: list[str]) -> np.ndarray | None:
    """Each key's style as an integer [N] (-1: a key the manifest gives no style), or None when
    the manifest records no styles."""
    styles = read_manifest(directory).get("source", {}).get("styles")
    if not styles:
        return None
    of_key = {key: index for index, members in enumerate(styles.values()) for key in members}
    return np.array([of_key.get(key, -1) for key in keys], dtype=np.int64)


def cross_style_recall_at_1(
    emb_ND: np.ndarray, labels_N: np.ndarray, styles_N: np.ndarray, block_size: int = 1024
) -> tuple[float, int]:
    """(cross-style Recall@1, number of queries it averages) of the module docstring. Images of
    unknown style (-1) are in the gallery of every query and are no query themselves."""
    emb = torch.nn.functional.normalize(torch.as_tensor(emb_ND, dtype=torch.float32), dim=1)
    labels = torch.as_tensor(labels_N, dtype=torch.int64)
    styles = torch.as_tensor(styles_N, dtype=torch.int64)
    # A query counts when its class has an image of another (known or unknown) style.
    other_style = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique():
        members = styles[labels == label]
        other_style[labels == label] = (members[:, None] != members[None, :]).any(dim=1)
    queries = torch.nonzero(other_style & (styles >= 0)).flatten()
    hits = 0
    for start in range(0, len(queries), block_size):
        rows = queries[start : start + block_size]
        similarity_BN = emb[rows] @ emb.T
        same_style = (styles[rows][:, None] == styles[None, :]) & (styles[None, :] >= 0)
        similarity_BN[same_style] = -torch.inf  # also the query itself
        nearest = similarity_BN.argmax(dim=1)
        hits += int((labels[nearest] == labels[rows]).sum())
    return hits / max(len(queries), 1), int(len(queries))
