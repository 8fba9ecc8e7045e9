"""Building blocks every architecture shares: the norm and activation switches as module factories.

One place decides what `norm="group"` or `activation="gelu"` means, so the switches behave the same in every
model of the zoo.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from cnnlab.config import ACTIVATIONS, NORMS

MAX_GROUPS = 32  # GroupNorm uses the largest group count <= this that divides the channels

_ACTIVATION_MODULES: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leakyrelu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
}

# torch.nn.init gain names for Kaiming initialisation under each activation (GELU/SiLU behave like ReLU).
_KAIMING_NONLINEARITY = {
    "relu": "relu",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "gelu": "relu",
    "leakyrelu": "leaky_relu",
    "silu": "relu",
}


def group_count(channels: int, max_groups: int = MAX_GROUPS) -> int:
    """The largest number of groups not above `max_groups` that divides `channels` (GroupNorm needs one)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def norm_2d(kind: str, channels: int) -> nn.Module:
    """The normalization layer after a convolution with `channels` outputs, for the `norm` switch."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; allowed: {', '.join(NORMS)}")


def norm_2d_factory(kind: str) -> Callable[[int], nn.Module]:
    """`norm_2d` bound to one kind: the `norm_layer(channels)` callable torchvision's ResNet accepts."""
    norm_2d(kind, 1)  # fail early on an unknown kind

    def make(channels: int) -> nn.Module:
        return norm_2d(kind, channels)

    return make


def norm_1d(kind: str, features: int) -> nn.Module | None:
    """The normalization after a hidden linear layer, or None where the kind has no 1-d form.

    batch → BatchNorm1d, layer → LayerNorm; group, instance and none normalize convolutions only.
    """
    if kind == "batch":
        return nn.BatchNorm1d(features)
    if kind == "layer":
        return nn.LayerNorm(features)
    if kind in NORMS:
        return None
    raise ValueError(f"unknown norm {kind!r}; allowed: {', '.join(NORMS)}")


def activation(kind: str) -> nn.Module:
    """A fresh activation module for the `activation` switch."""
    try:
        return _ACTIVATION_MODULES[kind]()
    except KeyError:
        raise ValueError(f"unknown activation {kind!r}; allowed: {', '.join(ACTIVATIONS)}") from None


def kaiming_nonlinearity(kind: str) -> str:
    """The `nonlinearity` name torch.nn.init.kaiming_normal_ expects for an activation switch value."""
    return _KAIMING_NONLINEARITY[kind]


def dropout_or_identity(p: float) -> nn.Module:
    """nn.Dropout(p) when p > 0, else a no-op; both are parameter-free, so state_dict keys never change."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


def conv_output_side(side: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial side after a convolution or pooling (floor mode), to size layers from the input side."""
    return math.floor((side + 2 * padding - kernel) / stride) + 1


def compact(*layers: nn.Module) -> nn.Sequential:
    """nn.Sequential of the layers that do something: nn.Identity (a switch turned off) is left out."""
    return nn.Sequential(*(layer for layer in layers if not isinstance(layer, nn.Identity)))
