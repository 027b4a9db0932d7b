"""ImageNet backbones of the DML papers, written out here (torchvision is not a dependency).

- ``resnet50``: He et al. 2016, bottleneck blocks [3, 4, 6, 3], stride on the 3x3 conv (the
  common "v1.5"), 2,048 features. Parameter names follow the usual layout (``conv1``, ``bn1``,
  ``layer1.0.conv1``, ``layer1.0.downsample.0``, ...), so a standard ImageNet ResNet-50 state
  dict loads as is (its ``fc.*`` and ``num_batches_tracked`` entries are ignored).
- ``bn_inception``: Ioffe and Szegedy 2015 (Inception with batch normalization; the backbone of
  multi-similarity and DRO), 1,024 features.
- ``googlenet``: Szegedy et al. 2015 (Inception v1, the backbone of Sohn's N-pair paper), no
  batch normalization and no auxiliary heads, 1,024 features.

Batch normalization is **frozen**: always the stored statistics, never batch statistics (the
affine scale and shift still train). This is the usual practice when fine-tuning DML backbones
(Musgrave et al. 2020), and it keeps every sample's embedding independent of the rest of its
batch, so the distributed step equals the single-process step exactly (as with ``small_cnn``'s
GroupNorm). Trained from scratch, frozen BN is only an affine map: these backbones are meant to
start from pretrained weights (``model.pretrained``).

``load_pretrained`` reads a state-dict file (``torch.load(weights_only=True)``) into a
backbone; nothing is ever downloaded. A missing file or mismatched keys raise ``ValueError``
saying how to provide the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics: y = (x - running_mean) / sqrt(running_var + eps) * weight + bias."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        running_mean: torch.Tensor = self.running_mean  # type: ignore[assignment]
        running_var: torch.Tensor = self.running_var  # type: ignore[assignment]
        scale = self.weight * torch.rsqrt(running_var + self.eps)
        shift = self.bias - running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


# ----------------------------------------------------------------------------- ResNet-50
class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride here) -> 1x1 expand (x4), plus the identity or a projection."""

    def __init__(self, in_ch: int, width: int, stride: int):
        super().__init__()
        out_ch = width * 4
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), FrozenBatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class ResNet50(nn.Module):
    """[B, C, H, W] -> pooled features [B, 2048]."""

    num_features = 2048

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64)
        in_ch = 64
        for i, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
            layers = []
            for b in range(blocks):
                layers.append(Bottleneck(in_ch, width, stride if b == 0 else 1))
                in_ch = width * 4
            setattr(self, f"layer{i}", nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x.mean(dim=(2, 3))


# ----------------------------------------------------------------------------- Inception family
class ConvUnit(nn.Module):
    """conv -> (frozen BN) -> ReLU; GoogLeNet's units have a bias and no BN."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, batch_norm: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=not batch_norm)
        self.bn: nn.Module = FrozenBatchNorm2d(out_ch) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated along channels.

    ``spec`` = (n1x1, n3x3 reduce, n3x3, nwide reduce, nwide, pool, pool proj): the wide branch is
    a 5x5 conv (GoogLeNet) or two 3x3 convs (BN-Inception). ``stride=2`` (BN-Inception's
    reduction blocks) has no 1x1 branch, strides the last conv of the 3x3 and wide branches, and
    passes the max-pooled input through unprojected (pool proj 0).
    """

    def __init__(
        self, in_ch: int, spec: tuple[int, int, int, int, int, str, int], batch_norm: bool, wide: str, stride: int = 1
    ):
        super().__init__()
        n1, n3r, n3, nwr, nw, pool, proj = spec
        self.pool, self.stride = pool, stride
        self.branch1 = ConvUnit(in_ch, n1, 1, batch_norm=batch_norm) if n1 else None
        self.branch3 = nn.Sequential(
            ConvUnit(in_ch, n3r, 1, batch_norm=batch_norm), ConvUnit(n3r, n3, 3, stride, batch_norm)
        )
        if wide == "5x5":
            self.branch_wide = nn.Sequential(
                ConvUnit(in_ch, nwr, 1, batch_norm=batch_norm), ConvUnit(nwr, nw, 5, stride, batch_norm)
            )
        else:
            self.branch_wide = nn.Sequential(
                ConvUnit(in_ch, nwr, 1, batch_norm=batch_norm),
                ConvUnit(nwr, nw, 3, batch_norm=batch_norm),
                ConvUnit(nw, nw, 3, stride, batch_norm),
            )
        self.branch_pool = ConvUnit(in_ch, proj, 1, batch_norm=batch_norm) if proj else None
        self.out_channels = n1 + n3 + nw + (proj if proj else in_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooling = F.avg_pool2d if self.pool == "avg" else F.max_pool2d
        pooled = pooling(x, 3, stride=1, padding=1) if self.stride == 1 else F.max_pool2d(x, 3, stride=2, padding=1)
        outs = [] if self.branch1 is None else [self.branch1(x)]
        outs += [self.branch3(x), self.branch_wide(x)]
        outs.append(pooled if self.branch_pool is None else self.branch_pool(pooled))
        return torch.cat(outs, dim=1)


# Block specs (n1, n3r, n3, nwr, nw, pool, proj), and "M" for a stride-2 max pool between stages.
BN_INCEPTION_BLOCKS: list[tuple[str, tuple[int, int, int, int, int, str, int], int] | str] = [
    ("3a", (64, 64, 64, 64, 96, "avg", 32), 1),
    ("3b", (64, 64, 96, 64, 96, "avg", 64), 1),
    ("3c", (0, 128, 160, 64, 96, "max", 0), 2),
    ("4a", (224, 64, 96, 96, 128, "avg", 128), 1),
    ("4b", (192, 96, 128, 96, 128, "avg", 128), 1),
    ("4c", (160, 128, 160, 128, 160, "avg", 128), 1),
    ("4d", (96, 128, 192, 160, 192, "avg", 128), 1),
    ("4e", (0, 128, 192, 192, 256, "max", 0), 2),
    ("5a", (352, 192, 320, 160, 224, "avg", 128), 1),
    ("5b", (352, 192, 320, 192, 224, "max", 128), 1),
]
GOOGLENET_BLOCKS: list[tuple[str, tuple[int, int, int, int, int, str, int], int] | str] = [
    ("3a", (64, 96, 128, 16, 32, "max", 32), 1),
    ("3b", (128, 128, 192, 32, 96, "max", 64), 1),
    "M",
    ("4a", (192, 96, 208, 16, 48, "max", 64), 1),
    ("4b", (160, 112, 224, 24, 64, "max", 64), 1),
    ("4c", (128, 128, 256, 24, 64, "max", 64), 1),
    ("4d", (112, 144, 288, 32, 64, "max", 64), 1),
    ("4e", (256, 160, 320, 32, 128, "max", 128), 1),
    "M",
    ("5a", (256, 160, 320, 32, 128, "max", 128), 1),
    ("5b", (384, 192, 384, 48, 128, "max", 128), 1),
]


class Inception(nn.Module):
    """Stem (7x7/2, pool, 1x1, 3x3, pool) then the blocks; [B, C, H, W] -> pooled features [B, 1024]."""

    def __init__(self, blocks: list, batch_norm: bool, wide: str, in_channels: int = 3):  # type: ignore[type-arg]
        super().__init__()
        self.stem1 = ConvUnit(in_channels, 64, 7, stride=2, batch_norm=batch_norm)
        self.stem2 = ConvUnit(64, 64, 1, batch_norm=batch_norm)
        self.stem3 = ConvUnit(64, 192, 3, batch_norm=batch_norm)
        layers: list[nn.Module] = []
        in_ch = 192
        for item in blocks:
            if item == "M":
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
                continue
            _, spec, stride = item
            block = InceptionBlock(in_ch, spec, batch_norm, wide, stride)
            layers.append(block)
            in_ch = block.out_channels
        self.blocks = nn.Sequential(*layers)
        self.num_features = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.stem1(x), 3, stride=2, padding=1)
        x = F.max_pool2d(self.stem3(self.stem2(x)), 3, stride=2, padding=1)
        return self.blocks(x).mean(dim=(2, 3))


def bn_inception(in_channels: int = 3) -> Inception:
    return Inception(BN_INCEPTION_BLOCKS, batch_norm=True, wide="double3x3", in_channels=in_channels)


def googlenet(in_channels: int = 3) -> Inception:
    return Inception(GOOGLENET_BLOCKS, batch_norm=False, wide="5x5", in_channels=in_channels)


def load_pretrained(backbone: nn.Module, path: str, name: str) -> None:
    """Load a state-dict file into ``backbone``; ``ValueError`` with instructions when it cannot."""
    how = (
        f"Provide ImageNet weights for {name} as a PyTorch state dict saved with "
        f"torch.save(state_dict, PATH) whose keys match this backbone (for example "
        f"{', '.join(list(backbone.state_dict())[:3])}, ...), copy it to this machine and set "
        f"model.pretrained: PATH; or set model.pretrained: null to train from random initialization "
        f"(weak for these backbones). Nothing is downloaded."
    )
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"model.pretrained: {file} not found. {how}")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} keys of another shape (first: {wrong_shape[0]})")
        raise ValueError(f"model.pretrained: {file} does not fit {name}: {'; '.join(problems)}. {how}")
    backbone.load_state_dict(state)
