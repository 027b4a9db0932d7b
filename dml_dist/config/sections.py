"""The batch, model, engine, train, eval and metrics sections of an experiment config:
one frozen pydantic model per part of the system (``fields.Section``), a docstring per field
(pydantic keeps it as the field's description: ``dml-dist config show`` and ``config schema``
print it).

Only plain data lives here (numbers, strings, lists); runtime objects (Ray handles, engines)
are passed to build steps, never stored in config. The sections are frozen: a change after
loading is a validated copy (``loader.replaced``). Each section checks its own fields when it is
built: ranges as field constraints, the allowed choices as ``one_of``, rules between fields
of the one section as a section validator. Rules that involve two sections are in
``ExperimentConfig`` (``schema.py``). The data sections are in ``data_sections.py``, the mining
and cross-batch memory sections in ``mining_memory.py``, the loss section in ``loss_section.py``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from dml_dist.config.fields import Bool, Float, Int, NonNegativeInt, PositiveInt, Section, Str, integer, one_of

DEEPSPEED_OPTIMIZERS = ("adam", "adamw", "adagrad", "lamb", "lion")
PLACEMENTS = ("PACK", "SPREAD", "STRICT_SPREAD")


class BatchConfig(Section):
    """The global batch: N classes x K images per class, split across all workers."""

    path = "batch"

    num_classes: Int = Field(320, gt=0)
    """N: distinct classes in every global batch (N-pair: the number of tuplets)."""
    images_per_class: Int = Field(2, ge=2)
    """K: images per class (2 for N-pair batch construction)."""
    chunk_size: Int = Field(0, ge=0)
    """Images per forward chunk on each worker with cached embedding gradients (GradCache);
    0 = the worker's whole share at once. Bounds activation memory, same gradients."""


class ModelConfig(Section):
    """The embedding network."""

    path = "model"

    backbone: Str = "small_cnn"
    """``small_cnn`` (a conv net for small grayscale images) or ``timm/NAME``: any timm model
    (``timm/resnet50``, ``timm/convnext_tiny``, ``timm/vit_small_patch16_224.dino``; a ``.tag``
    picks its weights), its pooled features (``num_classes=0``) under the linear head."""
    backbone_args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of ``timm.create_model`` (``img_size: 32`` for a ViT on small images,
    ``drop_path_rate``, ...)."""
    channels: list[PositiveInt] = Field(default_factory=lambda: [32, 64, 128])
    """``small_cnn``: output channels of the conv stages (each stage halves the resolution)."""
    norm: Annotated[Str, one_of("group", "batch")] = "group"
    """``small_cnn`` normalization: ``group`` (GroupNorm) or ``batch`` (batch norm over the global
    batch across ranks, exact under the all-gather; not with ``batch.chunk_size``)."""
    pool_grid: Int = Field(0, ge=0)
    """``small_cnn`` pooling: 0 = global average pooling; g > 0 = average-pool the last map to g x g
    and flatten it (keeps the spatial layout; Conv-4 uses 2)."""
    batch_norm: Annotated[Str, one_of("global", "frozen")] = "global"
    """timm backbones' BatchNorm layers: ``global`` (statistics of the global batch across ranks,
    exact under the all-gather; not with ``batch.chunk_size``) or ``frozen`` (stored statistics
    and affine as constants: the usual choice when fine-tuning pretrained weights)."""
    embedding_dim: Int = Field(128, gt=0)
    """D: size of the embedding produced by the linear head."""
    in_channels: Int = Field(1, ge=1, le=3)
    """Input image channels (1 grayscale, 3 RGB); must equal ``data.channels``."""
    pretrained: bool | str | None = None
    """First weights of a timm backbone: ``true`` (timm's published weights from the Hugging Face
    hub, downloaded once per node into its cache; ``HF_HUB_OFFLINE=1`` reads a warm cache), a
    file path or storage URI of a ``.safetensors`` file or torch state dict (the same on every
    node without internet), ``hf-hub:ORG/NAME`` (another hub repository's weights for this
    model), or null (random initialization)."""
    init_from: Str | None = None
    """A finished run directory (local or storage URI): start from its ``embedder.pt``, backbone
    and head (a head of another ``embedding_dim`` starts afresh, with a warning); applied after
    ``pretrained``."""
    freeze_backbone_steps: Int = Field(0, ge=0)
    """Train only the head for this many first steps (timm backbones): the backbone runs without
    gradient, in eval mode, at learning rate 0."""
    channels_last: Bool = True
    """On GPU, keep conv activations in channels-last memory layout (faster convs with bf16)."""

    @field_validator("channels")
    @classmethod
    def _some_channels(cls, channels: list[int]) -> list[int]:
        if not channels:
            raise ValueError(f"expected a non-empty list of positive ints, got {channels}")
        return channels

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, backbone: str) -> str:
        if backbone != "small_cnn" and not backbone.startswith("timm/"):
            raise ValueError(f"expected small_cnn or timm/NAME (any timm model, e.g. timm/resnet50), got {backbone!r}")
        return backbone

    @field_validator("pretrained", mode="before")
    @classmethod
    def _pretrained(cls, pretrained: Any) -> Any:
        if pretrained is not None and not isinstance(pretrained, (bool, str)):
            raise ValueError(f"expected bool or str, got {pretrained!r}")
        return pretrained

    @model_validator(mode="after")
    def _small_cnn(self) -> ModelConfig:
        if self.backbone == "small_cnn":
            if self.pretrained not in (None, False):
                raise ValueError("model.pretrained: small_cnn has no pretrained weights; set it to null")
            if self.freeze_backbone_steps > 0:
                raise ValueError("model.freeze_backbone_steps: only timm backbones can be frozen; set it to 0")
        return self


class EngineConfig(Section):
    """The DeepSpeed engine: optimizer, ZeRO stage and precision."""

    path = "engine"

    zero_stage: Int = Field(0, ge=0, le=3)
    """DeepSpeed ZeRO stage (0, 1, 2 or 3)."""
    optimizer: Str = "AdamW"
    """DeepSpeed optimizer type, case-insensitive: AdamW, Adam, Adagrad, Lamb or Lion."""
    lr: Float = Field(1e-3, gt=0)
    """Learning rate."""
    weight_decay: Float = Field(1e-4, ge=0)
    """Decoupled weight decay (AdamW) or L2 (others)."""
    precision: Annotated[Str, one_of("auto", "fp32", "bf16", "autocast")] = "auto"
    """``auto`` (bf16 on GPU, fp32 on CPU), ``fp32``, ``bf16`` (weights and activations), or
    ``autocast`` (fp32 weights and optimizer, the forward under bf16 autocast on GPU; fp32 on
    CPU): small fine-tuning updates survive in fp32 weights."""
    gradient_clipping: Float = Field(0.0, ge=0)
    """Clip the global gradient norm to this value; 0 = off."""
    backbone_lr_mult: Float = Field(1.0, ge=0)
    """The backbone's learning rate as a multiple of ``lr`` (the head's, and a loss's own
    parameters'); e.g. 0.1 to fine-tune a pretrained backbone gently under a fresh head."""
    lr_scaling: Annotated[Str, one_of("none", "linear", "sqrt")] = "none"
    """Scale ``lr`` with the batch: ``none``, ``linear`` (lr * N / lr_reference_classes) or ``sqrt``."""
    lr_reference_classes: Int = Field(320, gt=0)
    """The N at which ``lr`` was tuned (the reference of ``lr_scaling``)."""
    schedule: Annotated[Str, one_of("constant", "warmup_cosine", "warmup_linear")] = "constant"
    """Learning-rate schedule over ``train.steps`` (DeepSpeed's schedulers): ``constant``,
    ``warmup_cosine`` (linear warm-up, then cosine down to ``min_lr_ratio`` x lr) or
    ``warmup_linear`` (linear warm-up, then linear decay to 0)."""
    warmup_steps: Int = Field(0, ge=0)
    """Steps of linear warm-up from 0 to lr (``warmup_cosine``, ``warmup_linear``)."""
    min_lr_ratio: Float = Field(0.0, ge=0, le=1)
    """``warmup_cosine``: the final learning rate as a fraction of lr."""
    deepspeed: dict[str, Any] = Field(default_factory=dict)
    """Any DeepSpeed config keys (offload, activation checkpointing, ...), merged last into the
    generated DeepSpeed config (nested mappings merge key by key)."""

    def scaled_lr(self, num_classes: int) -> float:
        """The learning rate for a global batch of ``num_classes`` classes."""
        ratio = num_classes / self.lr_reference_classes
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[self.lr_scaling]

    @field_validator("zero_stage", mode="before")
    @classmethod
    def _zero_stage(cls, zero_stage: Any) -> int:
        stage = integer(zero_stage)  # before the bound (in [0, 3]), so that the message lists the stages
        if stage not in (0, 1, 2, 3):
            raise ValueError(f"expected 0, 1, 2 or 3, got {stage}")
        return stage

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, optimizer: str) -> str:
        if optimizer.lower() not in DEEPSPEED_OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(DEEPSPEED_OPTIMIZERS)}")
        return optimizer


class TrainConfig(Section):
    """The training run."""

    path = "train"

    steps: Int = Field(300, gt=0)
    """Optimizer steps."""
    workers: Int = Field(2, gt=0)
    """Ray Train workers (one per GPU, or one per CPU slot)."""
    use_gpu: Bool = False
    """One GPU per worker (NCCL) instead of CPU workers (gloo)."""
    seed: Int = Field(0, ge=0)
    """Seed of model init, sampler and mining."""
    log_every: Int = Field(10, gt=0)
    """Write a ``metrics.jsonl`` row and print every this many steps."""
    eval_every: Int = Field(100, ge=0)
    """Evaluate retrieval every this many steps (and always at the end); 0 = only at the end."""
    checkpoint_every: NonNegativeInt | None = None
    """Save a checkpoint every this many steps (and always at the end); null = every tenth of
    ``steps`` (rounded up), so a lost worker or node costs at most a tenth of the run; 0 = only
    at the end (a failure restarts from step 0)."""
    keep_checkpoints: Int = Field(3, ge=0)
    """Complete checkpoints kept in the run directory (older ones are deleted); 0 = all."""
    max_failures: Int = Field(2, ge=-1)  # Ray Train: -1 = restart without limit
    """Times Ray Train restarts a failed worker group from the latest checkpoint before giving up."""
    max_nonfinite_steps: Int = Field(5, gt=0)
    """Stop after this many steps in a row with a non-finite loss or gradient (each is skipped);
    the stop ends the run without a retry."""
    collective_timeout_s: Float = Field(600.0, gt=0)
    """Longest wait of a rank in a collective (the process group's timeout; Ray's default is
    1,800 s): a hung rank (a stuck read, a dead peer) fails the step after this long and Ray
    Train restarts the workers, instead of holding every GPU for half an hour. It must exceed the
    longest thing one rank does alone while the others wait: rank 0's evaluation at step 0."""
    storage: Str | None = None
    """Directory every node mounts (NFS, EFS, a ReadWriteMany volume): the run directory defaults to
    ``STORAGE/runs/NAME`` and generated data to ``STORAGE/data``; ``--storage`` and the
    ``DML_DIST_STORAGE`` environment variable set it too. null = the driver's working directory."""
    placement: Annotated[Str, one_of(*PLACEMENTS, expected=f"one of {', '.join(PLACEMENTS)}")] = "PACK"
    """Ray placement of the workers: ``PACK`` (fill a node first), ``SPREAD`` (spread when
    possible) or ``STRICT_SPREAD`` (one worker per node)."""

    def checkpoint_period(self) -> int:
        """Steps between checkpoints (0 = only at the end): ``checkpoint_every``, or a tenth of
        ``steps`` rounded up when it is null."""
        return self.checkpoint_every if self.checkpoint_every is not None else -(-self.steps // 10)


PROTOCOLS: dict[str, list[int]] = {
    "cub200": [1, 2, 4, 8, 16, 32],
    "cars196": [1, 2, 4, 8, 16, 32],
    "sop": [1, 10, 100, 1000],
    "inshop": [1, 10, 20, 30, 40, 50],
}
"""The K of Recall@K that each data set's papers report."""


class EvalConfig(Section):
    """Retrieval evaluation on held-out classes (faiss)."""

    path = "eval"

    recall_at: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8])
    """The K of Recall@K (used when ``protocol`` is null)."""
    batch_size: Int = Field(512, gt=0)
    """Images per forward pass when embedding the evaluation set."""
    protocol: Str | None = None
    """A data set's published K list: ``cub200``/``cars196`` (1-32), ``sop`` (1-1000), ``inshop``
    (1-50, query vs gallery when the shards list the roles); null = ``recall_at``."""
    block_size: Int = Field(1024, gt=0)
    """Queries searched at once: memory is block_size x max K neighbour ids, whatever the set size."""
    nmi: Bool = True
    """Also cluster the embeddings with faiss k-means (one centroid per class) and report NMI."""
    gallery_queries: Int = Field(8, ge=0)
    """Queries (one per held-out class) shown in ``gallery.png`` at the end of training; 0 = none."""
    gallery_top_k: Int = Field(5, gt=0)
    """Retrieved images shown per query in ``gallery.png`` (wrong ones framed in red)."""

    def ks(self) -> list[int]:
        """The K of Recall@K: the protocol's list, or ``recall_at``."""
        return list(PROTOCOLS[self.protocol]) if self.protocol is not None else list(self.recall_at)

    @field_validator("recall_at")
    @classmethod
    def _some_ks(cls, recall_at: list[int]) -> list[int]:
        if not recall_at:
            raise ValueError(f"expected positive ints, got {recall_at}")
        return recall_at

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, protocol: str | None) -> str | None:
        if protocol is not None and protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}, or null")
        return protocol


class MetricsConfig(Section):
    """Training metrics, exported through each node's Ray metrics agent (``observability/metrics.py``)."""

    path = "metrics"

    enabled: Bool = True
    """Record metrics with ``ray.util.metrics``; false = a null sink."""
    probe: Bool = True
    """At log steps, embed a fixed random batch (N classes x K images, drawn once from the seed)
    without gradient and record its violation rate beside the trained batch's
    (``probe_violation_rate``, ``train/probe.py``): one forward pass per log step; indexed data only."""
