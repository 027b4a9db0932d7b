"""timm backbones' first weights: a file written from timm's own ``state_dict()``, a warm hub cache
read offline, an earlier run (``init_from``), and the one-line errors when the weights are wrong
or unreachable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dml_dist.config import DataConfig, ModelConfig
from dml_dist.models.embedder import EmbedderWithLoss, build_model
from dml_dist.models.param_groups import frozen_backbone, parameter_groups

REPO = Path(__file__).resolve().parents[3]
RESNET = "timm/resnet10t"


def _timm(name: str) -> torch.nn.Module:
    import timm

    torch.manual_seed(1)
    return timm.create_model(name).eval()  # with its classifier, as users save it


def _features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(images), pre_logits=True)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_weights_file_from_timm_state_dict_gives_the_same_network(suffix: str, tmp_path: Path) -> None:
    source = _timm("resnet10t")
    file = tmp_path / f"resnet10t{suffix}"
    if suffix == ".pt":
        torch.save(source.state_dict(), file)
    else:
        save_file(source.state_dict(), str(file))
    config = ModelConfig(backbone=RESNET, in_channels=3, embedding_dim=8, pretrained=str(file), batch_norm="frozen")
    model = build_model(config, DataConfig(channels=3, mean=[0.5] * 3, std=[0.5] * 3)).eval()
    images = torch.rand(3, 3, 32, 32) * 2 - 1  # the decoded [-1, 1] images; mean = std = 0.5 maps them to themselves
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(images), _features(source, images))
        torch.manual_seed(0)
        again = build_model(config, DataConfig(channels=3, mean=[0.5] * 3, std=[0.5] * 3)).eval()
        again.head.load_state_dict(model.head.state_dict())
        torch.testing.assert_close(again(images), model(images))  # same embedding for the same image


def test_a_weights_file_of_another_model_fails_in_one_line(tmp_path: Path) -> None:
    file = tmp_path / "resnet18.pt"
    torch.save(_timm("resnet18").state_dict(), file)
    config = ModelConfig(backbone=RESNET, in_channels=3, pretrained=str(file))
    with pytest.raises(ValueError) as caught:
        build_model(config)
    message = str(caught.value)
    assert "\n" not in message
    assert f"model.pretrained: {file} does not fit {RESNET}" in message
    assert "missing keys (first: conv1.0.weight)" in message and "unexpected keys (first: conv1.weight)" in message


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Python in a fresh process: huggingface_hub reads HF_HOME and HF_HUB_OFFLINE at import."""
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=300, cwd=REPO
    )


def test_pretrained_true_offline_without_cache_says_the_three_ways(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{backbone: {RESNET}, in_channels: 3, pretrained: true}}\ndata: {{channels: 3}}\n")
    code = (
        "from dml_dist.config.loader import load_config; from dml_dist.train.model_sources import check_weights; "
        f"check_weights(load_config({str(config)!r}))"
    )
    done = _run(code, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home")})
    assert done.returncode != 0
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("ValueError: model.pretrained: true: the weights of timm/resnet10t are neither reachable")
    assert "(HF_HUB_OFFLINE=1)" in line and str(tmp_path / "empty-hf-home") in line
    assert "(1) a warm hub cache" in line and "(2) model.pretrained: PATH" in line and "(3) model.init_from" in line


def test_pretrained_true_reads_a_warm_hub_cache_offline(tmp_path: Path) -> None:
    """The hub cache layout (models--ORG--NAME/refs/main, snapshots/REV/model.safetensors), filled
    by hand with known weights: timm's own loader finds them there with HF_HUB_OFFLINE=1."""
    import timm

    hub_id = timm.models.get_pretrained_cfg("resnet10t").hf_hub_id  # timm/resnet10t.c3_in1k
    repo = tmp_path / "hf" / "hub" / f"models--{hub_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    source = _timm("resnet10t")
    save_file(source.state_dict(), str(repo / "snapshots" / revision / "model.safetensors"))
    torch.save(source.state_dict(), tmp_path / "expected.pt")
    code = (
        "import torch; from dml_dist.config import ModelConfig; from dml_dist.models.embedder import build_model; "
        f"m = build_model(ModelConfig(backbone={RESNET!r}, in_channels=3, pretrained=True)); "
        f"e = torch.load({str(tmp_path / 'expected.pt')!r}); s = m.backbone.state_dict(); "
        "assert all(torch.equal(s[k], e[k]) for k in s), 'weights differ'; print('same weights')"
    )
    done = _run(code, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "same weights" in done.stdout


def test_init_from_with_another_head_size_keeps_the_backbone_and_warns(tmp_path: Path) -> None:
    from dml_dist import run_files

    config = ModelConfig(backbone=RESNET, in_channels=3, embedding_dim=8)
    earlier = build_model(config)
    run_files.save_embedder(tmp_path / run_files.EMBEDDER, earlier, {}, step=5)
    wider = ModelConfig(backbone=RESNET, in_channels=3, embedding_dim=16, init_from=str(tmp_path))
    with pytest.warns(UserWarning, match=r"model.init_from: the head of .* another shape .*initialized afresh"):
        model = build_model(wider)
    assert model.head.weight.shape == (16, 512)
    for key, value in earlier.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_parameter_groups_split_backbone_and_head_and_skip_decay_on_norms_biases_and_tokens() -> None:
    config = ModelConfig(backbone="timm/vit_tiny_patch16_224", backbone_args={"img_size": 32}, in_channels=3)
    module = EmbedderWithLoss(build_model(config), torch.nn.Identity())
    groups = parameter_groups(module, lr=1e-3, weight_decay=0.05, backbone_lr_mult=0.1)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(module.named_parameters())
    assert len(by_param) == len(named)
    assert [(g["name"], g["weight_decay"]) for g in groups][0] == ("head", 0.0)  # engine.get_lr()[0] is the head's

    def group_of(name: str) -> tuple[float, float]:
        group = by_param[id(named[name])]
        return group["lr"], group["weight_decay"]

    assert group_of("embedder.head.weight") == (1e-3, 0.05)
    assert group_of("embedder.head.bias") == (1e-3, 0.0)
    assert group_of("embedder.backbone.blocks.0.attn.qkv.weight") == pytest.approx((1e-4, 0.05))
    for no_decay in ("blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "pos_embed", "cls_token"):
        assert group_of(f"embedder.backbone.{no_decay}") == pytest.approx((1e-4, 0.0)), no_decay


def test_a_frozen_backbone_step_changes_only_the_head() -> None:
    """AdamW with weight decay on every group, as DeepSpeed hands it zero gradients for the
    frozen backbone: at learning rate 0 the backbone, batch-norm statistics included, is unchanged."""
    torch.manual_seed(0)
    config = ModelConfig(backbone=RESNET, in_channels=3, embedding_dim=8)
    module = EmbedderWithLoss(build_model(config), torch.nn.Identity()).train()
    optimizer = torch.optim.AdamW(parameter_groups(module, lr=1e-2, weight_decay=0.1), lr=1e-2)
    backbone_before = {k: v.clone() for k, v in module.embedder.backbone.state_dict().items()}
    head_before = module.embedder.head.weight.detach().clone()
    images = torch.randn(6, 3, 32, 32)
    for frozen in (True, False):
        with frozen_backbone(optimizer, module.embedder, frozen):
            module(images).square().mean().backward()
            for p in module.parameters():  # what DeepSpeed does for parameters that got no gradient
                p.grad = torch.zeros_like(p) if p.grad is None else p.grad
            optimizer.step()
            optimizer.zero_grad()
        after = module.embedder.backbone.state_dict()
        unchanged = all(torch.equal(after[k], v) for k, v in backbone_before.items())
        assert unchanged == frozen
        assert not torch.equal(module.embedder.head.weight, head_before)
        assert [g["lr"] for g in optimizer.param_groups] == [1e-2] * len(optimizer.param_groups)


@pytest.mark.parametrize(("stored", "wanted"), [(1, 3), (3, 1)])
def test_init_from_another_channel_count_adapts_the_first_convolution(stored: int, wanted: int, tmp_path: Path) -> None:
    """Grayscale weights for RGB images (and the reverse): an image whose channels are all equal
    gets the embedding that the earlier network gave it."""
    from dml_dist import run_files

    torch.manual_seed(0)
    shape = {"channels": [8, 8], "embedding_dim": 4, "norm": "batch", "pool_grid": 2}
    earlier = build_model(ModelConfig(**shape, in_channels=stored)).eval()
    run_files.save_embedder(tmp_path / run_files.EMBEDDER, earlier, {}, step=5)
    with pytest.warns(UserWarning, match=rf"trained on {stored} input channel.*adapted to {wanted}"):
        model = build_model(ModelConfig(**shape, in_channels=wanted, init_from=str(tmp_path))).eval()
    gray = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(
            model(gray.expand(-1, wanted, -1, -1)), earlier(gray.expand(-1, stored, -1, -1)), atol=1e-5
        )
