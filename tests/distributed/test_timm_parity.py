"""A timm backbone with BatchNorm over the global batch: the distributed step (gloo ranks,
DeepSpeed, all-gather with gradient) equals the single-process step on the global batch, and the
batch-norm collectives stay quiet (no torch deprecation warning at every layer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dml_dist.config import ModelConfig
from tests.distributed.parity import StepSpec, distributed_step, single_process_gradients


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_timm_global_batch_norm_step_equals_the_single_process_step(world_size: int, tmp_path: Path) -> None:
    model = ModelConfig(backbone="timm/resnet10t", in_channels=3, embedding_dim=16, batch_norm="global")
    spec = StepSpec(num_classes=4, zero_stage=1, model=model, channels=3, image_size=16)
    expected, expected_loss = single_process_gradients(spec)
    saved = distributed_step(world_size, spec, tmp_path)
    got, loss = saved["grads"], float(saved["loss"])
    assert expected.keys() == got.keys()
    for name in expected:
        # fp32 sums in another order through 10 batch norms: differences of ~3e-6 of a tensor's
        # largest entry; batch statistics of the local rows alone would be off by ~1e-1.
        torch.testing.assert_close(got[name], expected[name], atol=1e-4, rtol=1e-4, msg=name)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    # The batch-norm scales are trained and compared (resnet10t's stem and block norms).
    assert "backbone.bn1.weight" in got and got["backbone.bn1.weight"].abs().sum() > 0
    assert saved["warnings"] == []  # collectives.py silences torch's deprecation of its autograd collectives


def _freeze_rank_main(rank: int, world_size: int, port: int, out: str) -> None:
    """Three AdamW steps (weight decay 0.1, ZeRO 1) through DeepSpeed, the first two with the
    backbone frozen: rank 0 records which parts moved after each step."""
    from dml_dist.config import EngineConfig
    from dml_dist.distributed import collectives
    from dml_dist.losses import build_loss
    from dml_dist.models.embedder import EmbedderWithLoss, build_model
    from dml_dist.models.param_groups import frozen_backbone
    from dml_dist.train.engine import build_engine
    from dml_dist.train.step import optimizer_step
    from tests.distributed.parity import global_batch

    collectives.init_local_gloo(rank, world_size, port)
    torch.manual_seed(0)
    spec = StepSpec(num_classes=4, channels=3, image_size=16)
    model = ModelConfig(backbone="timm/resnet10t", in_channels=3, embedding_dim=16)
    module = EmbedderWithLoss(build_model(model), build_loss(spec.loss_name, **spec.loss_params))
    config = EngineConfig(
        zero_stage=1, optimizer="AdamW", lr=1e-2, weight_decay=0.1, precision="fp32", backbone_lr_mult=0.5
    )
    engine = build_engine(module, config, 4, False, rank)
    images, labels = global_batch(spec, world_size, rank)
    moved = []
    for step in range(3):
        backbone = {k: v.clone() for k, v in engine.module.embedder.backbone.state_dict().items()}
        head = engine.module.embedder.head.weight.detach().clone()
        with frozen_backbone(engine.optimizer, engine.module.embedder, frozen=step < 2):
            optimizer_step(engine, engine.module.loss, images, labels)
        now = engine.module.embedder.backbone.state_dict()
        moved.append(
            {
                "backbone": any(not torch.equal(now[k], v) for k, v in backbone.items()),
                "head": not torch.equal(engine.module.embedder.head.weight, head),
            }
        )
    if rank == 0:
        torch.save({"moved": moved, "lrs": [g["lr"] for g in engine.optimizer.param_groups]}, out)
    collectives.shutdown()


def test_freeze_backbone_steps_leave_the_backbone_unchanged_under_deepspeed(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from dml_dist.distributed import collectives

    out = tmp_path / "freeze.pt"
    mp.spawn(_freeze_rank_main, args=(2, collectives.free_local_port(), str(out)), nprocs=2, join=True)
    saved = torch.load(out, weights_only=True)
    frozen = {"backbone": False, "head": True}
    assert saved["moved"] == [frozen, frozen, {"backbone": True, "head": True}]
    assert saved["lrs"] == pytest.approx([1e-2, 1e-2, 5e-3, 5e-3])  # head groups first, backbone at lr x 0.5
