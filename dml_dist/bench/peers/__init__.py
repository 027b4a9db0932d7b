"""``dml-dist bench peers``: pytorch-metric-learning in a plain loop against dml-dist, same images.

The peer is what a user runs today without dml-dist: pytorch-metric-learning (PML) losses in a
plain single-process PyTorch loop with Adam. Every row trains for the same number of steps on
the same batches (N classes x K images of the dml-dist config: the class list of step t is
``random_classes(seed, t)`` and the images are drawn and decoded by the same ``ClassBatchLoader``,
augmentation included, so a plain-loop step sees exactly the images of dml-dist's global batch
at step t), and every row is evaluated by the same code (``eval/heldout.py``'s
``evaluate_shards``: faiss leave-one-out retrieval on the held-out classes), so Recall@1 means
the same thing in every row.

Rows:

- PML ``NPairsLoss`` in Sohn's form (dot product of unnormalized embeddings) with its L2 penalty
  (``LpRegularizer(power=2)``, weight 0.002 on the mean squared norm); one positive pair per
  class of the batch, as PML picks them;
- PML ``TripletMarginLoss`` (margin 0.1, normalized L2 distance) on the triplets of
  ``TripletMarginMiner(type_of_triplets="semihard")``;
- PML ``MultiSimilarityLoss`` (alpha 2, beta 50, base 0.5) on the pairs of
  ``MultiSimilarityMiner(epsilon=0.1)``: the paper's defaults;

each on two backbones: the config's own (``models/embedder.py``'s ``build_model``, as
configured) and the peer's usual Conv-4 (``Conv4BN`` in ``models.py``: 4 x [conv3x3 64,
``nn.BatchNorm2d``, ReLU, max-pool 2], the last map flattened (2 x 2 x 64 at 32 px, 1 x 1 x 64
at 28 px), then a linear head to the config's embedding size). Then:

- "plain loop, dml-dist loss": the config's loss (``losses/``, single process) and backbone in the
  same plain loop, with the config's optimizer settings (AdamW, ``engine.lr`` scaled as the
  engine scales it, ``engine.weight_decay``; no schedule). It does the arithmetic of a dml-dist
  step without the system, so it is the denominator of the overhead ratio;
- "dml-dist": ``dml-dist train CONFIG`` through its driver (``train/launcher.py``'s
  ``run_training``: Ray Train workers, DeepSpeed, gloo all-gather, the loader), ``train.workers`` workers of one CPU thread
  each; the plain loop runs with as many torch threads as dml-dist has workers (the same cores).

Throughput: samples / second of training steps (data loading + forward + backward + optimizer
step, evaluation excluded), the first step left out (lazy initialization), for every row; for
dml-dist it is read from ``metrics.jsonl`` (``train.log_every=1``: each step's global batch and
seconds). The overhead ratio is dml-dist's samples/s over the plain loop's with dml-dist's loss
on the same backbone: above 1 means the system (data-parallel workers) more than pays for itself.

``--seeds 0,1,2`` repeats every row per seed (the batches and initial weights change with the
seed) and reports the mean and the spread (max - min) / 2. ``--quick`` is a pipeline check (a few
steps, N = 16), not results.

Modules: ``models`` (the peer's losses and backbones), ``plain_loop`` (the plain-loop rows),
``suite`` (the dml-dist row, the data, every row per seed), ``table`` (mean, spread, the table).
"""
