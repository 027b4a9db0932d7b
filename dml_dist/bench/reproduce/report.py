"""The ``bench reproduce`` report: convergence arithmetic on Recall@1 curves, and ``results.md``.

A curve is ``[(step, Recall@1), ...]`` in evaluation order; rows are those of ``runs.py``.
"""

from __future__ import annotations

from typing import Any

TITLES = {
    "omniglot": "Omniglot (train: 3 alphabets, 70 classes; held out: 2 alphabets, 66 unseen classes), 28 px",
    "losses": "Procedural glyphs (2,000 train classes; 400 unseen held-out classes), 32 px",
    "n": "N-pair-mc on the procedural set: the effect of N",
}


def steps_to_fraction(history: list[tuple[int, float]], fraction: float) -> int | None:
    """First evaluated step whose Recall@1 reaches ``fraction`` of the final value."""
    if not history:
        return None
    target = fraction * history[-1][1]
    return next((step for step, r1 in history if step > 0 and r1 >= target), history[-1][0])


def first_step_reaching(history: list[tuple[int, float]], value: float) -> int | None:
    """First evaluated step after 0 whose Recall@1 reaches ``value`` (None: never)."""
    return next((step for step, r1 in history if step > 0 and r1 >= value), None)


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


def format_markdown(results: list[dict[str, Any]], command: str, quick: bool) -> str:
    """``results.md``: one table per group, Sohn's claim, the untrained baseline and the plots."""
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
