"""torchvision's ImageNet classifiers with the zoo's head interface and switches; nothing is re-implemented.

Each class subclasses torchvision's own (ResNet, DenseNet, VGG, AlexNet, GoogLeNet) and is constructed with
the arguments torchvision's builders pass, so parameter counts and state_dict keys are torchvision's and a
torchvision state_dict loads without remapping. With default switches a model even draws the same initial
weights as the torchvision builder under the same seed. The switches only replace modules:

- `in_chans`: the stem convolution is rebuilt with that many input channels (same kernel, stride, padding).
- `stem="small"`: a 3x3 stride-1 stem convolution and no first max-pool, so 28 and 32 px inputs keep a
  non-empty feature map (ResNet, DenseNet, GoogLeNet, AlexNet; VGG already starts with a 3x3 stride-1 conv,
  so only its first max-pool goes, and it pools globally before a 512 → 4096 first hidden layer). Max-pools
  are replaced by nn.Identity, keeping Sequential indices. Pretrained weights need the imagenet stem.
- `dropout`: a parameter-free dropout before the classifier (ResNet, DenseNet; GoogLeNet's own dropout
  there), or the probability of the dropout in the hidden linear layers (VGG, AlexNet).
- `norm`: ResNet's `norm_layer`; VGG's `_bn` layout with the chosen norm; AlexNet gains the norm after every
  conv (and BatchNorm1d / LayerNorm after the hidden linear layers). DenseNet and GoogLeNet hard-code
  BatchNorm, so only `batch` is accepted there.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models import VGG, AlexNet, DenseNet, GoogLeNet, ResNet, get_model_weights
from torchvision.models.googlenet import BasicConv2d
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.vgg import cfgs as VGG_LAYOUTS
from torchvision.models.vgg import make_layers as make_vgg_layers

from cnnlab.config import NORMS
from cnnlab.models.head import ClassifierHeadMixin
from cnnlab.models.layers import norm_1d, norm_2d, norm_2d_factory
from cnnlab.models.registry import STEMS, ModelInfo, register_model

IMAGENET_INPUT = (3, 224, 224)
IMAGENET_CLASSES = 1000
GOOGLENET_AUX_PREFIXES = ("aux1.", "aux2.")  # torchvision's googlenet weight files carry untrained aux heads


def _stem_conv(old: nn.Conv2d, in_chans: int, small: bool) -> nn.Conv2d:
    """A stem conv like `old` but reading `in_chans` channels; 3x3 stride 1 for the small stem."""
    kernel, stride, padding = (3, 1, 1) if small else (old.kernel_size, old.stride, old.padding)
    return nn.Conv2d(
        in_chans,
        old.out_channels,
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        bias=old.bias is not None,
    )


def _kaiming_fan_out(conv: nn.Conv2d) -> nn.Conv2d:
    """ResNet's and VGG's conv initialisation."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _first_max_pool_index(layers: nn.Sequential) -> int:
    """Index of the first max-pool in a Sequential (the one the small stem drops)."""
    return next(i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d))


class TorchvisionResNet(ClassifierHeadMixin, ResNet):
    """torchvision's ResNet / ResNeXt / Wide ResNet (BasicBlock or Bottleneck, grouped 3x3 convs)."""

    classifier_path = "fc"
    first_conv_path = "conv1"

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        *,
        num_classes: int,
        in_chans: int = 3,
        groups: int = 1,
        width_per_group: int = 64,
        norm: str = "batch",
        dropout: float = 0.0,
        stem: str = "imagenet",
        image_size: int | None = None,  # accepted for the uniform factory; the layout does not depend on it
    ) -> None:
        super().__init__(
            block,
            layers,
            num_classes=num_classes,
            groups=groups,
            width_per_group=width_per_group,
            norm_layer=norm_2d_factory(norm),
        )
        if stem == "small" or in_chans != 3:
            self.conv1 = _kaiming_fan_out(_stem_conv(self.conv1, in_chans, small=stem == "small"))
        if stem == "small":
            self.maxpool = nn.Identity()
        self.stem_kind = stem
        self._init_head(dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, four stages, global average pool."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class TorchvisionDenseNet(ClassifierHeadMixin, DenseNet):
    """torchvision's DenseNet-BC (any growth rate, block layout and initial width)."""

    classifier_path = "classifier"
    first_conv_path = "features.conv0"

    def __init__(
        self,
        growth_rate: int,
        block_config: tuple[int, int, int, int],
        num_init_features: int,
        *,
        num_classes: int,
        in_chans: int = 3,
        norm: str = "batch",
        dropout: float = 0.0,
        stem: str = "imagenet",
        image_size: int | None = None,  # accepted for the uniform factory; the layout does not depend on it
    ) -> None:
        if norm != "batch":
            raise ValueError(f"torchvision's DenseNet hard-codes BatchNorm; norm={norm!r} is not possible")
        super().__init__(growth_rate, block_config, num_init_features, num_classes=num_classes)
        if stem == "small" or in_chans != 3:
            conv0 = _stem_conv(self.features.conv0, in_chans, small=stem == "small")
            nn.init.kaiming_normal_(conv0.weight)  # torchvision's DenseNet conv initialisation
            self.features.conv0 = conv0
        if stem == "small":
            self.features.pool0 = nn.Identity()
        self.stem_kind = stem
        self._init_head(dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Dense blocks and transitions, final norm, ReLU, global average pool."""
        features = nn.functional.relu(self.features(x), inplace=True)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(features, (1, 1)), 1)


class TorchvisionVGG(ClassifierHeadMixin, VGG):
    """torchvision's VGG; `norm="none"` is the plain layout, any other the `_bn` layout with that norm."""

    classifier_path = "classifier.6"
    first_conv_path = "features.0"

    def __init__(
        self,
        layout: str,
        *,
        num_classes: int,
        in_chans: int = 3,
        norm: str = "none",
        dropout: float = 0.5,
        stem: str = "imagenet",
        image_size: int | None = None,  # accepted for the uniform factory; the layout does not depend on it
    ) -> None:
        features = make_vgg_layers(VGG_LAYOUTS[layout], batch_norm=norm != "none")
        if norm not in ("batch", "none"):
            for index, layer in enumerate(features):
                if isinstance(layer, nn.BatchNorm2d):
                    features[index] = norm_2d(norm, layer.num_features)
        if in_chans != 3:
            features[0] = _stem_conv(features[0], in_chans, small=False)
        if stem == "small":
            features[_first_max_pool_index(features)] = nn.Identity()
        if stem == "small":
            # torchvision's classifier is built on the meta device here: its 25088-wide first layer is
            # replaced by _pool_globally, so it is never allocated or initialised
            with torch.device("meta"):
                super().__init__(features, num_classes=num_classes, init_weights=True, dropout=dropout)
            self._pool_globally(features)
        else:
            super().__init__(features, num_classes=num_classes, init_weights=True, dropout=dropout)
        self.stem_kind = stem
        self._init_head(0.0)

    def _pool_globally(self, features: nn.Sequential) -> None:
        """Small stem: global average pool and a (channels → 4096) first hidden layer.

        At 28-32 px the last feature map is 1x1 or 2x2; torchvision's 7x7 adaptive pool would hand the first
        hidden layer up to 49 copies of each feature (multiplying its effective learning rate and initial
        scale by as much, with 25088x4096 weights), so the small stem pools globally as CIFAR VGGs do.
        The classifier, built on the meta device, is materialised beside the features with torchvision's
        VGG linear initialisation.
        """
        channels = [layer for layer in features if isinstance(layer, nn.Conv2d)][-1].out_channels
        self.classifier[0] = nn.Linear(channels, self.classifier[0].out_features, device="meta")
        self.classifier.to_empty(device=features[0].weight.device)
        for layer in self.classifier:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, 0, 0.01)
                nn.init.zeros_(layer.bias)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Conv stages, adaptive pool (7x7; 1x1 with the small stem), the two hidden linear layers (4096)."""
        return _through_hidden_layers(self, x)


class TorchvisionAlexNet(ClassifierHeadMixin, AlexNet):
    """torchvision's AlexNet; a norm other than `none` goes after every conv and hidden linear layer."""

    first_conv_path = "features.0"

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 3,
        norm: str = "none",
        dropout: float = 0.5,
        stem: str = "imagenet",
        image_size: int | None = None,  # accepted for the uniform factory; the layout does not depend on it
    ) -> None:
        super().__init__(num_classes=num_classes, dropout=dropout)
        if stem == "small" or in_chans != 3:
            self.features[0] = _stem_conv(self.features[0], in_chans, small=stem == "small")
        if stem == "small":
            self.features[_first_max_pool_index(self.features)] = nn.Identity()
        if norm != "none":
            self.features = _with_norm_after(self.features, norm)
            self.classifier = nn.Sequential(
                *_with_norm_after(self.classifier[:-1], norm), self.classifier[-1]
            )
        self.classifier_path = f"classifier.{len(self.classifier) - 1}"
        self.stem_kind = stem
        self._init_head(0.0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Conv stages, 6x6 adaptive pool, and the two hidden linear layers (4096 features)."""
        return _through_hidden_layers(self, x)


def _through_hidden_layers(model: VGG | AlexNet, x: torch.Tensor) -> torch.Tensor:
    """VGG and AlexNet: features, adaptive pool, flatten, and every classifier layer but the last."""
    return model.classifier[:-1](torch.flatten(model.avgpool(model.features(x)), 1))


def _with_norm_after(layers: nn.Sequential, norm: str) -> nn.Sequential:
    """The same layers with a `norm` layer inserted after each conv and each linear layer (where it has a
    1-d form)."""
    result: list[nn.Module] = []
    for layer in layers:
        result.append(layer)
        if isinstance(layer, nn.Conv2d):
            result.append(norm_2d(norm, layer.out_channels))
        elif isinstance(layer, nn.Linear) and norm_1d(norm, layer.out_features) is not None:
            result.append(norm_1d(norm, layer.out_features))
    return nn.Sequential(*result)


class TorchvisionGoogLeNet(ClassifierHeadMixin, GoogLeNet):
    """torchvision's GoogLeNet (Inception v1) without auxiliary heads and without `transform_input`.

    Its state_dict equals torchvision's `googlenet(aux_logits=False)`. torchvision's pretrained file (saved
    with aux heads, trained behind `transform_input`) loads through `load_pretrained`, which skips the aux
    tensors and folds the input transform into conv1 (`fold_googlenet_input_transform`).
    """

    classifier_path = "fc"
    first_conv_path = "conv1.conv"

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 3,
        norm: str = "batch",
        dropout: float = 0.2,
        stem: str = "imagenet",
        image_size: int | None = None,  # accepted for the uniform factory; the layout does not depend on it
    ) -> None:
        if norm != "batch":
            raise ValueError(f"torchvision's GoogLeNet hard-codes BatchNorm; norm={norm!r} is not possible")
        super().__init__(
            num_classes=num_classes,
            aux_logits=False,
            transform_input=False,
            init_weights=True,
            dropout=dropout,
        )
        if stem == "small":
            self.conv1 = BasicConv2d(in_chans, 64, kernel_size=3, padding=1)
            self.maxpool1 = nn.Identity()
        elif in_chans != 3:
            self.conv1 = BasicConv2d(in_chans, 64, kernel_size=7, stride=2, padding=3)
        if stem == "small" or in_chans != 3:
            nn.init.trunc_normal_(self.conv1.conv.weight, mean=0.0, std=0.01, a=-2, b=2)
        self.stem_kind = stem
        self._init_head(0.0)
        self.head_drop = self.dropout  # torchvision's own dropout before fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, the nine Inception blocks with their max-pools, global average pool."""
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4c(self.inception4b(self.inception4a(x)))
        x = self.maxpool4(self.inception4e(self.inception4d(x)))
        x = self.inception5b(self.inception5a(x))
        return torch.flatten(self.avgpool(x), 1)


# name: (family, block, layers, groups, width_per_group), as torchvision's builders pass them
RESNETS: dict[str, tuple[str, type[BasicBlock | Bottleneck], list[int], int, int]] = {
    "resnet18": ("resnet", BasicBlock, [2, 2, 2, 2], 1, 64),
    "resnet34": ("resnet", BasicBlock, [3, 4, 6, 3], 1, 64),
    "resnet50": ("resnet", Bottleneck, [3, 4, 6, 3], 1, 64),
    "resnet101": ("resnet", Bottleneck, [3, 4, 23, 3], 1, 64),
    "resnet152": ("resnet", Bottleneck, [3, 8, 36, 3], 1, 64),
    "wide_resnet50_2": ("wide_resnet", Bottleneck, [3, 4, 6, 3], 1, 128),
    "resnext50_32x4d": ("resnext", Bottleneck, [3, 4, 6, 3], 32, 4),
    "resnext101_32x8d": ("resnext", Bottleneck, [3, 4, 23, 3], 32, 8),
    "resnext101_64x4d": ("resnext", Bottleneck, [3, 4, 23, 3], 64, 4),
}

# name: (growth_rate, block_config, num_init_features); densenet264 is the paper's, not in torchvision
DENSENETS: dict[str, tuple[int, tuple[int, int, int, int], int]] = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
    "densenet264": (32, (6, 12, 64, 48), 64),
}

VGGS: dict[str, str] = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}  # name: torchvision layout

SWITCHES_ALL_NORMS = {"dropout": None, "norm": NORMS, "stem": STEMS}
SWITCHES_BATCHNORM_ONLY = {"dropout": None, "norm": ("batch",), "stem": STEMS}


def torchvision_weight_names(name: str) -> tuple[str, ...]:
    """The names in torchvision's weights enum for a model (empty when torchvision has no weights)."""
    try:
        return tuple(weights.name for weights in get_model_weights(name))
    except ValueError:
        return ()


# torchvision's legacy DenseNet files name layers `norm.1` where the modules are now `norm1` (as in
# torchvision's own densenet._load_state_dict).
_DENSENET_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def rename_legacy_densenet_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
    """torchvision's DenseNet weight files use `...denselayer1.norm.1.weight`; the modules say `norm1`."""
    renamed = {}
    for key, value in state_dict.items():
        match = _DENSENET_LEGACY_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


# torchvision's GoogLeNet `transform_input`: x' = x * (std / 0.5) + (mean - 0.5) / 0.5 per RGB channel, which
# turns ImageNet-normalized inputs into the [-1, 1] inputs its pretrained weights were trained on.
_GOOGLENET_INPUT_SCALE = (0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5)
_GOOGLENET_INPUT_SHIFT = ((0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5)


def fold_googlenet_input_transform(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Fold torchvision's `transform_input` into conv1 of its pretrained GoogLeNet file (recognised by its
    aux-head tensors), so the model takes ImageNet-normalized inputs like every other pretrained net.

    The scale goes into the conv kernel (exact); the shift, a constant per output channel, into conv1's
    BatchNorm running mean (exact except on the border pixels that conv1's zero padding touches).
    Any other state_dict (no aux tensors: trained without transform_input) is returned unchanged.
    """
    if not any(key.startswith(GOOGLENET_AUX_PREFIXES) for key in state_dict):
        return state_dict
    folded = dict(state_dict)
    weight = state_dict["conv1.conv.weight"]
    scale = torch.tensor(_GOOGLENET_INPUT_SCALE, dtype=weight.dtype).view(1, 3, 1, 1)
    shift = torch.tensor(_GOOGLENET_INPUT_SHIFT, dtype=weight.dtype).view(1, 3, 1, 1)
    folded["conv1.conv.weight"] = weight * scale
    folded["conv1.bn.running_mean"] = state_dict["conv1.bn.running_mean"] - (weight * shift).sum(
        dim=(1, 2, 3)
    )
    return folded


def _register(
    name: str,
    family: str,
    builder: Callable[..., nn.Module],
    switches: dict[str, tuple[str, ...] | None],
    first_conv: str,
    classifier: str,
    ignored_weight_prefixes: tuple[str, ...] = (),
    adapt_weights: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """Register one torchvision-backed model with its metadata."""
    register_model(
        ModelInfo(
            name=name,
            family=family,
            source="torchvision",
            default_input_size=IMAGENET_INPUT,
            native_classes=IMAGENET_CLASSES,
            switches=switches,
            first_conv=first_conv,
            classifier=classifier,
            torchvision_weights=torchvision_weight_names(name),
            ignored_weight_prefixes=ignored_weight_prefixes,
            adapt_weights=adapt_weights,
            builder=builder,
        )
    )


def _register_all() -> None:
    """Register every torchvision-backed model, in the order the zoo lists them."""
    _register("alexnet", "alexnet", TorchvisionAlexNet, SWITCHES_ALL_NORMS, "features.0", "classifier.6")
    for name, layout in VGGS.items():
        for suffix, norm in (("", "none"), ("_bn", "batch")):
            builder = functools.partial(TorchvisionVGG, layout, norm=norm)
            _register(name + suffix, "vgg", builder, SWITCHES_ALL_NORMS, "features.0", "classifier.6")
    _register(
        "googlenet",
        "googlenet",
        TorchvisionGoogLeNet,
        SWITCHES_BATCHNORM_ONLY,
        "conv1.conv",
        "fc",
        ignored_weight_prefixes=GOOGLENET_AUX_PREFIXES,
        adapt_weights=fold_googlenet_input_transform,
    )
    for name, (family, block, layers, groups, width) in RESNETS.items():
        builder = functools.partial(TorchvisionResNet, block, layers, groups=groups, width_per_group=width)
        _register(name, family, builder, SWITCHES_ALL_NORMS, "conv1", "fc")
    for name, (growth, blocks, init_features) in DENSENETS.items():
        builder = functools.partial(TorchvisionDenseNet, growth, blocks, init_features)
        _register(
            name,
            "densenet",
            builder,
            SWITCHES_BATCHNORM_ONLY,
            "features.conv0",
            "classifier",
            adapt_weights=rename_legacy_densenet_keys,
        )


_register_all()
