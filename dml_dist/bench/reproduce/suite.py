"""``bench reproduce`` end to end: the groups asked for, in order, and the files they write.

Groups measured earlier at the same scale stay in ``OUT/results.json`` and ``results.md``; a
group run now replaces its own, and the report is rewritten after every run (a stopped group
keeps its finished rows, marked partial).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from dml_dist.bench import REPO
from dml_dist.bench.omniglot import require_omniglot
from dml_dist.bench.reproduce.plots import write_plots
from dml_dist.bench.reproduce.recipes import FULL, GROUPS, QUICK
from dml_dist.bench.reproduce.report import format_markdown
from dml_dist.bench.reproduce.runs import run_group


def run_reproduction(
    out: str | Path,
    quick: bool = False,
    only: str | None = None,
    steps: int | None = None,
    n: int | None = None,
    n_sweep: str | None = None,
    omniglot: str | Path | None = None,
) -> dict[str, Any]:
    """Run the groups (all, or ``only``), write results.md / results.json / plots into ``out``.

    ``steps`` (every group), ``n`` (the procedural loss comparison) and ``n_sweep`` ("64,128")
    replace the scale's values, for a machine that cannot afford the full scale. ``omniglot``:
    the Omniglot zip (else ``$DML_DIST_OMNIGLOT``), needed by the ``omniglot`` group only.
    """
    groups = [g.strip() for g in only.split(",")] if only else list(GROUPS)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"--only: unknown group {unknown[0]!r}; valid: {', '.join(GROUPS)}")
    zip_path = require_omniglot(omniglot, "reproduce: the omniglot group") if "omniglot" in groups else None
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

        measured = run_group(group, scale, runs, REPO / "data" / "cache", zip_path, report)
        kept[group] = {**measured, "command": command}
        _write([kept[g] for g in GROUPS if g in kept], out, quick)
    return {"groups": [kept[g] for g in GROUPS if g in kept]}


def _command(quick: bool, groups: list[str], steps: int | None, n: int | None, n_sweep: str | None) -> str:
    parts = ["dml-dist bench reproduce", "--quick" if quick else "", f"--only {','.join(groups)}"]
    parts += ["--omniglot OMNIGLOT_ZIP" if "omniglot" in groups else ""]
    parts += [f"--steps {steps}" if steps else "", f"--n {n}" if n else "", f"--n-sweep {n_sweep}" if n_sweep else ""]
    return " ".join(p for p in parts if p)


def _write(results: list[dict[str, Any]], out: Path, quick: bool) -> None:
    command = "dml-dist bench reproduce --omniglot OMNIGLOT_ZIP" + (" --quick" if quick else "")
    write_plots(results, out)
    (out / "results.md").write_text(format_markdown(results, command, quick) + "\n")
    (out / "results.json").write_text(json.dumps({"quick": quick, "groups": results}, indent=1))
    print(f"reproduce: wrote {out / 'results.md'}", flush=True)
