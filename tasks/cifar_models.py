"""
CIFAR-style ResNets for 32x32 inputs, registered in timm's model registry on import.

The margin papers (Weinstein, Fine and Hel-Or, 2019-2020) train ResNet-44 on CIFAR-10 and WRN-28-10 on
CIFAR-100. Those nets keep the full 32x32 resolution in the stem (one 3x3 stride-1 conv, no max-pool),
which timm's ImageNet ResNets do not. Importing this module registers, the timm way
(`timm.models.register_model` plus a `default_cfgs` entry per name):

- `cifar_resnet20/32/44/56/110`: He et al. 2016 (sec. 4.2), 3 stages of basic blocks with 16/32/64
  channels, 6n+2 layers; 0.27M / 0.46M / 0.66M / 0.85M / 1.73M parameters with 10 classes.
- `wide_resnet16_4`, `wide_resnet28_2`, `wide_resnet28_10`: Zagoruyko & Komodakis 2016, pre-activation
  basic blocks with 16k/32k/64k channels; 2.75M / 1.47M / 36.5M parameters.
- `cifar_cnn`: a LeNet-style CNN (two conv + max-pool blocks, a hidden fully-connected layer), 0.15M
  parameters; cheap enough for many short CPU runs (active-learning grids).
- `cifar_resnet18`: timm's own `ResNet` (basic blocks 2-2-2-2, 64..512 channels) with a 3x3 stride-1 stem
  and no max-pool; 11.2M parameters.

so that `timm.create_model("cifar_resnet44")` and
`TimmWrapperForImageClassification(TimmWrapperConfig(architecture="cifar_resnet44", num_labels=10))` both
work. Every model follows timm's classifier protocol (`num_classes`, `num_features`, `forward_features`,
`forward_head(pre_logits=...)`, `get_classifier()`, `reset_classifier()`), so the classifier is an
`nn.Linear` named `fc` and `hf_margin` finds it through `get_classifier()`.
No pretrained weights exist for these names; they are for random-init training.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

__all__ = ["CifarCNN", "CifarResNet", "WideResNet"]

# Per-channel statistics of the CIFAR-10 training set (the usual normalisation constants).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _kaiming_init(module: nn.Module) -> None:
    """He et al. init for convs (fan-out, ReLU gain), unit BatchNorm, N(0, 0.01) for the last linear layer."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


class _ZeroPadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample spatially, zero-pad the new channels (no parameters)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad_front = (out_chs - in_chs) // 2
        self.pad_back = out_chs - in_chs - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class CifarBasicBlock(nn.Module):
    """Post-activation basic block: conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU (He et al. 2016)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        if stride == 1 and in_chs == out_chs:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = _ZeroPadShortcut(in_chs, out_chs, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
            )

    def zero_init_last(self) -> None:
        """Start each residual branch at zero, so the block is the identity at init (Goyal et al. 2017)."""
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class PreActBasicBlock(nn.Module):
    """
    Wide-ResNet block: BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3, plus shortcut (Zagoruyko & Komodakis
    2016). When the shape changes, the shortcut is a 1x1 conv on the pre-activated input.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False) if stride != 1 or in_chs != out_chs else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.drop(self.act2(self.bn2(out))))
        return out + shortcut


class _CifarClassifierMixin:
    """timm's classifier protocol for a net with `global_pool`, `fc`, `num_features`, `drop_rate`."""

    num_classes: int
    num_features: int
    drop_rate: float
    global_pool: nn.Module
    fc: nn.Module

    def get_classifier(self, name_only: bool = False) -> str | nn.Module:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """`x: [B, num_features, H, W]` -> pooled features `[B, num_features]` or logits `[B, num_classes]`."""
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class CifarResNet(_CifarClassifierMixin, nn.Module):
    """
    The CIFAR ResNet of He et al. 2016 (sec. 4.2): a 3x3 conv with 16 channels, three stages of n basic
    blocks with 16/32/64 channels (stride 2 at the start of stages 2 and 3), global average pooling and
    a linear classifier: 6n+2 weighted layers.

    Args:
        depth (`int`, *optional*, defaults to 20): 6n+2 (20, 32, 44, 56, 110, ...).
        num_classes (`int`, *optional*, defaults to 10): 0 gives no classifier (`fc` is the identity).
        in_chans (`int`, *optional*, defaults to 3): image channels.
        widths (`tuple[int, int, int]`, *optional*, defaults to `(16, 32, 64)`): channels per stage.
        shortcut (`str`, *optional*, defaults to `"A"`): `"A"` zero-pads channels (He et al.'s CIFAR
            choice, no parameters); `"B"` uses a 1x1 conv + BN projection (the margin papers' code).
        drop_rate (`float`, *optional*, defaults to 0.0): dropout before the classifier.
        global_pool (`str`, *optional*, defaults to `"avg"`): timm pooling type.
        zero_init_last (`bool`, *optional*, defaults to `True`): zero the last BN weight of each block.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        shortcut: str = "A",
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        zero_init_last: bool = True,
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110), got {depth}.")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-pad) or 'B' (1x1 conv), got {shortcut!r}.")
        blocks_per_stage = (depth - 2) // 6
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, in_chs = [], widths[0]
        self.feature_info = [dict(num_chs=in_chs, reduction=1, module="stem")]
        for i, out_chs in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(CifarBasicBlock(in_chs, out_chs, stride if j == 0 else 1, shortcut))
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        _kaiming_init(self)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, CifarBasicBlock):
                    m.zero_init_last()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`x: [B, in_chans, H, W]` -> `[B, num_features, H / 4, W / 4]`."""
        return self.stages(self.stem(x))


class WideResNet(_CifarClassifierMixin, nn.Module):
    """
    WRN-d-k of Zagoruyko & Komodakis 2016: a 3x3 conv with 16 channels, three stages of (d-4)/6
    pre-activation basic blocks with 16k/32k/64k channels, a final BN-ReLU, global average pooling and a
    linear classifier. WRN-28-10 has 36.5M parameters.

    Args:
        depth (`int`, *optional*, defaults to 28): 6n+4 (16, 22, 28, 40, ...).
        widen_factor (`int`, *optional*, defaults to 10): k.
        num_classes (`int`, *optional*, defaults to 10): 0 gives no classifier.
        in_chans (`int`, *optional*, defaults to 3): image channels.
        block_drop_rate (`float`, *optional*, defaults to 0.0): dropout between the two convs of each
            block (the paper's "dropout", 0.3 in its best runs).
        drop_rate (`float`, *optional*, defaults to 0.0): dropout before the classifier (timm's meaning).
        global_pool (`str`, *optional*, defaults to `"avg"`): timm pooling type.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_chans: int = 3,
        block_drop_rate: float = 0.0,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n+4 with n >= 1 (16, 22, 28, 40), got {depth}.")
        blocks_per_stage = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.stem = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        stages, in_chs = [], 16
        self.feature_info = [dict(num_chs=in_chs, reduction=1, module="stem")]
        for i, out_chs in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(PreActBasicBlock(in_chs, out_chs, stride if j == 0 else 1, block_drop_rate))
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        # Pre-activation blocks leave their output un-normalised: one BN-ReLU closes the trunk.
        self.norm = nn.BatchNorm2d(in_chs)
        self.act = nn.ReLU(inplace=True)
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        _kaiming_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`x: [B, in_chans, H, W]` -> `[B, num_features, H / 4, W / 4]`."""
        return self.act(self.norm(self.stages(self.stem(x))))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """A timm pretrained cfg for 32x32 CIFAR inputs (no weights: `url` and `hf_hub_id` stay empty)."""
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "first_conv": "stem.0",
        "classifier": "fc",
        "license": "apache-2.0",
        **kwargs,
    }


# Read by `register_model` (it looks up `default_cfgs` in the entrypoint's module), so it comes first.
default_cfgs = generate_default_cfgs(
    {
        **{f"cifar_resnet{d}": _cfg() for d in (20, 32, 44, 56, 110)},
        **{name: _cfg(first_conv="stem") for name in ("wide_resnet16_4", "wide_resnet28_2", "wide_resnet28_10")},
        "cifar_resnet18": _cfg(pool_size=(4, 4), first_conv="conv1"),
        "cifar_cnn": _cfg(pool_size=(1, 1), first_conv="features.0"),
    }
)


class CifarCNN(_CifarClassifierMixin, nn.Module):
    """
    A small LeNet-style CNN: two blocks of 3x3 conv + ReLU + 2x2 max-pool (`widths` channels), adaptive
    average pooling to 4x4, a hidden fully-connected layer of `hidden` units with ReLU, and a linear
    classifier. No BatchNorm, so it trains the same on a few dozen samples as on many.

    Args:
        num_classes (`int`, *optional*, defaults to 10): 0 gives no classifier (`fc` is the identity).
        in_chans (`int`, *optional*, defaults to 3): image channels.
        widths (`tuple[int, int]`, *optional*, defaults to `(32, 64)`): channels of the two conv blocks.
        hidden (`int`, *optional*, defaults to 128): width of the hidden layer, the classifier's input.
        drop_rate (`float`, *optional*, defaults to 0.0): dropout before the classifier.
        global_pool (`str`, *optional*, defaults to `"avg"`): timm pooling type (of a 1x1 map).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, int] = (32, 64),
        hidden: int = 128,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        super().__init__()
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(widths[0], widths[1], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(widths[1] * 16, hidden),
            nn.ReLU(inplace=True),
        )
        self.feature_info = [dict(num_chs=hidden, reduction=4, module="features")]
        self.num_features = self.head_hidden_size = hidden
        self.global_pool, self.fc = create_classifier(hidden, num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`x: [B, in_chans, H, W]` (H, W >= 4) -> `[B, hidden, 1, 1]`."""
        return self.features(x)[:, :, None, None]


def _no_weights(variant: str, pretrained: bool) -> None:
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights; create it with pretrained=False.")


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    _no_weights(variant, pretrained)
    return build_model_with_cfg(CifarResNet, variant, pretrained, **kwargs)


def _create_wide_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> WideResNet:
    _no_weights(variant, pretrained)
    return build_model_with_cfg(WideResNet, variant, pretrained, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR (n=3), 0.27M parameters."""
    return _create_cifar_resnet("cifar_resnet20", pretrained, **dict(dict(depth=20), **kwargs))


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR (n=5), 0.46M parameters."""
    return _create_cifar_resnet("cifar_resnet32", pretrained, **dict(dict(depth=32), **kwargs))


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-44 for CIFAR (n=7), 0.66M parameters: the MMS paper's CIFAR-10 model."""
    return _create_cifar_resnet("cifar_resnet44", pretrained, **dict(dict(depth=44), **kwargs))


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 for CIFAR (n=9), 0.85M parameters."""
    return _create_cifar_resnet("cifar_resnet56", pretrained, **dict(dict(depth=56), **kwargs))


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-110 for CIFAR (n=18), 1.73M parameters."""
    return _create_cifar_resnet("cifar_resnet110", pretrained, **dict(dict(depth=110), **kwargs))


@register_model
def wide_resnet16_4(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-16-4, 2.75M parameters: a wide ResNet small enough for CPU runs."""
    return _create_wide_resnet("wide_resnet16_4", pretrained, **dict(dict(depth=16, widen_factor=4), **kwargs))


@register_model
def wide_resnet28_2(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-28-2, 1.47M parameters."""
    return _create_wide_resnet("wide_resnet28_2", pretrained, **dict(dict(depth=28, widen_factor=2), **kwargs))


@register_model
def wide_resnet28_10(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-28-10, 36.5M parameters: the MMS/MMR papers' CIFAR-100 model."""
    return _create_wide_resnet("wide_resnet28_10", pretrained, **dict(dict(depth=28, widen_factor=10), **kwargs))


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """
    timm's ResNet-18 (basic blocks 2-2-2-2, 64..512 channels) with the CIFAR stem: one 3x3 stride-1 conv
    and no max-pool, so a 32x32 input reaches the last stage at 4x4 instead of 1x1. 11.2M parameters.
    """
    _no_weights("cifar_resnet18", pretrained)
    model = build_model_with_cfg(
        ResNet, "cifar_resnet18", pretrained, **dict(dict(block=BasicBlock, layers=(2, 2, 2, 2)), **kwargs)
    )
    stem_chs = model.bn1.num_features
    model.conv1 = nn.Conv2d(model.in_chans, stem_chs, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    # The stem no longer downsamples: every feature map is 4x larger than in the ImageNet layout.
    for info in model.feature_info:
        info["reduction"] = max(info["reduction"] // 4, 1)
    return model


@register_model
def cifar_cnn(pretrained: bool = False, **kwargs: Any) -> CifarCNN:
    """A LeNet-style CNN (two conv blocks of 32 and 64 channels, a hidden layer of 128), 0.15M parameters."""
    _no_weights("cifar_cnn", pretrained)
    return build_model_with_cfg(CifarCNN, "cifar_cnn", pretrained, **kwargs)
