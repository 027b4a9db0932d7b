"""``dml-dist tune``: a hyperparameter search on Ray Tune whose trials are dml-dist training runs.

The search space is a YAML mapping from dotted config keys to distributions::

    engine.lr: {loguniform: [1.0e-4, 1.0e-2]}
    loss.temperature: {choice: [0.05, 0.1]}
    batch.num_classes: {choice: [64, 128]}
    engine.warmup_steps: {randint: [0, 50]}      # integers in [low, high)
    data.augment: {choice: [none, affine]}

Each trial is a whole ``dml-dist train`` run (Ray Train workers, DeepSpeed, the mining service)
on the base config (the typed config ``dml-dist tune`` loaded, storage included) with the
sampled values set as ``--set key=value`` would; every trial's config is validated before the
search starts on one sample of the space, and again in the trial. Trials report loss and
held-out Recall@K through ``ray.train.report`` at every evaluation (every ``train.eval_every``
steps) and checkpoint, which Ray Tune's ``TuneReportCallback``
passes on; an ASHA scheduler (Li et al. 2020) stops trials whose Recall@1 trails at its rungs
(measured in steps, from ``--grace-steps`` up to ``train.steps``).

The held-out set a trial reports on is ``data.eval_shards``: point it at validation classes,
never at the classes whose figures you report.

The first trial is the base config itself wherever its values of the space's keys lie inside the
space (``base_point``): a search then never ends below the config it started from, and its table
says how far the sampled trials are from that start. A base value outside the space (a choice
list without it, a range that excludes it) leaves the search purely random, and the command says
which key.

Outputs in ``OUT`` (default ``STORAGE/tune/NAME`` or ``runs/tune-NAME``): one run directory per
trial, ``results.json`` and ``results.md`` (one row per trial: sampled values, last step, loss,
Recall@1, stopped early or not) and ``best.yaml``, the best trial's full config, which
``dml-dist train`` accepts as is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from dml_dist.config.loader import config_to_dict, save_config, with_overrides
from dml_dist.config.schema import ExperimentConfig

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "randint")
METRIC = "recall@1"
TRIAL_DRIVER_CPU = 0.01  # a trial's own process only waits on its trainer (Ray needs a non-empty bundle)


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """The search space file: ``{dotted.key: {distribution: arguments}}``, checked."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"--space {path}: cannot read it ({err})") from err
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"--space {path}: expected a mapping from config keys to distributions")
    for key, spec in raw.items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ValueError(
                f"--space {path}: {key}: expected one of {{{', '.join(DISTRIBUTIONS)}: ...}}, got {spec!r}"
            )
        kind, args = next(iter(spec.items()))
        if kind == "choice" and (not isinstance(args, list) or not args):
            raise ValueError(f"--space {path}: {key}: choice needs a non-empty list")
        if kind != "choice" and (not isinstance(args, list) or len(args) != 2 or not args[0] < args[1]):
            raise ValueError(f"--space {path}: {key}: {kind} needs [low, high] with low < high, got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise ValueError(f"--space {path}: {key}: loguniform needs low > 0, got {args[0]}")
    return raw


def ray_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The same space as Ray Tune sampling objects."""
    from ray import tune

    samplers = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}
    out: dict[str, Any] = {}
    for key, spec in space.items():
        kind, args = next(iter(spec.items()))
        out[key] = tune.choice(args) if kind == "choice" else samplers[kind](*args)
    return out


def trial_config(base: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """The base config with the sampled values set (validated like ``--set``)."""
    return with_overrides(base, [f"{key}={json.dumps(_plain(value))}" for key, value in params.items()])


def check_space(base: ExperimentConfig, space: dict[str, dict[str, Any]]) -> None:
    """Fail before the search when a key of the space is not a config field or a sample is invalid."""
    first = {key: _first_value(spec) for key, spec in space.items()}
    try:
        trial_config(base, first)
    except ValueError as err:
        raise ValueError(f"--space: a sample of the space is not a valid config: {err}") from err


def base_point(base: ExperimentConfig, space: dict[str, dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """The base config's own values of the space's keys, or ``(None, key)`` for the first key whose
    value lies outside its distribution (a choice list, ``[low, high]``, randint's ``[low, high)``)."""
    values = config_to_dict(base)
    point: dict[str, Any] = {}
    for key, spec in space.items():
        value: Any = values
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not _inside(value, spec):
            return None, key
        point[key] = value
    return point, ""


def _inside(value: Any, spec: dict[str, Any]) -> bool:
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return any(value == option and type(value) is type(option) for option in args)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    if kind == "randint":
        return isinstance(value, int) and args[0] <= value < args[1]
    return bool(args[0] <= value <= args[1])


def _first_value(spec: dict[str, Any]) -> Any:
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return args[0]
    if kind == "randint":
        return int(args[0])
    return float(args[0])


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def run_tune(
    base: ExperimentConfig,
    space_path: str,
    trials: int,
    out: Path,
    grace_steps: int,
    address: str | None = None,
) -> dict[str, Any]:
    """Run the search on ``base``; write ``results.json``, ``results.md`` and ``best.yaml`` into ``out``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from dml_dist.train.launcher import _worker_resources, init_ray

    space = load_space(space_path)
    check_space(base, space)
    start, outside = base_point(base, space)
    if start is None:
        print(f"tune: the base config's {outside} is outside the space: no trial starts from the base config")
    if trials <= 0:
        raise ValueError(f"--trials: expected a positive number, got {trials}")
    out = out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    cpus_per_trial = int(base.train.workers * _worker_resources(base)["CPU"])
    # A local instance gets a CPU beyond the trial's workers: the trial's own process takes a
    # sliver (TRIAL_DRIVER_CPU), and with exactly the workers' CPUs no trial could start.
    init_ray(address, cpus_per_trial + 1)
    import ray

    concurrent = max(1, int(ray.cluster_resources().get("CPU", 1) // (cpus_per_trial + TRIAL_DRIVER_CPU)))

    def trial(params: dict[str, Any]) -> None:
        from ray.tune.integration.ray_train import TuneReportCallback

        from dml_dist.train.launcher import run_training

        config = trial_config(base, params)
        run_dir = out / f"trial-{tune.get_context().get_trial_id()}"
        run_training(config, run_dir, callbacks=[TuneReportCallback()])

    scheduler = ASHAScheduler(
        time_attr="step", max_t=base.train.steps, grace_period=min(grace_steps, base.train.steps), reduction_factor=2
    )
    tuner = tune.Tuner(
        tune.with_resources(trial, {"CPU": TRIAL_DRIVER_CPU}),  # the trial's Train workers hold the CPUs
        param_space=ray_space(space),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=trials,  # the base point counts as one of them
            scheduler=scheduler,
            max_concurrent_trials=concurrent,
            search_alg=BasicVariantGenerator(points_to_evaluate=[start] if start else None),
        ),
        run_config=tune.RunConfig(name="tune", storage_path=str(out / "ray")),
    )
    grid = tuner.fit()
    results = [grid[i] for i in range(len(grid))]
    rows = _rows(results, base.train.steps, list(space), start)
    if not any(row[METRIC] is not None for row in rows):
        errors = [str(r.error) for r in results if r.error is not None]
        raise RuntimeError(f"tune: no trial reported {METRIC}: {errors[:1]}")
    best = max((r for r in rows if r[METRIC] is not None), key=lambda r: r[METRIC])
    save_config(trial_config(base, best["params"]), out / "best.yaml")
    (out / "results.json").write_text(json.dumps({"metric": METRIC, "trials": rows, "best": best}, indent=2))
    (out / "results.md").write_text(results_table(rows, list(space)))
    return {"trials": rows, "best": best, "out": str(out)}


def _rows(results: list[Any], steps: int, keys: list[str], start: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        metrics = result.metrics or {}
        params = {key: _plain(result.config[key]) for key in keys}
        last = metrics.get("step")
        rows.append(
            {
                "params": params,
                "step": last,
                "loss": metrics.get("loss"),
                METRIC: metrics.get(METRIC),
                "stopped_early": last is not None and last < steps,
                "base_config": params == start,
                "error": None if result.error is None else str(result.error).splitlines()[0],
            }
        )
    return rows


def results_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """One markdown row per trial, best Recall@1 first."""
    ordered = sorted(rows, key=lambda r: -1.0 if r[METRIC] is None else r[METRIC], reverse=True)
    head = [*keys, "steps", "loss", "R@1", "stopped early", "base config"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in ordered:
        cells = [_cell(row["params"][k]) for k in keys]
        cells += [str(row["step"]), _cell(row["loss"]), _cell(row[METRIC]), "yes" if row["stopped_early"] else "no"]
        cells.append("yes" if row["base_config"] else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
