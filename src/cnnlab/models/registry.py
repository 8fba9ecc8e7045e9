"""The model registry: name → builder with its metadata beside it, and the one factory `create_model`.

Every builder is keyword-only: `builder(*, num_classes, in_chans, **switches)`. `create_model` drops switches
whose value is None (the architecture's own default applies), so one set of run flags drives every model, and
rejects a switch a model does not have, or a value it cannot honour, with a ConfigError naming both.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from cnnlab.config import CHOICES, short
from cnnlab.errors import ConfigError, close_matches, first_line, unknown_choice
from cnnlab.models.head import ClassifierHeadMixin

STEMS = ("imagenet", "small")  # built layouts: torchvision's stem, or 3x3 stride-1 conv without max-pool
STEM_OPTIONS = CHOICES["model.stem"]  # run option: auto | resize | small
SMALL_INPUT_SIDE = 64  # auto picks the small stem below this input side (pretrained: upsamples to it)
UNIVERSAL_HPARAMS = (
    "image_size",
)  # accepted by every builder; ignored where the layout does not depend on it


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model without building it."""

    name: str
    family: str  # resnet, resnext, wide_resnet, vgg, alexnet, googlenet, densenet, lenet
    source: str  # "torchvision" (torchvision's classes, state_dict compatible) or "cnnlab" (written here)
    default_input_size: tuple[int, int, int]  # (C, H, W) the architecture was designed for
    native_classes: int  # class count of that design's dataset (ImageNet 1000, MNIST/CIFAR 10)
    switches: Mapping[str, tuple[str, ...] | None]  # switch → allowed values (None: a number or sizes)
    first_conv: str  # state_dict prefix of the stem convolution (default switches)
    classifier: str  # state_dict prefix of the final linear layer (default switches)
    torchvision_weights: tuple[str, ...] = ()  # names in torchvision's weights enum for this model
    ignored_weight_prefixes: tuple[str, ...] = ()  # weight-file tensors with no place here (aux heads)
    # converts a weights file's state_dict to this layout (legacy keys, folded input transforms), or None
    adapt_weights: Callable[[dict[str, Any]], dict[str, Any]] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )
    builder: Callable[..., nn.Module] = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def imagenet_shaped(self) -> bool:
        """True for nets laid out for 224 px inputs, which take the `stem` switch."""
        return "stem" in self.switches


_REGISTRY: dict[str, ModelInfo] = {}


BUILT_IN_SOURCES = ("cnnlab", "torchvision")  # any other ModelInfo.source is a plugin's model


def register_model(info: ModelInfo) -> ModelInfo:
    """Add a model to the registry (done once per model at import of its module). Registering the same
    model again (same metadata and builder: a plugin imported twice) changes nothing; another model under a
    taken name is a ConfigError."""
    known = _REGISTRY.get(info.name)
    if known is not None and (known != info or known.builder is not info.builder):
        raise ConfigError(
            f"model {info.name!r} is registered twice: the zoo already has a {known.source} model of that "
            "name; give the plugin's model another name"
        )
    _REGISTRY[info.name] = info
    return info


def list_models() -> list[str]:
    """Every model name, in registration order (the hand-written nets first, then the torchvision-backed)."""
    return list(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The metadata of a model; an unknown name is a ConfigError listing close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_choice("model", name, _REGISTRY) from None


def create_model(name: str, *, num_classes: int, in_chans: int = 3, **hparams: Any) -> nn.Module:
    """Build a zoo model with fresh weights; hparams set to None are dropped (the model's default applies)."""
    info = model_info(name)
    _check_count(name, "num_classes", num_classes)
    _check_count(name, "in_chans", in_chans)
    switches = {key: value for key, value in hparams.items() if value is not None}
    for key, value in switches.items():
        _check_switch(info, key, value)
    if info.source in BUILT_IN_SOURCES:
        return info.builder(num_classes=num_classes, in_chans=in_chans, **switches)
    return _build_plugin_model(info, num_classes=num_classes, in_chans=in_chans, **switches)


def _build_plugin_model(info: ModelInfo, **arguments: Any) -> nn.Module:
    """A plugin's builder, called as every builder is; its failures and a model without cnnlab's head
    interface are ConfigErrors naming the model (the plugin's code is the user's to fix)."""
    try:
        model = info.builder(**arguments)
    except Exception as error:  # noqa: BLE001  (any failure of the plugin's own code)
        raise ConfigError(
            f"model {info.name!r} (a plugin's) could not be built with {short(arguments, 160)} "
            f"({type(error).__name__}: {first_line(error)}); fix its builder"
        ) from None
    if not isinstance(model, nn.Module) or not isinstance(model, ClassifierHeadMixin):
        raise ConfigError(
            f"model {info.name!r} (a plugin's) is a {type(model).__name__}, not an nn.Module that mixes in "
            "cnnlab.models.ClassifierHeadMixin; see docs/models.md, Your own networks"
        )
    _check_plugin_layers(info, model)
    return model


def _check_plugin_layers(info: ModelInfo, model: nn.Module) -> None:
    """The plugin model's classifier_path and first_conv_path name an nn.Linear and an nn.Conv2d."""
    for path, kind in ((model.classifier_path, nn.Linear), (model.first_conv_path, nn.Conv2d)):
        try:
            layer = model.get_submodule(path)
        except AttributeError:
            layer = None
        if not isinstance(layer, kind):
            raise ConfigError(
                f"model {info.name!r} (a plugin's) has no {kind.__name__} at {path!r}; set its "
                "classifier_path to the final nn.Linear and first_conv_path to the first nn.Conv2d"
            )


def resolve_stem(
    name: str, stem_option: str, image_side: int, *, pretrained: bool = False
) -> tuple[str | None, int]:
    """Map the run option auto|resize|small to (the `stem` switch to build with, the input side to feed).

    auto: the small stem below 64 px, else the imagenet stem at the native side; with pretrained weights
    (whose stem kernels only fit the imagenet layout) the imagenet stem, at 64 px when the images are
    smaller (upsampled: 12x cheaper than 224 px, and the stem's stride-4 still leaves a 2x2 map at the
    end); resize: imagenet stem at 224; imagenet: imagenet stem at the given side; small: small stem at the
    native side. Nets without a stem switch return (None, image_side); None is dropped by create_model, so
    the pair can always be passed through.
    """
    if stem_option not in STEM_OPTIONS:
        raise ConfigError(
            f"model.stem={stem_option!r} is not allowed{close_matches(stem_option, STEM_OPTIONS)}; "
            f"allowed: {', '.join(STEM_OPTIONS)}"
        )
    info = model_info(name)
    if not info.imagenet_shaped:
        return None, image_side
    if stem_option == "auto":
        if image_side >= SMALL_INPUT_SIDE:
            return "imagenet", image_side
        if pretrained:
            return "imagenet", SMALL_INPUT_SIDE
        stem_option = "small"
    if stem_option == "imagenet":
        return "imagenet", image_side
    if stem_option == "resize":
        return "imagenet", info.default_input_size[-1]
    return "small", image_side


def _check_count(model: str, key: str, value: Any) -> None:
    """num_classes / in_chans must be positive integers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{key} for model {model!r} must be a positive integer, got {value!r}")


def check_switches(name: str, switches: Mapping[str, Any]) -> None:
    """Raise ConfigError (naming `model.<switch>`) for a switch the model lacks or a value it cannot honour;
    switches set to None are the model's own defaults and always pass."""
    info = model_info(name)
    for key, value in switches.items():
        if value is None:
            continue
        try:
            _check_switch(info, key, value)
        except ConfigError as error:
            raise ConfigError(f"model.{key}: {error}") from None


def _check_switch(info: ModelInfo, key: str, value: Any) -> None:
    """Reject a switch the model does not have, or a value outside what it can honour."""
    if key not in info.switches and key not in UNIVERSAL_HPARAMS:
        have = ", ".join(sorted(info.switches)) or "none"
        raise ConfigError(
            f"model {info.name!r} has no {key!r} switch{close_matches(key, info.switches)}; "
            f"its switches: {have}"
        )
    allowed = info.switches.get(key)
    if allowed is not None:
        if value not in allowed:
            raise ConfigError(
                f"model {info.name!r} does not support {key}={value!r}{close_matches(str(value), allowed)}; "
                f"allowed for {info.name}: {', '.join(allowed)}"
            )
        return
    _NUMERIC_CHECKS[key](info.name, key, value)


def _check_probability(model: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ConfigError(f"{key} for model {model!r} must be a number in [0, 1), got {value!r}")


def _check_positive_int(model: str, key: str, value: Any) -> None:
    _check_count(model, key, value)


def _check_positive_ints(model: str, key: str, value: Any) -> None:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{key} for model {model!r} must be a list of positive integers, got {value!r}")
    for item in value:
        _check_count(model, key, item)


_NUMERIC_CHECKS: dict[str, Callable[[str, str, Any], None]] = {
    "dropout": _check_probability,
    "image_size": _check_positive_int,
    "blocks": _check_positive_int,
    "widths": _check_positive_ints,
    "groups": _check_positive_int,
    "width_per_group": _check_positive_int,
}
