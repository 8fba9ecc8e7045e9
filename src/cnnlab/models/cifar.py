"""CIFAR-scale ResNet, pre-activation ResNet, DenseNet and GoogLeNet (≈0.25 M parameters each), written here.

Layouts follow docs/experiments.md ("SPEC §2") to the letter (the UvA deep-learning course's tutorial nets).
At 3x32x32 with 10 classes: resnet20_cifar 272,474 parameters, preact_resnet20_cifar 272,250, densenet_cifar
239,146, googlenet_cifar 260,650. Each takes `activation` (relu default), `norm` (batch default) and `dropout`
(before the classifier); the ResNets also `blocks` (per group) and `widths` (one per group). All end in a
global average pool, so any input side works.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cnnlab.config import ACTIVATIONS, NORMS
from cnnlab.models.head import ClassifierHeadMixin
from cnnlab.models.layers import activation as make_activation
from cnnlab.models.layers import compact, kaiming_nonlinearity, norm_2d
from cnnlab.models.registry import ModelInfo, register_model

CIFAR_INPUT = (3, 32, 32)
CIFAR_CLASSES = 10


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution without bias (a norm follows or the block adds a residual)."""
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def _kaiming_init(model: nn.Module, activation: str, mode: str) -> None:
    """Kaiming-normal conv weights with the gain of the chosen activation; biases keep PyTorch's default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity=kaiming_nonlinearity(activation))


class ResidualBlock(nn.Module):
    """conv3x3 → norm → act → conv3x3 → norm, plus the shortcut, then act.

    The first block of a later group subsamples: stride-2 conv and a 1x1 stride-2 conv (with bias) shortcut.
    """

    def __init__(self, c_in: int, c_out: int, *, subsample: bool, norm: str, activation: str) -> None:
        super().__init__()
        stride = 2 if subsample else 1
        self.body = compact(
            _conv3x3(c_in, c_out, stride),
            norm_2d(norm, c_out),
            make_activation(activation),
            _conv3x3(c_out, c_out),
            norm_2d(norm, c_out),
        )
        self.shortcut = nn.Conv2d(c_in, c_out, kernel_size=1, stride=2) if subsample else nn.Identity()
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class PreActResidualBlock(nn.Module):
    """norm → act → conv3x3 → norm → act → conv3x3, plus the shortcut (norm → act → 1x1 stride-2 conv, no bias
    when subsampling)."""

    def __init__(self, c_in: int, c_out: int, *, subsample: bool, norm: str, activation: str) -> None:
        super().__init__()
        stride = 2 if subsample else 1
        self.body = compact(
            norm_2d(norm, c_in),
            make_activation(activation),
            _conv3x3(c_in, c_out, stride),
            norm_2d(norm, c_out),
            make_activation(activation),
            _conv3x3(c_out, c_out),
        )
        self.shortcut = (
            compact(
                norm_2d(norm, c_in),
                make_activation(activation),
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=2, bias=False),
            )
            if subsample
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class CifarResNet(ClassifierHeadMixin, nn.Module):
    """Stem, groups of residual blocks (stride 2 at the first block of each later group), pool, linear."""

    classifier_path = "fc"
    first_conv_path = "stem.0"

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 3,
        preact: bool = False,
        blocks: int = 3,  # residual blocks per group (3 → 20 layers with three groups)
        widths: tuple[int, ...] = (16, 32, 64),  # channels per group
        activation: str = "relu",
        norm: str = "batch",
        dropout: float = 0.0,
        image_size: int | None = None,  # accepted for the uniform factory; the layout does not depend on it
    ) -> None:
        super().__init__()
        block_type = PreActResidualBlock if preact else ResidualBlock
        stem_conv = _conv3x3(in_chans, widths[0])
        # the pre-activation net starts with a bare conv: its first block normalizes and activates
        self.stem = (
            compact(stem_conv)
            if preact
            else compact(stem_conv, norm_2d(norm, widths[0]), make_activation(activation))
        )
        layers: list[nn.Module] = []
        c_in = widths[0]
        for group, width in enumerate(widths):
            for index in range(blocks):
                subsample = group > 0 and index == 0
                layers.append(block_type(c_in, width, subsample=subsample, norm=norm, activation=activation))
                c_in = width
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        _kaiming_init(self, activation, mode="fan_out")
        self._init_head(dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, residual groups, global average pool."""
        return torch.flatten(self.pool(self.blocks(self.stem(x))), 1)


class DenseLayer(nn.Module):
    """norm → act → 1x1 conv to bn_size·growth → norm → act → 3x3 conv to growth; joined to the input."""

    def __init__(self, c_in: int, *, growth: int, bn_size: int, norm: str, activation: str) -> None:
        super().__init__()
        self.body = compact(
            norm_2d(norm, c_in),
            make_activation(activation),
            nn.Conv2d(c_in, bn_size * growth, kernel_size=1, bias=False),
            norm_2d(norm, bn_size * growth),
            make_activation(activation),
            nn.Conv2d(bn_size * growth, growth, kernel_size=3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


def _transition(c_in: int, c_out: int, *, norm: str, activation: str) -> nn.Sequential:
    """norm → act → 1x1 conv → 2x2 average pool: halves channels and side between dense blocks."""
    return compact(
        norm_2d(norm, c_in),
        make_activation(activation),
        nn.Conv2d(c_in, c_out, kernel_size=1, bias=False),
        nn.AvgPool2d(kernel_size=2, stride=2),
    )


class CifarDenseNet(ClassifierHeadMixin, nn.Module):
    """3x3 conv (with bias) to growth·bn_size channels, 4 dense blocks of 6 layers with transitions between,
    then norm → act → pool → linear."""

    classifier_path = "fc"
    first_conv_path = "stem"

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 3,
        growth: int = 16,  # channels each dense layer adds
        bn_size: int = 2,  # bottleneck width = bn_size · growth
        layers: tuple[int, ...] = (6, 6, 6, 6),  # dense layers per block
        activation: str = "relu",
        norm: str = "batch",
        dropout: float = 0.0,
        image_size: int | None = None,  # accepted for the uniform factory; the layout does not depend on it
    ) -> None:
        super().__init__()
        channels = growth * bn_size
        self.stem = nn.Conv2d(in_chans, channels, kernel_size=3, padding=1)
        stages: list[nn.Module] = []
        for block, count in enumerate(layers):
            for _ in range(count):
                stages.append(
                    DenseLayer(channels, growth=growth, bn_size=bn_size, norm=norm, activation=activation)
                )
                channels += growth
            if block < len(layers) - 1:
                stages.append(_transition(channels, channels // 2, norm=norm, activation=activation))
                channels //= 2
        self.blocks = nn.Sequential(*stages)
        self.final = compact(norm_2d(norm, channels), make_activation(activation))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        _kaiming_init(self, activation, mode="fan_in")
        self._init_head(dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, dense blocks with transitions, final norm and activation, global average pool."""
        return torch.flatten(self.pool(self.final(self.blocks(self.stem(x)))), 1)


def _conv_norm_act(c_in: int, c_out: int, kernel: int, *, norm: str, activation: str) -> list[nn.Module]:
    """A same-padded conv (with bias) followed by norm and activation, as every googlenet_cifar conv is."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=kernel, padding=kernel // 2)
    return [conv, norm_2d(norm, c_out), make_activation(activation)]


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated: 1x1; 1x1→3x3; 1x1→5x5; 3x3 max-pool→1x1."""

    def __init__(
        self,
        c_in: int,
        reduce: tuple[int, int],  # 1x1 reductions before the 3x3 and the 5x5 convs
        out: tuple[int, int, int, int],  # outputs of the 1x1, 3x3, 5x5 and max-pool branches
        *,
        norm: str,
        activation: str,
    ) -> None:
        super().__init__()
        (red3, red5), (out1, out3, out5, out_pool) = reduce, out
        style = {"norm": norm, "activation": activation}
        self.branch1x1 = compact(*_conv_norm_act(c_in, out1, 1, **style))
        self.branch3x3 = compact(
            *_conv_norm_act(c_in, red3, 1, **style), *_conv_norm_act(red3, out3, 3, **style)
        )
        self.branch5x5 = compact(
            *_conv_norm_act(c_in, red5, 1, **style), *_conv_norm_act(red5, out5, 5, **style)
        )
        self.branch_pool = compact(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1), *_conv_norm_act(c_in, out_pool, 1, **style)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1x1, self.branch3x3, self.branch5x5, self.branch_pool)
        return torch.cat([branch(x) for branch in branches], dim=1)


# SPEC §2, in order: (input channels, (3x3 reduce, 5x5 reduce), (1x1, 3x3, 5x5, max-pool outputs)) or a
# 3/2 max-pool.
GOOGLENET_CIFAR_LAYOUT: tuple[tuple[int, tuple[int, int], tuple[int, int, int, int]] | str, ...] = (
    (64, (32, 16), (16, 32, 8, 8)),
    (64, (32, 16), (24, 48, 12, 12)),
    "max-pool",
    (96, (32, 16), (24, 48, 12, 12)),
    (96, (32, 16), (16, 48, 16, 16)),
    (96, (32, 16), (16, 48, 16, 16)),
    (96, (32, 16), (32, 48, 24, 24)),
    "max-pool",
    (128, (48, 16), (32, 64, 16, 16)),
    (128, (48, 16), (32, 64, 16, 16)),
)


class CifarGoogLeNet(ClassifierHeadMixin, nn.Module):
    """3x3 conv(64) → norm → act, the Inception blocks of GOOGLENET_CIFAR_LAYOUT, pool, linear(128)."""

    classifier_path = "fc"
    first_conv_path = "stem.0"

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 3,
        activation: str = "relu",
        norm: str = "batch",
        dropout: float = 0.0,
        image_size: int | None = None,  # accepted for the uniform factory; the layout does not depend on it
    ) -> None:
        super().__init__()
        self.stem = compact(*_conv_norm_act(in_chans, 64, 3, norm=norm, activation=activation))
        stages: list[nn.Module] = []
        for entry in GOOGLENET_CIFAR_LAYOUT:
            if entry == "max-pool":
                stages.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
            else:
                c_in, reduce, out = entry
                stages.append(InceptionBlock(c_in, reduce, out, norm=norm, activation=activation))
        self.blocks = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(sum(GOOGLENET_CIFAR_LAYOUT[-1][2]), num_classes)
        _kaiming_init(self, activation, mode="fan_in")
        self._init_head(dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, Inception blocks with two 3/2 max-pools, global average pool."""
        return torch.flatten(self.pool(self.blocks(self.stem(x))), 1)


def resnet20_cifar(**kwargs: object) -> CifarResNet:
    """ResNet-20 for CIFAR (He et al. 2016, section 4.2) with post-activation basic blocks."""
    return CifarResNet(preact=False, **kwargs)


def preact_resnet20_cifar(**kwargs: object) -> CifarResNet:
    """ResNet-20 for CIFAR with pre-activation blocks (He et al. 2016, "Identity Mappings")."""
    return CifarResNet(preact=True, **kwargs)


_COMMON_SWITCHES = {"dropout": None, "norm": NORMS, "activation": ACTIVATIONS}
_RESNET_SWITCHES = {**_COMMON_SWITCHES, "blocks": None, "widths": None}


def register_cifar_model(
    name: str, builder: Callable[..., nn.Module], family: str, switches: dict, first_conv: str = "stem.0"
) -> None:
    """Register a hand-written net designed for 3x32x32 CIFAR with 10 classes and an `fc` head."""
    register_model(
        ModelInfo(
            name=name,
            family=family,
            source="cnnlab",
            default_input_size=CIFAR_INPUT,
            native_classes=CIFAR_CLASSES,
            switches=switches,
            first_conv=first_conv,
            classifier="fc",
            builder=builder,
        )
    )


for _name, _builder, _family, _switches, _first_conv in (
    ("resnet20_cifar", resnet20_cifar, "resnet", _RESNET_SWITCHES, "stem.0"),
    ("preact_resnet20_cifar", preact_resnet20_cifar, "preact_resnet", _RESNET_SWITCHES, "stem.0"),
    ("densenet_cifar", CifarDenseNet, "densenet", _COMMON_SWITCHES, "stem"),
    ("googlenet_cifar", CifarGoogLeNet, "googlenet", _COMMON_SWITCHES, "stem.0"),
):
    register_cifar_model(_name, _builder, _family, _switches, _first_conv)
