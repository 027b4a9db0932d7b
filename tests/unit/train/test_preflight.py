"""What a cluster can never hold (``train/preflight.py``): each shortfall names the field to change."""

from __future__ import annotations

import pytest

from dml_dist.train.preflight import Demand, shortfall

NODE = {"CPU": 4.0}
GPU_NODE = {"CPU": 8.0, "GPU": 2.0}


@pytest.mark.parametrize(
    ("demand", "nodes", "field"),
    [
        (Demand(2, {"CPU": 1.0, "GPU": 1.0}, False), [NODE, NODE], "train.use_gpu: "),
        (Demand(3, {"CPU": 1.0, "GPU": 1.0}, False), [GPU_NODE], "train.use_gpu: "),
        (Demand(1, {"CPU": 6.0}, False), [NODE, NODE], "data.loader_workers: "),
        (Demand(3, {"CPU": 3.0}, False), [NODE, NODE], "train.workers: "),
        (Demand(3, {"CPU": 1.0}, True), [NODE, NODE], "train.placement: "),
    ],
)
def test_a_demand_the_cluster_can_never_hold_names_its_field(demand: Demand, nodes: list, field: str) -> None:
    problem = shortfall(demand, nodes)
    assert problem is not None and problem.startswith(field), problem


@pytest.mark.parametrize(
    ("demand", "nodes"),
    [
        (Demand(2, {"CPU": 4.0}, False), [NODE, NODE]),  # in use now or not: it frees up
        (Demand(2, {"CPU": 1.0, "GPU": 1.0}, True), [GPU_NODE, GPU_NODE]),
        (Demand(4, {"CPU": 2.0, "GPU": 1.0}, False), [GPU_NODE, GPU_NODE]),
    ],
)
def test_a_demand_the_cluster_can_hold_passes(demand: Demand, nodes: list) -> None:
    assert shortfall(demand, nodes) is None
