"""The experiment schema: one dataclass per part of the system, a docstring line per field.

Only plain data lives here (numbers, strings, lists); runtime objects (Ray handles, engines)
are passed to build steps, never stored in config. Cross-field checks that need no data on
disk live in ``ExperimentConfig.validate``; checks that need the data set (N against the number
of training classes) run where the data set is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dml_dist.config.ranges import check_ranges

DEEPSPEED_OPTIMIZERS = ("adam", "adamw", "adagrad", "lamb", "lion")


@dataclass
class ProceduralDataConfig:
    """The built-in procedural glyph data set (used when no shards are given)."""

    num_classes: int = 2400
    """Total number of glyph classes (train + held-out)."""
    num_test_classes: int = 400
    """Classes held out for retrieval evaluation; disjoint from the training classes."""
    images_per_class: int = 12
    """Drawings per class, each with its own affine warp, stroke jitter and noise."""
    image_size: int = 32
    """Side of the square grayscale images, in pixels."""
    seed: int = 1234
    """Seed of the generator; the data set is a pure function of these fields."""


@dataclass
class DataConfig:
    """Where training and evaluation images come from."""

    train_shards: str | None = None
    """Directory of training WebDataset shards with ``class_index.json``; null = procedural."""
    eval_shards: str | None = None
    """Directory of held-out shards for retrieval; null = the procedural test split."""
    cache_dir: str = "data/cache"
    """Where the procedural data set is written once and reused."""
    samples_per_shard: int = 2000
    """Samples per tar shard when writing shards."""
    image_size: int | None = None
    """Side of the square images the model sees (decode + resize); null = ``procedural.image_size``."""
    channels: int = 1
    """1 = grayscale, 3 = RGB (natural images); must equal ``model.in_channels``."""
    augment: str = "none"
    """Training augmentation: ``none``, ``flip_crop`` (random resized crop + horizontal flip, for
    photos) or ``affine`` (random rotation, scale, shear and shift, for drawings and handwriting)."""
    loader_workers: int = 0
    """DataLoader worker processes that decode and augment; 0 = decode in the training process."""
    mode: str = "indexed"
    """``indexed``: read the step's classes by the class index (mining works); ``streaming``: read
    shards front to back into per-class buffers and train on the classes that fill first."""
    min_images_policy: str = "replace"
    """A class with fewer than K images: ``replace`` (sample with replacement) or ``exclude``."""
    stream_buffer_samples: int = 20000
    """Streaming mode: most images held in the per-class buffers of one worker."""
    procedural: ProceduralDataConfig = field(default_factory=ProceduralDataConfig)

    @property
    def decode_size(self) -> int:
        """The image side used for decoding: ``image_size``, or the procedural set's."""
        return self.image_size if self.image_size is not None else self.procedural.image_size


@dataclass
class BatchConfig:
    """The global batch: N classes x K images per class, split across all workers."""

    num_classes: int = 320
    """N: distinct classes in every global batch (N-pair: the number of tuplets)."""
    images_per_class: int = 2
    """K: images per class (2 for N-pair batch construction)."""
    chunk_size: int = 0
    """Images per forward chunk on each worker with cached embedding gradients (GradCache);
    0 = the worker's whole share at once. Bounds activation memory, same gradients."""


@dataclass
class ModelConfig:
    """The embedding network."""

    backbone: str = "small_cnn"
    """Backbone name: ``small_cnn`` (a GroupNorm conv net for small grayscale images), or the papers'
    ImageNet backbones ``resnet50``, ``bn_inception``, ``googlenet`` (frozen BN; see ``pretrained``)."""
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    """Output channels of the conv stages (each stage halves the resolution)."""
    norm: str = "group"
    """``small_cnn`` normalization: ``group`` (GroupNorm) or ``batch`` (batch norm over the global
    batch across ranks, exact under the all-gather; not with ``batch.chunk_size``)."""
    pool_grid: int = 0
    """``small_cnn`` pooling: 0 = global average pooling; g > 0 = average-pool the last map to g x g
    and flatten it (keeps the spatial layout; Conv-4 uses 2)."""
    embedding_dim: int = 128
    """D: size of the embedding produced by the linear head."""
    in_channels: int = 1
    """Input image channels (1 grayscale, 3 RGB); must equal ``data.channels``."""
    pretrained: str | None = None
    """ImageNet weights for ``resnet50``/``bn_inception``/``googlenet``: a state-dict file (.pt/.pth)
    loaded into the backbone; null = random init. Nothing is downloaded."""


@dataclass
class LossConfig:
    """The loss, chosen by name; any other key is a hyperparameter of that loss."""

    name: str = "npair_mc"
    """Registered loss name (see ``dml_dist.losses.LOSSES``)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Hyperparameters passed to the loss constructor (YAML: keys beside ``name``)."""


@dataclass
class MiningConfig:
    """The hard-negative-class mining service: which classes each batch holds (``mining/``).

    The defaults are the rule measured best in ``docs/results/mining.md``; it does not beat
    random classes there, so the shipped configs leave ``enabled`` false except the Sohn
    reproductions."""

    enabled: bool = True
    """Run the mining service; false = random classes and no service."""
    rule: str = "seed_neighbours"
    """Selection rule: ``seed_neighbours`` (random seed classes, each with neighbours sampled
    among its nearest), ``greedy`` (Sohn 2016: a chain of the hardest classes) or ``random``."""
    random_share: float = 0.25
    """Share of each batch's classes drawn at random once mining runs (the rest is mined)."""
    group_size: int = 2
    """seed_neighbours: classes per group, the seed and group_size - 1 sampled neighbours."""
    top_k: int = 10
    """seed_neighbours: a neighbour is sampled among the seed's top_k most similar classes."""
    temperature: float = 0.1
    """seed_neighbours: neighbours are drawn with probability softmax(similarity / temperature)."""
    warmup_steps: int = 150
    """Random classes before this step (a model at step 0 knows no hard classes)."""
    ramp_steps: int = 100
    """After warm-up, the mined share rises linearly to 1 - random_share over this many steps."""
    fresh_within_steps: int = 0
    """Mine only among classes refreshed within this many steps of the selection; 0 = any age."""
    warmup_coverage: float = 0.0
    """Random classes until this share of training classes has an embedding in the bank (greedy
    wants about 0.9: a chain among a few known classes repeats them; seed_neighbours needs none)."""
    momentum: float = 0.5
    """Bank update: new = normalize(momentum * old + (1 - momentum) * observed)."""
    timeout_s: float = 2.0
    """Longest wait for the service's answer before falling back to random classes."""
    refresh_after_steps: int = 50
    """R: a class not refreshed for this many steps is stale; rank 0 re-embeds stale classes."""
    refresh_every: int = 10
    """Steps between two refresh passes over stale classes on rank 0; 0 = never."""
    refresh_max_classes: int = 64
    """Most stale classes one refresh pass re-embeds (the oldest first)."""
    refresh_images_per_class: int = 2
    """Images embedded per stale class in a refresh pass (forward only, no gradient)."""
    exact_below_classes: int = 20000
    """Exact search below this many classes; at or above it, search on a kNN graph of the classes."""
    num_neighbours: int = 32
    """k of the kNN graph of the classes that restricts the search (large banks)."""
    graph_rebuild_steps: int = 50
    """A new kNN graph every this many steps, built in the background and used this many steps later."""
    save_every_steps: int = 100
    """The service saves its state to the run directory every this many steps; 0 = only at checkpoints."""

    def validate(self) -> None:
        """Ranges of the mining fields; ``ValueError`` naming the field."""
        rules = ("seed_neighbours", "greedy", "random")
        if self.rule not in rules:
            raise ValueError(f"mining.rule: expected one of {', '.join(rules)}, got {self.rule!r}")
        for name in (
            "refresh_after_steps",
            "refresh_max_classes",
            "refresh_images_per_class",
            "num_neighbours",
            "top_k",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"mining.{name}: expected a positive integer, got {getattr(self, name)}")
        for name in (
            "refresh_every",
            "exact_below_classes",
            "graph_rebuild_steps",
            "save_every_steps",
            "warmup_steps",
            "ramp_steps",
            "fresh_within_steps",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"mining.{name}: expected 0 or more, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"mining.group_size: expected 2 or more, got {self.group_size}")
        if self.temperature <= 0:
            raise ValueError(f"mining.temperature: expected a positive value, got {self.temperature}")
        if not 0.0 <= self.warmup_coverage <= 1.0:
            raise ValueError(f"mining.warmup_coverage: expected a value in [0, 1], got {self.warmup_coverage}")


@dataclass
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
    """``auto`` (bf16 on GPU, fp32 on CPU), ``fp32`` or ``bf16``."""
    gradient_clipping: float = 0.0
    """Clip the global gradient norm to this value; 0 = off."""
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

    def scaled_lr(self, num_classes: int) -> float:
        """The learning rate for a global batch of ``num_classes`` classes."""
        ratio = num_classes / self.lr_reference_classes
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[self.lr_scaling]


@dataclass
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
    checkpoint_every: int = 0
    """Save a checkpoint every this many steps (and always at the end); 0 = only at the end."""
    keep_checkpoints: int = 3
    """Complete checkpoints kept in the run directory (older ones are deleted); 0 = all."""
    max_failures: int = 2
    """Times Ray Train restarts a failed worker group from the latest checkpoint before giving up."""
    max_nonfinite_steps: int = 5
    """Stop after this many steps in a row with a non-finite loss or gradient (each is skipped)."""
    storage: str | None = None
    """Directory every node mounts (NFS, EFS, a ReadWriteMany volume): the run directory defaults to
    ``STORAGE/runs/NAME`` and generated data to ``STORAGE/data``; ``--storage`` and the
    ``DML_DIST_STORAGE`` environment variable set it too. null = the driver's working directory."""
    placement: str = "PACK"
    """Ray placement of the workers: ``PACK`` (fill a node first), ``SPREAD`` (spread when
    possible) or ``STRICT_SPREAD`` (one worker per node)."""


@dataclass
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

    def ks(self) -> list[int]:
        """The K of Recall@K: the protocol's list, or ``recall_at``."""
        from dml_dist.eval.retrieval import PROTOCOLS

        return list(PROTOCOLS[self.protocol]) if self.protocol is not None else list(self.recall_at)

    def validate(self) -> None:
        """Ranges of the eval fields; ``ValueError`` naming the field."""
        from dml_dist.eval.retrieval import PROTOCOLS

        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValueError(
                f"eval.protocol: unknown protocol {self.protocol!r}; valid: {', '.join(PROTOCOLS)}, or null"
            )
        for name in ("block_size", "gallery_top_k"):
            if getattr(self, name) <= 0:
                raise ValueError(f"eval.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.gallery_queries < 0:
            raise ValueError(f"eval.gallery_queries: expected 0 or more, got {self.gallery_queries}")


@dataclass
class MetricsConfig:
    """Training metrics, exported through each node's Ray metrics agent (``observability/metrics.py``)."""

    enabled: bool = True
    """Record metrics with ``ray.util.metrics``; false = a null sink."""


@dataclass
class ExperimentConfig:
    """A whole experiment, as written in ``configs/*.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    memory: MemoryConfig = field(default_factory=lambda: MemoryConfig())

    def validate(self) -> None:
        """Check field ranges and cross-field rules; raise ``ValueError`` naming the field."""
        _positive("batch.num_classes", self.batch.num_classes)
        _at_least("batch.images_per_class", self.batch.images_per_class, 2)
        _positive("train.steps", self.train.steps)
        _positive("train.workers", self.train.workers)
        if self.train.placement not in PLACEMENTS:
            raise ValueError(f"train.placement: expected one of {', '.join(PLACEMENTS)}, got {self.train.placement!r}")
        _positive("model.embedding_dim", self.model.embedding_dim)
        _positive("eval.batch_size", self.eval.batch_size)
        _positive("data.samples_per_shard", self.data.samples_per_shard)
        if not self.model.channels or any(c <= 0 for c in self.model.channels):
            raise ValueError(f"model.channels: expected a non-empty list of positive ints, got {self.model.channels}")
        if self.model.norm not in ("group", "batch"):
            raise ValueError(f"model.norm: expected group or batch, got {self.model.norm!r}")
        if self.model.pool_grid < 0:
            raise ValueError(
                f"model.pool_grid: expected 0 (global average pooling) or more, got {self.model.pool_grid}"
            )
        if self.model.norm == "batch" and self.batch.chunk_size > 0:
            raise ValueError(
                "model.norm: batch normalization over the global batch needs the whole batch in one forward; "
                "set batch.chunk_size: 0 or model.norm: group"
            )
        if not self.eval.recall_at or any(k <= 0 for k in self.eval.recall_at):
            raise ValueError(f"eval.recall_at: expected positive ints, got {self.eval.recall_at}")
        self.eval.validate()
        if self.batch.num_classes % self.train.workers != 0:
            raise ValueError(
                f"batch.num_classes: the global batch of {self.batch.num_classes} classes must divide "
                f"evenly among train.workers={self.train.workers} workers"
            )
        if self.engine.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"engine.zero_stage: expected 0, 1, 2 or 3, got {self.engine.zero_stage}")
        if self.engine.optimizer.lower() not in DEEPSPEED_OPTIMIZERS:
            raise ValueError(
                f"engine.optimizer: unknown optimizer {self.engine.optimizer!r}; valid: {', '.join(DEEPSPEED_OPTIMIZERS)}"
            )
        if self.engine.schedule not in ("constant", "warmup_cosine", "warmup_linear"):
            raise ValueError(
                f"engine.schedule: expected constant, warmup_cosine or warmup_linear, got {self.engine.schedule!r}"
            )
        if self.engine.warmup_steps >= self.train.steps and self.engine.schedule != "constant":
            raise ValueError(
                f"engine.warmup_steps: {self.engine.warmup_steps} warm-up steps leave no decay within "
                f"train.steps={self.train.steps}"
            )
        if self.engine.lr_scaling not in ("none", "linear", "sqrt"):
            raise ValueError(f"engine.lr_scaling: expected none, linear or sqrt, got {self.engine.lr_scaling!r}")
        _positive("engine.lr_reference_classes", self.engine.lr_reference_classes)
        if self.batch.chunk_size < 0:
            raise ValueError(
                f"batch.chunk_size: expected 0 (off) or a positive number of images, got {self.batch.chunk_size}"
            )
        if self.engine.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"engine.precision: expected auto, fp32 or bf16, got {self.engine.precision!r}")
        if not 0.0 <= self.mining.random_share <= 1.0:
            raise ValueError(f"mining.random_share: expected a value in [0, 1], got {self.mining.random_share}")
        if not 0.0 <= self.mining.momentum < 1.0:
            raise ValueError(f"mining.momentum: expected a value in [0, 1), got {self.mining.momentum}")
        if self.mining.timeout_s <= 0:
            raise ValueError(f"mining.timeout_s: expected a positive number of seconds, got {self.mining.timeout_s}")
        self.mining.validate()
        self._validate_data_loading()
        proc = self.data.procedural
        _at_least("data.procedural.images_per_class", proc.images_per_class, 2)
        _at_least("data.procedural.image_size", proc.image_size, 16)
        if not 0 < proc.num_test_classes < proc.num_classes:
            raise ValueError(
                f"data.procedural.num_test_classes: expected between 1 and num_classes - 1 "
                f"({proc.num_classes - 1}), got {proc.num_test_classes}"
            )
        check_ranges(self)  # every numeric field's own range (config/ranges.py)
        self.memory.validate(self.loss, self.batch.num_classes * self.batch.images_per_class)

    def _validate_data_loading(self) -> None:
        data = self.data
        if data.image_size is not None:
            _at_least("data.image_size", data.image_size, 8)
        if data.channels not in (1, 3):
            raise ValueError(f"data.channels: expected 1 (grayscale) or 3 (RGB), got {data.channels}")
        if self.model.in_channels != data.channels:
            raise ValueError(
                f"model.in_channels: the model takes {self.model.in_channels} channels but "
                f"data.channels is {data.channels}; set both to the same value"
            )
        if data.augment not in ("none", "flip_crop", "affine"):
            raise ValueError(f"data.augment: expected none, flip_crop or affine, got {data.augment!r}")
        if data.loader_workers < 0:
            raise ValueError(f"data.loader_workers: expected 0 or more, got {data.loader_workers}")
        if data.mode not in ("indexed", "streaming"):
            raise ValueError(f"data.mode: expected indexed or streaming, got {data.mode!r}")
        if data.min_images_policy not in ("replace", "exclude"):
            raise ValueError(f"data.min_images_policy: expected replace or exclude, got {data.min_images_policy!r}")
        _positive("data.stream_buffer_samples", data.stream_buffer_samples)
        if data.mode == "streaming" and self.mining.enabled:
            raise ValueError(
                "data.mode: streaming trains on the classes the stream fills first, so the mining service "
                "cannot choose them; set mining.enabled: false (or data.mode: indexed)"
            )


PLACEMENTS = ("PACK", "SPREAD", "STRICT_SPREAD")


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{name}: expected at least {low}, got {value}")


@dataclass
class MemoryConfig:
    """Cross-batch memory (XBM, Wang et al. CVPR 2020): the last M global embeddings as extra
    candidates without gradient (``dml_dist/losses/memory.py``). Off by default."""

    size: int = 0
    """M: rows kept, the newest rows of the global batches (the current batch's among them); 0 = off."""
    weight: float = 1.0
    """w: the loss is L(batch vs batch) + w * L(batch vs memory), as XBM (1 in its configs)."""
    start_step: int = 0
    """First step (0-based) that writes and uses the memory; XBM starts after 1,000-2,000 of
    35,000 iterations, once embeddings drift slowly."""

    def validate(self, loss: LossConfig, global_batch: int) -> None:
        """Ranges of the memory fields, and whether the loss takes memory; ``ValueError`` naming the field."""
        if self.size < 0:
            raise ValueError(f"memory.size: expected 0 (off) or a number of rows, got {self.size}")
        if self.weight < 0:
            raise ValueError(f"memory.weight: expected 0 or more, got {self.weight}")
        if self.start_step < 0:
            raise ValueError(f"memory.start_step: expected 0 or more, got {self.start_step}")
        if self.size == 0:
            return
        if self.size < global_batch:
            raise ValueError(
                f"memory.size: expected 0 or at least the global batch of {global_batch} rows, got {self.size}"
            )
        from dml_dist.losses.registry import build_loss

        built = build_loss(loss.name, **loss.params)
        if not built.takes_memory:
            raise ValueError(f"memory: loss {loss.name} takes no memory: {built.memory_refusal}")
