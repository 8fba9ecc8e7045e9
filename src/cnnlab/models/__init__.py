"""The model zoo: a registry of CNN classifiers with one head interface and uniform switches.

`list_models()`, `model_info(name)`, `create_model(name, *, num_classes, in_chans=3, **switches)`. The
hand-written nets (lenet5 and the CIFAR-scale ResNet, pre-activation ResNet, DenseNet and GoogLeNet) are
registered first, then torchvision's ImageNet classifiers. This package never imports Lightning.
"""

from __future__ import annotations

from cnnlab.models import cifar, lenet, resnext_cifar, torchvision_nets  # noqa: F401  (registers them)
from cnnlab.models.head import ClassifierHeadMixin
from cnnlab.models.measure import count_flops, count_params
from cnnlab.models.plugins import installed_plugins, load_plugin
from cnnlab.models.registry import (
    STEMS,
    ModelInfo,
    check_switches,
    create_model,
    list_models,
    model_info,
    register_model,
    resolve_stem,
)
from cnnlab.models.weights import adapt_input_conv, load_pretrained, torchvision_state_dict
from cnnlab.models.zoo import ZooRow, describe_model, describe_zoo, format_zoo_table, parse_input_size

__all__ = [
    "STEMS",
    "ClassifierHeadMixin",
    "ModelInfo",
    "ZooRow",
    "adapt_input_conv",
    "check_switches",
    "count_flops",
    "count_params",
    "create_model",
    "describe_model",
    "describe_zoo",
    "format_zoo_table",
    "installed_plugins",
    "list_models",
    "load_plugin",
    "load_pretrained",
    "model_info",
    "parse_input_size",
    "register_model",
    "resolve_stem",
    "torchvision_state_dict",
]
