"""The reproduction report's arithmetic and table (the runs themselves are not part of the tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dml_dist.bench.reproduce.recipes import RECIPES
from dml_dist.bench.reproduce.report import first_step_reaching, format_markdown, sohn_claim, steps_to_fraction


def _row(name: str, history: list[tuple[int, float]]) -> dict:
    final = history[-1][1]
    return {
        "name": name,
        "batch": "32 x 2",
        "steps": history[-1][0],
        "recall": {"1": final, "2": final, "4": final, "8": final},
        "map_at_r": 0.1,
        "nmi": None,
        "history": history,
        "steps_to_95": steps_to_fraction(history, 0.95),
        "seconds": 1.0,
    }


def test_convergence_steps_and_sohns_claim() -> None:
    npair = [(0, 0.1), (10, 0.3), (20, 0.5), (30, 0.52)]
    triplet = [(0, 0.1), (10, 0.2), (20, 0.3), (30, 0.4)]
    assert steps_to_fraction(npair, 0.95) == 20
    assert first_step_reaching(npair, 0.4) == 20 and first_step_reaching(triplet, 0.9) is None
    rows = [_row("N-pair-mc", npair), _row("triplet (all)", triplet)]
    assert sohn_claim(rows) == {"triplet_final_recall_1": 0.4, "triplet_steps": 30, "npair_mc_steps_to_reach_it": 20}
    text = format_markdown([{"group": "losses", "rows": rows}], "dml-dist bench reproduce", quick=False)
    assert "| N-pair-mc | 32 x 2 | 30 | 52.0 |" in text and "first reaches it at step 20" in text


def test_every_recipe_keeps_two_n_images_per_step() -> None:
    n = 64
    for recipe in RECIPES:
        assert (n // recipe.classes_divisor) * recipe.images_per_class == 2 * n, recipe.name


def test_the_omniglot_group_names_the_option_when_the_zip_is_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dml_dist.bench.omniglot import OMNIGLOT_ENV
    from dml_dist.bench.reproduce.suite import run_reproduction

    monkeypatch.delenv(OMNIGLOT_ENV, raising=False)
    with pytest.raises(ValueError, match="--omniglot PATH"):
        run_reproduction(tmp_path, only="omniglot")
    monkeypatch.setenv(OMNIGLOT_ENV, str(tmp_path / "missing.zip"))
    with pytest.raises(ValueError, match=f"{OMNIGLOT_ENV}: .*missing.zip is not a file"):
        run_reproduction(tmp_path, only="omniglot")
    assert not (tmp_path / "results.md").exists()  # refused before any run
