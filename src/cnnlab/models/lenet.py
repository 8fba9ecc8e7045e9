"""LeNet-5 as in the classic (sigmoid, average pooling), with the zoo's switches; written here, top to bottom.

conv5x5(6, pad 2) → act → pool2 → conv5x5(16) → act → pool2 → fc120 → act → fc84 → act → fc.
The flatten size follows the input side (`image_size`): 16·5·5 = 400 at 28 px, giving 61,706 parameters with
one input channel and 10 classes. `norm` goes after each conv (and BatchNorm1d / LayerNorm after the hidden
linear layers); `dropout` after each hidden linear layer's activation; `widths` sets the two convs' channels
(6 and 16 in the classic). With ReLU and max pooling each conv stage pools before it activates: ReLU and
max commute exactly (the same outputs and gradients, bit for bit), and the ReLU then runs on a quarter of
the elements (14 % faster training steps with 16/32 channels on a 2-core CPU, benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.config import ACTIVATIONS, NORMS
from cnnlab.errors import ConfigError
from cnnlab.models.head import ClassifierHeadMixin
from cnnlab.models.layers import activation as make_activation
from cnnlab.models.layers import compact, conv_output_side, dropout_or_identity, norm_1d, norm_2d
from cnnlab.models.registry import ModelInfo, register_model

LENET_INPUT = (1, 28, 28)
POOLS = ("avg", "max")


class LeNet5(ClassifierHeadMixin, nn.Module):
    """LeNet-5; the classic is activation="sigmoid", pool="avg", norm="none", dropout=0."""

    classifier_path = "fc"
    first_conv_path = "features.0"

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 1,
        image_size: int = LENET_INPUT[-1],  # square input side; sets the flatten size
        activation: str = "sigmoid",
        pool: str = "avg",
        norm: str = "none",
        dropout: float = 0.0,
        widths: tuple[int, ...] = (6, 16),  # channels of the two convs
    ) -> None:
        super().__init__()
        if len(widths) != 2:
            message = f"model.widths for lenet5 needs two channel counts (one per conv), got {widths}"
            raise ConfigError(message)
        first, second = widths
        self.image_size = image_size
        flat_side = self._flatten_side(image_size)
        if flat_side < 1:
            raise ConfigError(
                f"lenet5 cannot take a {image_size}x{image_size} input: it needs at least 12x12 pixels "
                "(data.image_size)"
            )
        self.features = compact(
            *_conv_stage(nn.Conv2d(in_chans, first, kernel_size=5, padding=2), norm, activation, pool),
            *_conv_stage(nn.Conv2d(first, second, kernel_size=5), norm, activation, pool),
        )
        self.hidden = compact(
            nn.Linear(second * flat_side * flat_side, 120),
            norm_1d(norm, 120) or nn.Identity(),
            make_activation(activation),
            dropout_or_identity(dropout),
            nn.Linear(120, 84),
            norm_1d(norm, 84) or nn.Identity(),
            make_activation(activation),
            dropout_or_identity(dropout),
        )
        self.fc = nn.Linear(84, num_classes)
        self._init_head(0.0)

    @staticmethod
    def _flatten_side(image_size: int) -> int:
        """Side of the last feature map: conv (pad 2) keeps it, pool halves, conv5x5 takes 4, pool halves."""
        side = conv_output_side(conv_output_side(image_size, 5, padding=2), 2, stride=2)
        return conv_output_side(conv_output_side(side, 5), 2, stride=2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Two conv stages, flatten, the two hidden linear layers (84 features)."""
        tracing = torch.jit.is_tracing()  # ONNX export: the traced input has the built size
        if not tracing and x.shape[-2:] != (self.image_size, self.image_size):
            raise ConfigError(
                f"lenet5 was built for {self.image_size}x{self.image_size} inputs (its flatten size follows "
                f"the input size), got {x.shape[-2]}x{x.shape[-1]}; build it with image_size={x.shape[-1]}"
            )
        return self.hidden(torch.flatten(self.features(x), 1))


def _conv_stage(conv: nn.Conv2d, norm: str, activation: str, pool: str) -> list[nn.Module]:
    """conv → norm → act → pool, or conv → norm → pool → act where that is the same function (ReLU, max)."""
    act = make_activation(activation)
    pool_layer = nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2)
    tail = [pool_layer, act] if (activation, pool) == ("relu", "max") else [act, pool_layer]
    return [conv, norm_2d(norm, conv.out_channels), *tail]


register_model(
    ModelInfo(
        name="lenet5",
        family="lenet",
        source="cnnlab",
        default_input_size=LENET_INPUT,
        native_classes=10,
        switches={"dropout": None, "norm": NORMS, "activation": ACTIVATIONS, "pool": POOLS, "widths": None},
        first_conv="features.0",
        classifier="fc",
        builder=LeNet5,
    )
)
