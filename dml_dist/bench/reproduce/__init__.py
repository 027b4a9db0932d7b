"""``dml-dist bench reproduce``: the loss comparisons of the N-pair, MS and DRO papers, at small scale.

Every run goes through ``dml_dist.train.launcher.run_training`` (one shared local Ray instance,
2 workers, random classes: the mining service is off so only the loss and the batch differ), with
the same backbone (``small_cnn``) and the same number of steps within a group, and is evaluated
on held-out classes (never seen in training) every few steps. Groups:

- ``omniglot``: the Omniglot zip given with ``--omniglot`` or ``DML_DIST_OMNIGLOT``
  (``bench/omniglot.py``: train on Balinese, Early_Aramaic and Greek, 70 classes; evaluate on
  Korean and Latin, 66 classes), 28 px;
- ``losses``: the procedural glyph set (2,000 train classes, 400 held out), 32 px;
- ``n``: N-pair-mc on the procedural set with N from 64 to 1,000 classes per batch.

Losses per data set, each with 2N images per step: N-pair-mc and N-pair-ovo (N classes x 2),
triplet with every triplet of the batch (N x 2), the (N+1)-tuplet loss without N-pair batch
construction (N/4 classes x 8 images: the same 2N images, but the usual class-balanced batch,
so fewer classes and more positives per anchor), multi-similarity, DRO-KL and lifted structure
(N/2 classes x 4). N-pair, (N+1)-tuplet: cosine / 0.1 (as ``configs/quickstart.yaml``).

Reported per run: Recall@1/2/4/8, MAP@R and NMI at the end; "steps to 95%": the first evaluated
step at which Recall@1 reached 95% of its final value; Sohn's convergence claim: the first
evaluated step at which N-pair-mc's Recall@1 reached triplet's final Recall@1.

Writes ``OUT/results.md`` (the table, with the commands), ``OUT/results.json`` and the plots
``OUT/recall_curves_<group>.png`` and ``OUT/n_sweep.png``. Run directories go to
``runs/reproduce/``. ``--quick`` is a scale for checking the pipeline (tens of steps), not
results. A run directory that already finished the same resolved config is reused, so re-running
the command after an interruption trains only the missing rows; the report is rewritten after
every run.

Modules: ``recipes`` (the rows and scales as config overrides), ``runs`` (one training run per
row, reused when finished), ``report`` (the markdown and its arithmetic), ``plots``, ``suite``
(the groups, in order, and the files written).
"""
