"""``dml-dist bench reproduce``: the loss comparisons of the N-pair, MS and DRO papers, at small scale.

Every run goes through ``dml_dist.train.launcher.run_training`` (one shared local Ray instance,
2 workers, random classes: the mining service is off so only the loss and the batch differ), with
the same backbone (``small_cnn``) and the same number of steps within a group, and is evaluated
on held-out classes (never seen in training) every few steps. Groups:

- ``omniglot``: the Omniglot images of ``../shared/data/omniglot`` (train on Balinese,
  Early_Aramaic and Greek, 70 classes; evaluate on Korean and Latin, 66 classes), 28 px;
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
``runs/reproduce/``. ``--quick`` is a scale for checking the pipeline (tens of steps), not results. A run directory
that already finished the same resolved config is reused, so re-running the command after an
interruption trains only the missing rows; the report is rewritten after every run.
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from dml_dist.config.loader import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OMNIGLOT_ZIP = REPO.parent / "shared" / "data" / "omniglot" / "images_background_small1.zip"
TRAIN_ALPHABETS = ("Balinese", "Early_Aramaic", "Greek")
EVAL_ALPHABETS = ("Korean", "Latin")
GROUPS = ("omniglot", "losses", "n")


@dataclass(frozen=True)
class Scale:
    """How big each group is: steps, N, and the evaluation interval."""

    omniglot_steps: int
    omniglot_n: int
    procedural_steps: int
    procedural_n: int
    n_sweep: tuple[int, ...]
    n_sweep_steps: int
    eval_every: int


QUICK = Scale(20, 32, 20, 64, (64, 128), 20, 10)
# The scale of docs/results/: about 45 minutes on 2 CPU cores for the three groups.
FULL = Scale(300, 32, 300, 128, (64, 128, 256, 512, 1000), 150, 25)


@dataclass
class Recipe:
    """One row: a loss and its batch, as config overrides."""

    name: str
    loss: dict[str, Any]
    classes_divisor: int = 1
    images_per_class: int = 2
    note: str = ""
    extra: list[str] = field(default_factory=list)


NPAIR = {"l2_reg": 0.002, "temperature": 0.1}
RECIPES = [
    Recipe("N-pair-mc", {"name": "npair_mc", **NPAIR}),
    Recipe("N-pair-ovo", {"name": "npair_ovo", **NPAIR}),
    Recipe("triplet (all)", {"name": "triplet", "margin": 0.2, "mining": "all"}),
    Recipe("(N+1)-tuplet, PK batch", {"name": "tuplet", **NPAIR}, classes_divisor=4, images_per_class=8),
    Recipe("multi-similarity", {"name": "multi_similarity"}, classes_divisor=2, images_per_class=4),
    Recipe("DRO-KL", {"name": "dro_kl"}, classes_divisor=2, images_per_class=4),
    Recipe("lifted structure", {"name": "lifted"}, classes_divisor=2, images_per_class=4),
]


def prepare_omniglot(cache: Path) -> tuple[Path, Path]:
    """Unzip the Omniglot zip once and write train / eval shards split by alphabet."""
    from dml_dist.data.formats import write_dataset
    from dml_dist.data.shard_layout import is_complete

    train, evaluation = cache / "omniglot-shards" / "train", cache / "omniglot-shards" / "eval"
    if is_complete(train) and is_complete(evaluation):
        return train, evaluation
    if not OMNIGLOT_ZIP.is_file():
        raise ValueError(f"reproduce: the Omniglot images are not at {OMNIGLOT_ZIP} (see its README.md)")
    unzipped = cache / "omniglot-src"
    if unzipped.exists():
        shutil.rmtree(unzipped)
    with zipfile.ZipFile(OMNIGLOT_ZIP) as archive:
        archive.extractall(unzipped / "all")
    root = unzipped / "all" / "images_background_small1"
    for split, alphabets in (("train", TRAIN_ALPHABETS), ("eval", EVAL_ALPHABETS)):
        for alphabet in alphabets:
            (unzipped / split).mkdir(parents=True, exist_ok=True)
            shutil.move(str(root / alphabet), str(unzipped / split / alphabet))
    write_dataset("folder", unzipped / "train", train, 1000, holdout=0.0)
    write_dataset("folder", unzipped / "eval", evaluation, 1000, holdout=0.0)
    return train, evaluation


def run_one(config_path: Path, overrides: list[str], run_dir: Path, label: str) -> dict[str, Any]:
    """Train one recipe and return its row (final metrics and the Recall@1 curve).

    A run directory that already finished this exact config is reused, so an interrupted
    reproduction continues where it stopped.
    """
    from dml_dist.config.loader import config_to_dict
    from dml_dist.train.launcher import run_training

    config = load_config(config_path, overrides)
    finished = finished_row(run_dir, label, config_to_dict(config))
    if finished is not None:
        print(f"reproduce: {label}: reusing the finished run in {run_dir}", flush=True)
        return finished
    started = time.perf_counter()
    result = run_training(config, run_dir)
    row = row_from_eval(result, label, config.batch.num_classes, config.batch.images_per_class, config.train.steps)
    row["seconds"] = time.perf_counter() - started
    row["run_dir"] = str(run_dir)
    (run_dir / ROW_FILE).write_text(json.dumps(row, indent=1))
    return row


ROW_FILE = "reproduce_row.json"


def row_from_eval(result: dict[str, Any], label: str, num_classes: int, k: int, steps: int) -> dict[str, Any]:
    """A table row from a run's ``eval.json`` contents."""
    history = [(h["step"], h["recall"]["1"]) for h in result["history"]]
    metrics = result.get("metrics", {})
    return {
        "name": label,
        "batch": f"{num_classes} x {k}",
        "steps": steps,
        "recall": result["recall"],
        "map_at_r": metrics.get("map_at_r"),
        "nmi": metrics.get("nmi"),
        "history": history,
        "steps_to_95": steps_to_fraction(history, 0.95),
        "seconds": None,
    }


def finished_row(run_dir: Path, label: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """The row of a run directory that finished ``config`` (same resolved config), else None."""
    import yaml

    from dml_dist.train import run_files

    paths = [run_dir / run_files.CONFIG, run_dir / run_files.EVAL, run_dir / run_files.EMBEDDER]
    if not all(p.is_file() for p in paths) or yaml.safe_load(paths[0].read_text()) != json.loads(json.dumps(config)):
        return None
    result = json.loads(paths[1].read_text())
    if result.get("step") != config["train"]["steps"]:
        return None
    saved = run_dir / ROW_FILE
    if saved.is_file():
        row: dict[str, Any] = json.loads(saved.read_text())
        row["name"] = label
        return row
    batch = config["batch"]
    row = row_from_eval(result, label, batch["num_classes"], batch["images_per_class"], config["train"]["steps"])
    row["run_dir"] = str(run_dir)
    return row


def steps_to_fraction(history: list[tuple[int, float]], fraction: float) -> int | None:
    """First evaluated step whose Recall@1 reaches ``fraction`` of the final value."""
    if not history:
        return None
    target = fraction * history[-1][1]
    return next((step for step, r1 in history if step > 0 and r1 >= target), history[-1][0])


def first_step_reaching(history: list[tuple[int, float]], value: float) -> int | None:
    return next((step for step, r1 in history if step > 0 and r1 >= value), None)


def _common(steps: int, eval_every: int) -> list[str]:
    return [
        f"train.steps={steps}",
        f"train.eval_every={eval_every}",
        "train.workers=2",
        f"train.log_every={max(1, eval_every)}",
        "mining.enabled=false",
        "metrics.enabled=false",
        "eval.gallery_queries=0",
    ]


def _recipe_overrides(recipe: Recipe, n: int) -> list[str]:
    loss = ",".join(f"{k}: {json.dumps(v)}" for k, v in recipe.loss.items())
    return [
        f"loss={{{loss}}}",
        f"batch.num_classes={n // recipe.classes_divisor}",
        f"batch.images_per_class={recipe.images_per_class}",
        *recipe.extra,
    ]


def run_group(
    group: str, scale: Scale, runs: Path, cache: Path, on_row: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Train every row of a group; ``on_row`` sees the partial group after each run."""
    rows: list[dict[str, Any]] = _ReportingList(group, on_row)
    if group == "omniglot":
        train, evaluation = prepare_omniglot(cache)
        config = REPO / "configs" / "omniglot.yaml"
        base = [f"data.train_shards={train}", f"data.eval_shards={evaluation}"]
        for recipe in RECIPES:
            overrides = [*base, *_common(scale.omniglot_steps, scale.eval_every)]
            overrides += _recipe_overrides(recipe, scale.omniglot_n)
            rows.append(run_one(config, overrides, runs / group / _slug(recipe.name), recipe.name))
    elif group == "losses":
        config = REPO / "configs" / "quickstart.yaml"
        for recipe in RECIPES:
            overrides = [
                *_common(scale.procedural_steps, scale.eval_every),
                *_recipe_overrides(recipe, scale.procedural_n),
            ]
            rows.append(run_one(config, overrides, runs / group / _slug(recipe.name), recipe.name))
    else:
        config = REPO / "configs" / "quickstart.yaml"
        for n in scale.n_sweep:
            overrides = [*_common(scale.n_sweep_steps, scale.eval_every), *_recipe_overrides(RECIPES[0], n)]
            rows.append(run_one(config, overrides, runs / group / f"n{n}", f"N-pair-mc, N={n}"))
    return {"group": group, "rows": list(rows)}


class _ReportingList(list):  # type: ignore[type-arg]
    """A list of rows that reports the partial group after each append (a long group keeps its rows)."""

    def __init__(self, group: str, on_row: Callable[[dict[str, Any]], None] | None):
        super().__init__()
        self.group, self.on_row = group, on_row

    def append(self, row: Any) -> None:
        super().append(row)
        if self.on_row is not None:
            self.on_row({"group": self.group, "rows": list(self), "partial": True})


def sohn_claim(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Steps N-pair-mc needs to reach triplet's final Recall@1 (None when a row is missing)."""
    by_name = {r["name"]: r for r in rows}
    if "N-pair-mc" not in by_name or "triplet (all)" not in by_name:
        return None
    triplet = by_name["triplet (all)"]
    target = float(triplet["recall"]["1"])
    return {
        "triplet_final_recall_1": target,
        "triplet_steps": triplet["steps"],
        "npair_mc_steps_to_reach_it": first_step_reaching(by_name["N-pair-mc"]["history"], target),
    }


def write_plots(results: list[dict[str, Any]], out: Path) -> list[Path]:
    paths = []
    for group in results:
        figure, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
        for row in group["rows"]:
            steps, r1 = zip(*row["history"], strict=True) if row["history"] else ((), ())
            ax.plot(steps, r1, marker="o", markersize=3, label=f"{row['name']} ({row['batch']})")
        ax.set(xlabel="step", ylabel="held-out Recall@1", title=f"{group['group']}: Recall@1 on unseen classes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        path = out / f"recall_curves_{group['group']}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths.append(path)
        if group["group"] == "n":
            figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
            ns = [int(r["name"].rpartition("=")[2]) for r in group["rows"]]
            left.plot(ns, [r["recall"]["1"] for r in group["rows"]], marker="o")
            left.set(xscale="log", xlabel="N (classes per batch)", ylabel="final Recall@1", title="Recall@1 vs N")
            right.plot(ns, [r["steps_to_95"] for r in group["rows"]], marker="o", color="tab:orange")
            right.set(xscale="log", xlabel="N", ylabel="steps", title="steps to 95% of final Recall@1")
            for ax in (left, right):
                ax.grid(alpha=0.3)
            path = out / "n_sweep.png"
            figure.savefig(path, dpi=100)
            plt.close(figure)
            paths.append(path)
    return paths


TITLES = {
    "omniglot": "Omniglot (train: 3 alphabets, 70 classes; held out: 2 alphabets, 66 unseen classes), 28 px",
    "losses": "Procedural glyphs (2,000 train classes; 400 unseen held-out classes), 32 px",
    "n": "N-pair-mc on the procedural set: the effect of N",
}


def format_markdown(results: list[dict[str, Any]], command: str, quick: bool) -> str:
    lines = [
        "# Reproduction at small scale",
        "",
        f"Regenerate every group: `{command}` (2 Ray workers on the 2-core CPU machine; `small_cnn` backbone; "
        "random classes, no mining; held-out classes never seen in training).",
        "",
    ]
    if quick:
        lines += ["**Quick scale: a pipeline check, not results.**", ""]
    for group in results:
        lines += [f"## {TITLES[group['group']]}", ""]
        if group.get("partial"):
            lines += [
                "**Partial: only these rows were measured (the group was running or was stopped); "
                "re-running its command trains the missing rows and keeps these.**",
                "",
            ]
        if group.get("command"):
            lines += [f"Measured with `{group['command']}`.", ""]
        lines += [
            "| loss | batch (N x K) | steps | R@1 | R@2 | R@4 | R@8 | MAP@R | NMI | steps to 95% of final R@1 | time (s) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in group["rows"]:
            rec = r["recall"]
            cells = [f"{100 * rec[k]:.1f}" for k in ("1", "2", "4", "8")]
            seconds = "-" if r.get("seconds") is None else f"{r['seconds']:.0f}"
            lines.append(
                f"| {r['name']} | {r['batch']} | {r['steps']} | {' | '.join(cells)} | "
                f"{_pct(r['map_at_r'])} | {_pct(r['nmi'])} | {r['steps_to_95']} | {seconds} |"
            )
        claim = sohn_claim(group["rows"])
        if claim:
            reached = claim["npair_mc_steps_to_reach_it"]
            lines += [
                "",
                f"Sohn's convergence claim: triplet's final Recall@1 is {100 * claim['triplet_final_recall_1']:.1f} "
                f"after {claim['triplet_steps']} steps; N-pair-mc "
                + (f"first reaches it at step {reached}." if reached is not None else "never reaches it here."),
            ]
        first = group["rows"][0]["history"] if group["rows"] else []
        if first and first[0][0] == 0:
            lines += ["", f"The same network untrained (step 0): R@1 {100 * first[0][1]:.1f}."]
        lines += ["", f"![{group['group']}](recall_curves_{group['group']}.png)", ""]
        if group["group"] == "n":
            lines += ["![N sweep](n_sweep.png)", ""]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def run_reproduction(
    out: str | Path,
    quick: bool = False,
    only: str | None = None,
    steps: int | None = None,
    n: int | None = None,
    n_sweep: str | None = None,
) -> dict[str, Any]:
    """Run the groups (all, or ``only``), write results.md / results.json / plots into ``out``.

    ``steps`` (every group), ``n`` (the procedural loss comparison) and ``n_sweep`` ("64,128")
    replace the scale's values, for a machine that cannot afford the full scale.
    """
    groups = [g.strip() for g in only.split(",")] if only else list(GROUPS)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"--only: unknown group {unknown[0]!r}; valid: {', '.join(GROUPS)}")
    scale = QUICK if quick else FULL
    if steps is not None:
        scale = replace(scale, omniglot_steps=steps, procedural_steps=steps, n_sweep_steps=steps)
    if n is not None:
        scale = replace(scale, procedural_n=n)
    if n_sweep:
        scale = replace(scale, n_sweep=tuple(int(v) for v in n_sweep.split(",")))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = REPO / "runs" / ("reproduce-quick" if quick else "reproduce")
    # Groups measured earlier at the same scale stay in the report; the ones run now replace theirs.
    previous = out / "results.json"
    kept: dict[str, dict[str, Any]] = {}
    if previous.is_file():
        earlier = json.loads(previous.read_text())
        if earlier.get("quick") == quick:
            kept = {g["group"]: g for g in earlier["groups"]}
    for group in groups:
        command = _command(quick, [group], steps, n, n_sweep)

        def report(partial: dict[str, Any], command: str = command) -> None:
            kept[partial["group"]] = {**partial, "command": command}
            _write([kept[g] for g in GROUPS if g in kept], out, quick)

        kept[group] = {**run_group(group, scale, runs, REPO / "data" / "cache", report), "command": command}
        _write([kept[g] for g in GROUPS if g in kept], out, quick)
    return {"groups": [kept[g] for g in GROUPS if g in kept]}


def _command(quick: bool, groups: list[str], steps: int | None, n: int | None, n_sweep: str | None) -> str:
    parts = ["dml-dist bench reproduce", "--quick" if quick else "", f"--only {','.join(groups)}"]
    parts += [f"--steps {steps}" if steps else "", f"--n {n}" if n else "", f"--n-sweep {n_sweep}" if n_sweep else ""]
    return " ".join(p for p in parts if p)


def _write(results: list[dict[str, Any]], out: Path, quick: bool) -> None:
    command = "dml-dist bench reproduce" + (" --quick" if quick else "")
    write_plots(results, out)
    (out / "results.md").write_text(format_markdown(results, command, quick) + "\n")
    (out / "results.json").write_text(json.dumps({"quick": quick, "groups": results}, indent=1))
    print(f"reproduce: wrote {out / 'results.md'}", flush=True)
