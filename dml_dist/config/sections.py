"""The batch, model, loss, engine, train, eval and metrics sections of an experiment config:
one dataclass per part of the system, a docstring line per field (``dml-dist config show``
prints them; ``describe.py`` reads them from the source).

Only plain data lives here (numbers, strings, lists); runtime objects (Ray handles, engines)
are passed to build steps, never stored in config. The sections are frozen: a change after
loading is a copy (``loader.replaced``). Each section checks its own fields when it is built
(``__post_init__``, so a copy is checked again): the ranges
of ``ranges.py``, the allowed choices, and rules between fields of the one section. Rules that
involve two sections are in ``ExperimentConfig`` (``schema.py``). The data sections are in
``data_sections.py``, the mining and cross-batch memory sections in ``mining_memory.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dml_dist.config.ranges import check_ranges

DEEPSPEED_OPTIMIZERS = ("adam", "adamw", "adagrad", "lamb", "lion")
PLACEMENTS = ("PACK", "SPREAD", "STRICT_SPREAD")


@dataclass(frozen=True)
class BatchConfig:
    """The global batch: N classes x K images per class, split across all workers."""

    num_classes: int = 320
    """N: distinct classes in every global batch (N-pair: the number of tuplets)."""
    images_per_class: int = 2
    """K: images per class (2 for N-pair batch construction)."""
    chunk_size: int = 0
    """Images per forward chunk on each worker with cached embedding gradients (GradCache);
    0 = the worker's whole share at once. Bounds activation memory, same gradients."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """The section's own rules; ``ValueError`` naming the field."""
        check_ranges(self, "batch")


@dataclass(frozen=True)
class ModelConfig:
    """The embedding network."""

    backbone: str = "small_cnn"
    """``small_cnn`` (a conv net for small grayscale images) or ``timm/NAME``: any timm model
    (``timm/resnet50``, ``timm/convnext_tiny``, ``timm/vit_small_patch16_224.dino``; a ``.tag``
    picks its weights), its pooled features (``num_classes=0``) under the linear head."""
    backbone_args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``timm.create_model`` (``img_size: 32`` for a ViT on small images,
    ``drop_path_rate``, ...)."""
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    """``small_cnn``: output channels of the conv stages (each stage halves the resolution)."""
    norm: str = "group"
    """``small_cnn`` normalization: ``group`` (GroupNorm) or ``batch`` (batch norm over the global
    batch across ranks, exact under the all-gather; not with ``batch.chunk_size``)."""
    pool_grid: int = 0
    """``small_cnn`` pooling: 0 = global average pooling; g > 0 = average-pool the last map to g x g
    and flatten it (keeps the spatial layout; Conv-4 uses 2)."""
    batch_norm: str = "global"
    """timm backbones' BatchNorm layers: ``global`` (statistics of the global batch across ranks,
    exact under the all-gather; not with ``batch.chunk_size``) or ``frozen`` (stored statistics
    and affine as constants: the usual choice when fine-tuning pretrained weights)."""
    embedding_dim: int = 128
    """D: size of the embedding produced by the linear head."""
    in_channels: int = 1
    """Input image channels (1 grayscale, 3 RGB); must equal ``data.channels``."""
    pretrained: bool | str | None = None
    """First weights of a timm backbone: ``true`` (timm's published weights from the Hugging Face
    hub, downloaded once per node into its cache; ``HF_HUB_OFFLINE=1`` reads a warm cache), a
    file path or storage URI of a ``.safetensors`` file or torch state dict (the same on every
    node without internet), ``hf-hub:ORG/NAME`` (another hub repository's weights for this
    model), or null (random initialization)."""
    init_from: str | None = None
    """A finished run directory (local or storage URI): start from its ``embedder.pt``, backbone
    and head (a head of another ``embedding_dim`` starts afresh, with a warning); applied after
    ``pretrained``."""
    freeze_backbone_steps: int = 0
    """Train only the head for this many first steps (timm backbones): the backbone runs without
    gradient, in eval mode, at learning rate 0."""
    channels_last: bool = True
    """On GPU, keep conv activations in channels-last memory layout (faster convs with bf16)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """The section's own rules; ``ValueError`` naming the field."""
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"model.channels: expected a non-empty list of positive ints, got {self.channels}")
        if self.norm not in ("group", "batch"):
            raise ValueError(f"model.norm: expected group or batch, got {self.norm!r}")
        if self.batch_norm not in ("global", "frozen"):
            raise ValueError(f"model.batch_norm: expected global or frozen, got {self.batch_norm!r}")
        if self.backbone != "small_cnn" and not self.backbone.startswith("timm/"):
            raise ValueError(
                f"model.backbone: expected small_cnn or timm/NAME (any timm model, e.g. timm/resnet50), "
                f"got {self.backbone!r}"
            )
        if self.backbone == "small_cnn":
            if self.pretrained not in (None, False):
                raise ValueError("model.pretrained: small_cnn has no pretrained weights; set it to null")
            if self.freeze_backbone_steps > 0:
                raise ValueError("model.freeze_backbone_steps: only timm backbones can be frozen; set it to 0")
        check_ranges(self, "model")


@dataclass(frozen=True)
class LossConfig:
    """The loss, chosen by name; any other key is a hyperparameter of that loss."""

    name: str = "npair_mc"
    """Registered loss name (see ``dml_dist.losses.LOSSES``)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Hyperparameters passed to the loss constructor (YAML: keys beside ``name``)."""


@dataclass(frozen=True)
class EngineConfig:
    """The DeepSpeed engine: optimizer, ZeRO stage and precision."""

    zero_stage: int = 0
    """DeepSpeed ZeRO stage (0, 1, 2 or 3)."""
    optimizer: str = "AdamW"
    """DeepSpeed optimizer type, case-insensitive: AdamW, Adam, Adagrad, Lamb or Lion."""
    lr: float = 1e-3
    """Learning rate."""
    weight_decay: float = 1e-4
    """Decoupled weight decay (AdamW) or L2 (others)."""
    precision: str = "auto"
    """``auto`` (bf16 on GPU, fp32 on CPU), ``fp32``, ``bf16`` (weights and activations), or
    ``autocast`` (fp32 weights and optimizer, the forward under bf16 autocast on GPU; fp32 on
    CPU): small fine-tuning updates survive in fp32 weights."""
    gradient_clipping: float = 0.0
    """Clip the global gradient norm to this value; 0 = off."""
    backbone_lr_mult: float = 1.0
    """The backbone's learning rate as a multiple of ``lr`` (the head's, and a loss's own
    parameters'); e.g. 0.1 to fine-tune a pretrained backbone gently under a fresh head."""
    lr_scaling: str = "none"
    """Scale ``lr`` with the batch: ``none``, ``linear`` (lr * N / lr_reference_classes) or ``sqrt``."""
    lr_reference_classes: int = 320
    """The N at which ``lr`` was tuned (the reference of ``lr_scaling``)."""
    schedule: str = "constant"
    """Learning-rate schedule over ``train.steps`` (DeepSpeed's schedulers): ``constant``,
    ``warmup_cosine`` (linear warm-up, then cosine down to ``min_lr_ratio`` x lr) or
    ``warmup_linear`` (linear warm-up, then linear decay to 0)."""
    warmup_steps: int = 0
    """Steps of linear warm-up from 0 to lr (``warmup_cosine``, ``warmup_linear``)."""
    min_lr_ratio: float = 0.0
    """``warmup_cosine``: the final learning rate as a fraction of lr."""
    deepspeed: dict[str, Any] = field(default_factory=dict)
    """Any DeepSpeed config keys (offload, activation checkpointing, ...), merged last into the
    generated DeepSpeed config (nested mappings merge key by key)."""

    def __post_init__(self) -> None:
        self.validate()

    def scaled_lr(self, num_classes: int) -> float:
        """The learning rate for a global batch of ``num_classes`` classes."""
        ratio = num_classes / self.lr_reference_classes
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[self.lr_scaling]

    def validate(self) -> None:
        """The section's own rules; ``ValueError`` naming the field."""
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"engine.zero_stage: expected 0, 1, 2 or 3, got {self.zero_stage}")
        if self.optimizer.lower() not in DEEPSPEED_OPTIMIZERS:
            raise ValueError(
                f"engine.optimizer: unknown optimizer {self.optimizer!r}; valid: {', '.join(DEEPSPEED_OPTIMIZERS)}"
            )
        if self.schedule not in ("constant", "warmup_cosine", "warmup_linear"):
            raise ValueError(
                f"engine.schedule: expected constant, warmup_cosine or warmup_linear, got {self.schedule!r}"
            )
        if self.lr_scaling not in ("none", "linear", "sqrt"):
            raise ValueError(f"engine.lr_scaling: expected none, linear or sqrt, got {self.lr_scaling!r}")
        if self.precision not in ("auto", "fp32", "bf16", "autocast"):
            raise ValueError(f"engine.precision: expected auto, fp32, bf16 or autocast, got {self.precision!r}")
        check_ranges(self, "engine")


@dataclass(frozen=True)
class TrainConfig:
    """The training run."""

    steps: int = 300
    """Optimizer steps."""
    workers: int = 2
    """Ray Train workers (one per GPU, or one per CPU slot)."""
    use_gpu: bool = False
    """One GPU per worker (NCCL) instead of CPU workers (gloo)."""
    seed: int = 0
    """Seed of model init, sampler and mining."""
    log_every: int = 10
    """Write a ``metrics.jsonl`` row and print every this many steps."""
    eval_every: int = 100
    """Evaluate retrieval every this many steps (and always at the end); 0 = only at the end."""
    checkpoint_every: int | None = None
    """Save a checkpoint every this many steps (and always at the end); null = every tenth of
    ``steps`` (rounded up), so a lost worker or node costs at most a tenth of the run; 0 = only
    at the end (a failure restarts from step 0)."""
    keep_checkpoints: int = 3
    """Complete checkpoints kept in the run directory (older ones are deleted); 0 = all."""
    max_failures: int = 2
    """Times Ray Train restarts a failed worker group from the latest checkpoint before giving up."""
    max_nonfinite_steps: int = 5
    """Stop after this many steps in a row with a non-finite loss or gradient (each is skipped);
    the stop ends the run without a retry."""
    collective_timeout_s: float = 600.0
    """Longest wait of a rank in a collective (the process group's timeout; Ray's default is
    1,800 s): a hung rank (a stuck read, a dead peer) fails the step after this long and Ray
    Train restarts the workers, instead of holding every GPU for half an hour. It must exceed the
    longest thing one rank does alone while the others wait: rank 0's evaluation at step 0."""
    storage: str | None = None
    """Directory every node mounts (NFS, EFS, a ReadWriteMany volume): the run directory defaults to
    ``STORAGE/runs/NAME`` and generated data to ``STORAGE/data``; ``--storage`` and the
    ``DML_DIST_STORAGE`` environment variable set it too. null = the driver's working directory."""
    placement: str = "PACK"
    """Ray placement of the workers: ``PACK`` (fill a node first), ``SPREAD`` (spread when
    possible) or ``STRICT_SPREAD`` (one worker per node)."""

    def __post_init__(self) -> None:
        self.validate()

    def checkpoint_period(self) -> int:
        """Steps between checkpoints (0 = only at the end): ``checkpoint_every``, or a tenth of
        ``steps`` rounded up when it is null."""
        return self.checkpoint_every if self.checkpoint_every is not None else -(-self.steps // 10)

    def validate(self) -> None:
        """The section's own rules; ``ValueError`` naming the field."""
        if self.placement not in PLACEMENTS:
            raise ValueError(f"train.placement: expected one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        check_ranges(self, "train")


PROTOCOLS: dict[str, list[int]] = {
    "cub200": [1, 2, 4, 8, 16, 32],
    "cars196": [1, 2, 4, 8, 16, 32],
    "sop": [1, 10, 100, 1000],
    "inshop": [1, 10, 20, 30, 40, 50],
}
"""The K of Recall@K that each data set's papers report."""


@dataclass(frozen=True)
class EvalConfig:
    """Retrieval evaluation on held-out classes (faiss)."""

    recall_at: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """The K of Recall@K (used when ``protocol`` is null)."""
    batch_size: int = 512
    """Images per forward pass when embedding the evaluation set."""
    protocol: str | None = None
    """A data set's published K list: ``cub200``/``cars196`` (1-32), ``sop`` (1-1000), ``inshop``
    (1-50, query vs gallery when the shards list the roles); null = ``recall_at``."""
    block_size: int = 1024
    """Queries searched at once: memory is block_size x max K neighbour ids, whatever the set size."""
    nmi: bool = True
    """Also cluster the embeddings with faiss k-means (one centroid per class) and report NMI."""
    gallery_queries: int = 8
    """Queries (one per held-out class) shown in ``gallery.png`` at the end of training; 0 = none."""
    gallery_top_k: int = 5
    """Retrieved images shown per query in ``gallery.png`` (wrong ones framed in red)."""

    def __post_init__(self) -> None:
        self.validate()

    def ks(self) -> list[int]:
        """The K of Recall@K: the protocol's list, or ``recall_at``."""
        return list(PROTOCOLS[self.protocol]) if self.protocol is not None else list(self.recall_at)

    def validate(self) -> None:
        """The section's own rules; ``ValueError`` naming the field."""
        if not self.recall_at or any(k <= 0 for k in self.recall_at):
            raise ValueError(f"eval.recall_at: expected positive ints, got {self.recall_at}")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValueError(
                f"eval.protocol: unknown protocol {self.protocol!r}; valid: {', '.join(PROTOCOLS)}, or null"
            )
        check_ranges(self, "eval")


@dataclass(frozen=True)
class MetricsConfig:
    """Training metrics, exported through each node's Ray metrics agent (``observability/metrics.py``)."""

    enabled: bool = True
    """Record metrics with ``ray.util.metrics``; false = a null sink."""
    probe: bool = True
    """At log steps, embed a fixed random batch (N classes x K images, drawn once from the seed)
    without gradient and record its violation rate beside the trained batch's
    (``probe_violation_rate``, ``train/probe.py``): one forward pass per log step; indexed data only."""
