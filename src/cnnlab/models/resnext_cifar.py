"""CIFAR-scale ResNets and ResNeXts built from their papers (E4), read top to bottom.

- He et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2: a 3x3 conv to 16 channels,
  three groups of `n` BasicBlocks (16/32/64 channels, stride 2 at the first block of groups 2 and 3), global
  average pool, linear; depth 6n+2. The paper's CIFAR nets use option A shortcuts (identity, with the
  subsampled input zero-padded to the new width: no parameters): ResNet-20/32/44/56/110 have 0.27/0.46/
  0.66/0.85/1.7 M parameters (Table 6). (`resnet20_cifar` is the SPEC's variant with 1x1-conv shortcuts.)
- Xie et al. 2017, "Aggregated Residual Transformations for Deep Neural Networks", section 5.3 and the
  authors' CIFAR code: a 3x3 conv to 64 channels, three stages of `n` Bottleneck blocks with 256/512/1024
  output channels, each 1x1 conv → grouped 3x3 conv (`groups` = cardinality C, `width_per_group` d at the
  first stage, doubled per stage) → 1x1 conv, projection shortcuts (1x1 conv + BN) where the shape changes;
  depth 9n+2. ResNeXt-29 (8x64d) has 34.4 M parameters, (16x64d) 68.1 M (Table 7).
Switches: `blocks` (n), `groups`, `width_per_group`, `activation`, `norm`, `dropout`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config import ACTIVATIONS, NORMS
from cnnlab.models.cifar import register_cifar_model
from cnnlab.models.head import ClassifierHeadMixin
from cnnlab.models.layers import activation as make_activation
from cnnlab.models.layers import compact, kaiming_nonlinearity, norm_2d


class BasicBlock(nn.Module):
    """3x3 conv → norm → act → 3x3 conv → norm, plus the option-A shortcut (identity, zero-padded), act."""

    def __init__(self, c_in: int, c_out: int, *, stride: int, norm: str, activation: str) -> None:
        super().__init__()
        self.body = compact(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            norm_2d(norm, c_out),
            make_activation(activation),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            norm_2d(norm, c_out),
        )
        self.stride, self.pad = stride, c_out - c_in
        self.act = make_activation(activation)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option A: take every stride-th pixel and zero-pad the new channels (no parameters)."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad)) if self.pad else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 conv → norm → act → grouped 3x3 conv → norm → act → 1x1 conv → norm, plus shortcut, act."""

    def __init__(
        self, c_in: int, inner: int, c_out: int, *, groups: int, stride: int, norm: str, activation: str
    ) -> None:
        super().__init__()
        self.body = compact(
            nn.Conv2d(c_in, inner, 1, bias=False),
            norm_2d(norm, inner),
            make_activation(activation),
            nn.Conv2d(inner, inner, 3, stride=stride, padding=1, groups=groups, bias=False),
            norm_2d(norm, inner),
            make_activation(activation),
            nn.Conv2d(inner, c_out, 1, bias=False),
            norm_2d(norm, c_out),
        )
        projection = stride > 1 or c_in != c_out
        self.shortcut = (
            compact(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm_2d(norm, c_out))
            if projection
            else nn.Identity()
        )
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class _CifarNet(ClassifierHeadMixin, nn.Module):
    """Stem conv → norm → act, a sequence of stages, global average pool, linear head."""

    classifier_path = "fc"
    first_conv_path = "stem.0"

    def _build(
        self, stem: int, stages: list[nn.Module], features: int, *, in_chans: int, norm: str, activation: str
    ) -> None:
        self.stem = compact(
            nn.Conv2d(in_chans, stem, 3, padding=1, bias=False),
            norm_2d(norm, stem),
            make_activation(activation),
        )
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(
                    module.weight, mode="fan_out", nonlinearity=kaiming_nonlinearity(activation)
                )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages, global average pool."""
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


class PaperResNet(_CifarNet):
    """He et al.'s CIFAR ResNet: depth 6n+2 with n = `blocks` BasicBlocks per group of 16/32/64 channels."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 3,
        blocks: int = 3,
        activation: str = "relu",
        norm: str = "batch",
        dropout: float = 0.0,
        image_size: int | None = None,  # accepted for the uniform factory; the layout does not depend on it
    ) -> None:
        super().__init__()
        layers, c_in = [], 16
        for group, width in enumerate((16, 32, 64)):
            for index in range(blocks):
                stride = 2 if group > 0 and index == 0 else 1
                layers.append(BasicBlock(c_in, width, stride=stride, norm=norm, activation=activation))
                c_in = width
        self._build(16, layers, 64, in_chans=in_chans, norm=norm, activation=activation)
        self.fc = nn.Linear(64, num_classes)
        self._init_head(dropout)


class ResNeXt(_CifarNet):
    """Xie et al.'s CIFAR ResNeXt: depth 9n+2, n = `blocks` Bottlenecks per stage, cardinality `groups`,
    bottleneck width `width_per_group` per group at the first stage (doubled per stage)."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 3,
        blocks: int = 3,
        groups: int = 8,
        width_per_group: int = 64,
        activation: str = "relu",
        norm: str = "batch",
        dropout: float = 0.0,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        layers, c_in = [], 64
        for stage, planes in enumerate((64, 128, 256)):
            inner = groups * width_per_group * 2**stage  # C x d, d doubling per stage
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(
                    Bottleneck(
                        c_in,
                        inner,
                        planes * 4,
                        groups=groups,
                        stride=stride,
                        norm=norm,
                        activation=activation,
                    )
                )
                c_in = planes * 4
        self._build(64, layers, c_in, in_chans=in_chans, norm=norm, activation=activation)
        self.fc = nn.Linear(c_in, num_classes)
        self._init_head(dropout)


def _paper_resnet(depth: int):
    def build(**kwargs: object) -> PaperResNet:
        return PaperResNet(**{"blocks": (depth - 2) // 6, **kwargs})

    build.__doc__ = f"ResNet-{depth} for CIFAR (He et al. 2016, section 4.2, option A shortcuts)."
    return build


def _resnext(groups: int, width: int):
    def build(**kwargs: object) -> ResNeXt:
        return ResNeXt(**{"groups": groups, "width_per_group": width, **kwargs})

    build.__doc__ = f"ResNeXt-29 ({groups}x{width}d) for CIFAR (Xie et al. 2017, section 5.3)."
    return build


_COMMON = {"dropout": None, "norm": NORMS, "activation": ACTIVATIONS}
MODELS = [
    *(
        (f"resnet{depth}_paper_cifar", _paper_resnet(depth), "resnet", {**_COMMON, "blocks": None})
        for depth in (20, 32, 44, 56, 110)
    ),
    *(
        (
            f"resnext29_{groups}x{width}d_cifar",
            _resnext(groups, width),
            "resnext",
            {**_COMMON, "blocks": None, "groups": None, "width_per_group": None},
        )
        for groups, width in ((2, 64), (4, 64), (8, 64), (16, 64))
    ),
]

for _name, _builder, _family, _switches in MODELS:
    register_cifar_model(_name, _builder, _family, _switches)
