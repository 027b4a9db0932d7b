"""Python API: load a trained embedder from a run directory and embed images with it.

    from dml_dist.eval.api import load_embedder
    embedder = load_embedder("runs/omniglot")
    emb = embedder.embed([open(p, "rb").read() for p in paths])   # float32 [n, D], unit rows
    index = faiss.IndexFlatIP(emb.shape[1]); index.add(emb)          # cosine search

``embed`` takes encoded images (PNG/JPEG bytes: decoded and resized as in evaluation, no
augmentation) or an already decoded float tensor [B, C, S, S] in [-1, 1]. The run directory
needs ``config.yaml`` and ``embedder.pt`` (written at the end of ``dml-dist train``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dml_dist.config.schema import ExperimentConfig
from dml_dist.eval.embed import embed_encoded, list_images
from dml_dist.observability.progress import progress_bar


@dataclass
class Embedder:
    """A trained model with the decoding settings of its run."""

    model: nn.Module
    config: ExperimentConfig
    device: torch.device
    step: int = 0

    @property
    def embedding_dim(self) -> int:
        return self.config.model.embedding_dim

    def embed(
        self, images: Sequence[bytes] | torch.Tensor, batch_size: int | None = None, bar: Any = None
    ) -> np.ndarray:
        """L2-normalized float32 embeddings [n, D] of encoded images or a decoded batch, in order.

        ``bar``: a progress bar advanced by each batch (``observability/progress.py``)."""
        batch_size = batch_size or self.config.eval.batch_size
        if isinstance(images, torch.Tensor):
            return self._embed_tensor(images, batch_size)
        emb = embed_encoded(
            self.model,
            images,
            self.config.data.decode_size,
            batch_size,
            self.device,
            channels=self.config.data.channels,
            bar=bar,
            interpolation=self.config.data.resize_filter,
        )
        return emb.reshape(len(images), self.embedding_dim) if len(images) == 0 else emb

    def embed_files(self, paths: Sequence[str | Path], batch_size: int | None = None, bar: Any = None) -> np.ndarray:
        """Embeddings of image files, in order."""
        return self.embed([Path(p).read_bytes() for p in paths], batch_size, bar=bar)

    def embed_folder(self, folder: str | Path, progress: bool = False) -> tuple[np.ndarray, list[Path]]:
        """(embeddings, files) of every image under ``folder`` (recursively, sorted)."""
        files = list_images(folder)
        if not files:
            raise ValueError(f"--images: no images found under {folder}")
        if not progress:
            return self.embed_files(files), files
        with progress_bar(len(files), desc="embed", unit="img") as bar:
            return self.embed_files(files, bar=bar), files

    @torch.no_grad()
    def _embed_tensor(self, images_BCHW: torch.Tensor, batch_size: int) -> np.ndarray:
        expected = (self.config.data.channels, self.config.data.decode_size, self.config.data.decode_size)
        if images_BCHW.ndim != 4 or tuple(images_BCHW.shape[1:]) != expected:
            raise ValueError(
                f"embed: expected a tensor [B, {', '.join(map(str, expected))}], got {list(images_BCHW.shape)}"
            )
        dtype = next(self.model.parameters()).dtype
        parts = [
            F.normalize(self.model(chunk.to(self.device, dtype)).float(), dim=1).cpu().numpy()
            for chunk in images_BCHW.split(batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.embedding_dim), dtype=np.float32)


def load_embedder(run_dir: str | Path, device: str | torch.device | None = None) -> Embedder:
    """The trained embedder of a run directory, in eval mode (on the GPU when there is one, unless
    ``device`` says otherwise)."""
    from dml_dist import run_files
    from dml_dist.config.loader import load_config, replaced
    from dml_dist.models.embedder import build_model

    root = Path(run_dir)
    config_path = root / run_files.CONFIG
    if not config_path.is_file():
        raise ValueError(f"run directory: {config_path} not found (is {root} a dml-dist run directory?)")
    config = load_config(config_path)
    state = run_files.load_embedder_state(root / run_files.EMBEDDER)
    # The trained weights replace the first ones, so the pretrained weights and init_from run are not read here.
    config = replaced(config, {"model.pretrained": None, "model.init_from": None})
    model = build_model(config.model, config.data)
    model.load_state_dict(state["model"])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(device if device is not None else default)
    model.to(target).eval()
    return Embedder(model=model, config=config, device=target, step=int(state.get("step", 0)))
