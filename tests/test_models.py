"""The model zoo: every model trains on small inputs, torchvision compatibility, SPEC §2 layouts, switches."""

from __future__ import annotations

import ast
import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import get_model_weights

from cnnlab.errors import ConfigError
from cnnlab.models import (
    count_flops,
    count_params,
    create_model,
    list_models,
    model_info,
    resolve_stem,
)

SPEC_MODELS = {
    "alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
    "densenet121", "densenet161", "densenet169", "densenet201", "densenet264",
    "lenet5", "resnet20_cifar", "preact_resnet20_cifar", "densenet_cifar", "googlenet_cifar",
    # E4: built by hand from the papers (models/resnext_cifar.py)
    "resnet20_paper_cifar", "resnet32_paper_cifar", "resnet44_paper_cifar", "resnet56_paper_cifar",
    "resnet110_paper_cifar", "resnext29_2x64d_cifar", "resnext29_4x64d_cifar", "resnext29_8x64d_cifar",
    "resnext29_16x64d_cifar",
}  # fmt: skip
TORCHVISION_BACKED = [name for name in list_models() if model_info(name).source == "torchvision"]


def test_registry_holds_exactly_the_spec_zoo() -> None:
    assert set(list_models()) == SPEC_MODELS
    assert len(list_models()) == len(SPEC_MODELS)


# --- acceptance 3: every model on (2,1,28,28) and (2,3,32,32) -----------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_on_small_inputs(name: str) -> None:
    for in_chans, side in ((1, 28), (3, 32)):
        stem, fed_side = resolve_stem(name, "auto", side)
        assert fed_side == side
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, in_chans=in_chans, stem=stem, image_size=side)
        features = model.forward_features(torch.randn(2, in_chans, side, side))
        assert features.shape == (2, model.num_features)
        logits = model.forward_head(features)
        assert logits.shape == (2, 10)
        assert torch.isfinite(logits).all()
        nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
        without_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert without_grad == []
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_head_interface(name: str) -> None:
    info = model_info(name)
    with torch.device("meta"):
        model = create_model(name, num_classes=10, in_chans=info.default_input_size[0])
        image = torch.zeros(2, *info.default_input_size)
    classifier = model.get_classifier()
    assert isinstance(classifier, nn.Linear)
    assert model.num_features == classifier.in_features
    assert classifier.out_features == 10
    assert model.get_first_conv() is next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert f"{info.first_conv}.weight" in model.state_dict()
    assert f"{info.classifier}.weight" in model.state_dict()
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7
    assert model(image).shape == (2, 7)
    assert model.forward_features(image).shape == (2, model.num_features)


# --- acceptance 4: torchvision parameter counts and strict state_dict loading -------------------------------


def _torchvision_reference(name: str) -> nn.Module:
    """The model as torchvision's own builder makes it (googlenet without aux heads; densenet264 by class)."""
    if name == "densenet264":
        return torchvision.models.DenseNet(32, (6, 12, 64, 48), 64)
    if name == "googlenet":
        return torchvision.models.googlenet(aux_logits=False, init_weights=False)
    return torchvision.models.get_model(name)


@pytest.mark.parametrize("name", TORCHVISION_BACKED)
def test_torchvision_counts_and_strict_state_dict(name: str) -> None:
    with torch.device("meta"):
        reference = _torchvision_reference(name)
        ours = create_model(name, num_classes=1000)
    assert count_params(ours) == count_params(reference)
    declared = (
        [w.meta["num_params"] for w in get_model_weights(name)]
        if model_info(name).torchvision_weights
        else []
    )
    assert all(count == count_params(ours) for count in declared)
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)


def test_densenet264_is_the_paper_layout() -> None:
    with torch.device("meta"):
        model = create_model("densenet264", num_classes=1000)
    blocks = [m for n, m in model.features.named_children() if n.startswith("denseblock")]
    assert [len(block) for block in blocks] == [6, 12, 64, 48]
    assert model.features.conv0.out_channels == 64
    assert model.features.denseblock1.denselayer1.conv2.out_channels == 32  # growth rate
    assert model.num_features == 2688  # ((64+6*32)/2+12*32)/2+64*32)/2+48*32


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("resnet18", lambda: torchvision.models.resnet18()),
        ("densenet121", lambda: torchvision.models.densenet121()),
        ("vgg11_bn", lambda: torchvision.models.vgg11_bn()),
        ("alexnet", lambda: torchvision.models.alexnet()),
        ("googlenet", lambda: torchvision.models.googlenet(aux_logits=False, init_weights=True)),
    ],
)
def test_same_seed_same_weights_and_outputs_as_torchvision(name: str, build) -> None:
    torch.manual_seed(1)
    reference = build().eval()
    torch.manual_seed(1)
    ours = create_model(name, num_classes=1000).eval()
    for (key, mine), theirs in zip(ours.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(mine, theirs), key
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(image), reference(image))


# --- acceptance 5: the hand-written nets follow SPEC §2 -----------------------------------------------------


def _conv(c_in: int, c_out: int, k: int, bias: bool) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def _bn(c: int) -> int:
    return 2 * c


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def test_lenet5_layout_and_parameter_count() -> None:
    model = create_model("lenet5", num_classes=10, in_chans=1)
    # conv 1→6 5x5 (156) + conv 6→16 5x5 (2,416) + fc 400→120 (48,120) + 120→84 (10,164) + 84→10 (850)
    assert count_params(model) == 61_706
    kinds = [type(m) for m in model.features]
    assert kinds == [nn.Conv2d, nn.Sigmoid, nn.AvgPool2d, nn.Conv2d, nn.Sigmoid, nn.AvgPool2d]
    assert (model.features[0].kernel_size, model.features[0].padding, model.features[0].out_channels) == (
        (5, 5),
        (2, 2),
        6,
    )
    assert [m.out_features for m in model.hidden if isinstance(m, nn.Linear)] == [120, 84]
    assert model.num_features == 84
    assert count_flops(model, (1, 28, 28)) == 2 * (
        6 * 28 * 28 * 25 + 16 * 10 * 10 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    )


def test_lenet5_flatten_follows_input_size() -> None:
    model = create_model("lenet5", num_classes=10, in_chans=3, image_size=32)
    assert model.hidden[0].in_features == 16 * 6 * 6
    assert (
        count_params(model) == 61_706 + 2 * 6 * 25 + (576 - 400) * 120
    )  # 2 more input channels, wider fc120
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="image_size=28"):
        model(torch.zeros(2, 3, 28, 28))


def _resnet20_expected(preact: bool) -> int:
    """Parameters of SPEC §2's resnet20_cifar / preact_resnet20_cifar at 3x32x32, 10 classes."""
    total = _conv(3, 16, 3, False) + (0 if preact else _bn(16))
    c_in = 16
    for group, width in enumerate((16, 32, 64)):
        for index in range(3):
            total += (
                _conv(c_in, width, 3, False) + _conv(width, width, 3, False) + _bn(c_in if preact else width)
            )
            total += _bn(width)
            if group > 0 and index == 0:
                total += _bn(c_in) + _conv(c_in, width, 1, False) if preact else _conv(c_in, width, 1, True)
            c_in = width
    return total + _linear(64, 10)


@pytest.mark.parametrize(
    ("name", "preact", "verified"),
    [("resnet20_cifar", False, 272_378), ("preact_resnet20_cifar", True, 272_250)],
)
def test_cifar_resnets_follow_spec(name: str, preact: bool, verified: int) -> None:
    model = create_model(name, num_classes=10)
    assert count_params(model) == _resnet20_expected(preact) == verified
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.kernel_size == (3, 3) for c in convs) == 19  # + the linear layer = 20 weight layers
    shortcuts = [block.shortcut for block in model.blocks]
    subsampling = [i for i, s in enumerate(shortcuts) if not isinstance(s, nn.Identity)]
    assert subsampling == [3, 6]
    for index in subsampling:
        conv = shortcuts[index] if not preact else shortcuts[index][-1]
        assert (conv.kernel_size, conv.stride, conv.bias is not None) == ((1, 1), (2, 2), not preact)
        assert model.blocks[index].body[2 if preact else 0].stride == (2, 2)
    if preact:
        assert [type(m) for m in model.stem] == [nn.Conv2d]
        assert [type(m) for m in model.blocks[3].shortcut] == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
        assert isinstance(model.blocks[0].body[0], nn.BatchNorm2d)
    else:
        assert [type(m) for m in model.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]


def test_resnet20_cifar_kaiming_fan_out_init() -> None:
    torch.manual_seed(0)
    conv = create_model("resnet20_cifar", num_classes=10).blocks[8].body[0]  # 64→64 3x3: fan_out 576
    assert conv.weight.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.05)


def test_cifar_resnet_depth_and_width_switches() -> None:
    model = create_model("resnet20_cifar", num_classes=10, blocks=5, widths=[8, 16, 32, 64])
    assert len(model.blocks) == 20
    assert model.num_features == 64
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_densenet_cifar_follows_spec() -> None:
    model = create_model("densenet_cifar", num_classes=10)
    expected, channels = _conv(3, 32, 3, True), 32
    for block in range(4):
        for _ in range(6):
            expected += _bn(channels) + _conv(channels, 32, 1, False) + _bn(32) + _conv(32, 16, 3, False)
            channels += 16
        if block < 3:
            expected += _bn(channels) + _conv(channels, channels // 2, 1, False)
            channels //= 2
    expected += _bn(channels) + _linear(channels, 10)
    assert count_params(model) == expected == 239_146
    assert model.num_features == channels == 184
    assert (model.stem.out_channels, model.stem.bias is not None) == (32, True)
    transitions = [m for m in model.blocks if isinstance(m, nn.Sequential)]
    assert len(transitions) == 3 and all(isinstance(t[-1], nn.AvgPool2d) for t in transitions)
    assert sum(type(m).__name__ == "DenseLayer" for m in model.blocks) == 24


GOOGLENET_SPEC = [  # SPEC §2: input, {3x3, 5x5} reductions, {1x1, 3x3, 5x5, max} outputs
    (64, (32, 16), (16, 32, 8, 8)), (64, (32, 16), (24, 48, 12, 12)), (96, (32, 16), (24, 48, 12, 12)),
    (96, (32, 16), (16, 48, 16, 16)), (96, (32, 16), (16, 48, 16, 16)), (96, (32, 16), (32, 48, 24, 24)),
    (128, (48, 16), (32, 64, 16, 16)), (128, (48, 16), (32, 64, 16, 16)),
]  # fmt: skip


def test_googlenet_cifar_follows_spec() -> None:
    model = create_model("googlenet_cifar", num_classes=10)

    def conv_bn(c_in: int, c_out: int, k: int) -> int:
        return _conv(c_in, c_out, k, True) + _bn(c_out)

    expected = conv_bn(3, 64, 3) + _linear(128, 10)
    for c_in, (r3, r5), (o1, o3, o5, op) in GOOGLENET_SPEC:
        expected += conv_bn(c_in, o1, 1) + conv_bn(c_in, r3, 1) + conv_bn(r3, o3, 3)
        expected += conv_bn(c_in, r5, 1) + conv_bn(r5, o5, 5) + conv_bn(c_in, op, 1)
    assert count_params(model) == expected == 260_650
    kinds = ["pool" if isinstance(m, nn.MaxPool2d) else "inception" for m in model.blocks]
    assert kinds == ["inception"] * 2 + ["pool"] + ["inception"] * 4 + ["pool"] + ["inception"] * 2
    pools = [m for m in model.blocks if isinstance(m, nn.MaxPool2d)]
    assert all((p.kernel_size, p.stride) == (3, 2) for p in pools)
    blocks = [m for m in model.blocks if not isinstance(m, nn.MaxPool2d)]
    assert [b.branch1x1[0].in_channels for b in blocks] == [spec[0] for spec in GOOGLENET_SPEC]
    assert model.forward_features(torch.zeros(2, 3, 32, 32)).shape == (2, 128)


# --- acceptance 7: switches change the structure; unsupported ones fail at creation -------------------------


def _types(model: nn.Module) -> list[type]:
    return [type(m) for m in model.modules()]


@pytest.mark.parametrize(
    ("norm", "expected"),
    [("group", (32, 64)), ("layer", (1, 64)), ("instance", (64, 64))],
)
def test_resnet_norm_switch(norm: str, expected: tuple[int, int]) -> None:
    with torch.device("meta"):
        model = create_model("resnet18", num_classes=10, norm=norm)
    assert nn.BatchNorm2d not in _types(model)
    assert (model.bn1.num_groups, model.bn1.num_channels) == expected
    assert not any(key.endswith("running_mean") for key in model.state_dict())


def test_norm_none_removes_normalization() -> None:
    with torch.device("meta"):
        for name in ("resnet18", "resnet20_cifar", "googlenet_cifar", "densenet_cifar", "vgg11_bn"):
            types = _types(create_model(name, num_classes=10, norm="none"))
            assert not {nn.BatchNorm2d, nn.GroupNorm} & set(types), name


def test_alexnet_with_batchnorm() -> None:
    model = create_model("alexnet", num_classes=10, norm="batch", dropout=0.7, stem="small")
    conv_then = [type(b) for a, b in zip(model.features, model.features[1:]) if isinstance(a, nn.Conv2d)]
    assert conv_then == [nn.BatchNorm2d] * 5
    linear_then = [
        type(b) for a, b in zip(model.classifier, model.classifier[1:]) if isinstance(a, nn.Linear)
    ]
    assert linear_then == [nn.BatchNorm1d] * 2
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.7, 0.7]
    assert model.get_classifier() is model.classifier[-1]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    plain = create_model("alexnet", num_classes=10)
    assert nn.BatchNorm2d not in _types(plain) and nn.BatchNorm1d not in _types(plain)


def test_vgg_norm_selects_bn_layout_and_dropout_sets_hidden_dropout() -> None:
    with torch.device("meta"):
        with_bn = create_model("vgg11", num_classes=1000, norm="batch", dropout=0.25)
        reference = torchvision.models.vgg11_bn()
        grouped = create_model("vgg11_bn", num_classes=10, norm="group")
    assert list(with_bn.state_dict()) == list(reference.state_dict())
    assert [m.p for m in with_bn.modules() if isinstance(m, nn.Dropout)] == [0.25, 0.25]
    assert nn.BatchNorm2d not in _types(grouped) and nn.GroupNorm in _types(grouped)


def test_head_dropout_keeps_state_dict_keys() -> None:
    with torch.device("meta"):
        for name in ("resnet18", "densenet121", "googlenet", "resnet20_cifar"):
            plain = create_model(name, num_classes=10, dropout=0.0)
            dropped = create_model(name, num_classes=10, dropout=0.3)
            assert list(plain.state_dict()) == list(dropped.state_dict()), name
            assert isinstance(dropped.head_drop, nn.Dropout) and dropped.head_drop.p == 0.3, name
            assert isinstance(plain.head_drop, nn.Identity) or plain.head_drop.p == 0.0, name


def test_lenet5_switches() -> None:
    model = create_model(
        "lenet5", num_classes=10, in_chans=1, activation="relu", pool="max", dropout=0.5, norm="batch"
    )
    types = _types(model)
    assert nn.Sigmoid not in types and types.count(nn.ReLU) == 4
    assert types.count(nn.MaxPool2d) == 2 and nn.AvgPool2d not in types
    assert types.count(nn.Dropout) == 2
    assert (types.count(nn.BatchNorm2d), types.count(nn.BatchNorm1d)) == (2, 2)


def test_lenet5_widths_set_both_convs_and_the_flatten_size() -> None:
    model = create_model("lenet5", num_classes=10, in_chans=1, widths=(16, 32), norm="batch")
    first, second = (module for module in model.features if isinstance(module, nn.Conv2d))
    assert (first.out_channels, second.in_channels, second.out_channels) == (16, 16, 32)
    assert model.hidden[0].in_features == 32 * 5 * 5
    assert count_params(model) == 120_886 and model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"model\.widths for lenet5 needs two channel counts"):
        create_model("lenet5", num_classes=10, widths=(16,))


def test_lenet5_relu_max_pools_first_with_the_classic_orders_outputs_and_gradients() -> None:
    """With ReLU and max pooling the stages pool before they activate: bitwise the act → pool net."""
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_chans=1, activation="relu", pool="max", norm="batch")
    kinds = [type(m) for m in model.features]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ReLU] * 2
    classic = copy.deepcopy(model)
    f = classic.features
    classic.features = nn.Sequential(f[0], f[1], f[3], f[2], f[4], f[5], f[7], f[6])  # act → pool
    inputs, labels = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, classic)]
    for _ in range(3):
        for net, optimizer in zip((model, classic), optimizers):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(inputs), labels).backward()
            optimizer.step()
    for (key, ours), theirs in zip(model.state_dict().items(), classic.state_dict().values()):
        assert torch.equal(ours, theirs), key
    avg = create_model("lenet5", num_classes=10, in_chans=1, activation="relu", pool="avg")
    assert [type(m) for m in avg.features][1:3] == [nn.ReLU, nn.AvgPool2d]  # avg and ReLU do not commute


def test_activation_switch_on_cifar_nets() -> None:
    for name in ("resnet20_cifar", "preact_resnet20_cifar", "densenet_cifar", "googlenet_cifar"):
        types = _types(create_model(name, num_classes=10, activation="gelu"))
        assert nn.GELU in types and nn.ReLU not in types, name


def test_small_stem_layouts() -> None:
    with torch.device("meta"):
        resnet = create_model("resnet50", num_classes=10, in_chans=1, stem="small")
        densenet = create_model("densenet121", num_classes=10, stem="small")
        googlenet = create_model("googlenet", num_classes=10, stem="small")
        vgg = create_model("vgg11", num_classes=10, stem="small")
        vgg_reference = torchvision.models.vgg11()
    assert (resnet.conv1.kernel_size, resnet.conv1.stride, resnet.conv1.in_channels) == ((3, 3), (1, 1), 1)
    assert isinstance(resnet.maxpool, nn.Identity)
    assert (densenet.features.conv0.kernel_size, type(densenet.features.pool0)) == ((3, 3), nn.Identity)
    assert (googlenet.conv1.conv.kernel_size, type(googlenet.maxpool1)) == ((3, 3), nn.Identity)
    assert isinstance(vgg.features[2], nn.Identity) and isinstance(vgg.features[5], nn.MaxPool2d)
    assert list(vgg.state_dict()) == list(vgg_reference.state_dict())
    # pools globally: the 1x1/2x2 map is not replicated 49 times into a 25088-wide first hidden layer
    assert (vgg.avgpool.output_size, vgg.classifier[0].in_features) == ((1, 1), 512)


@pytest.mark.parametrize(
    ("name", "switches", "words"),
    [
        ("densenet121", {"norm": "group"}, ["densenet121", "norm", "batch"]),
        ("googlenet", {"norm": "layer"}, ["googlenet", "norm"]),
        ("resnet18", {"activation": "tanh"}, ["resnet18", "activation"]),
        ("lenet5", {"stem": "small"}, ["lenet5", "stem"]),
        ("resnet20_cifar", {"pool": "max"}, ["resnet20_cifar", "pool"]),
        ("resnet18", {"norm": "batchnorm"}, ["resnet18", "norm", "did you mean batch"]),
        ("alexnet", {"dropout": 1.5}, ["alexnet", "dropout", "[0, 1)"]),
        ("resnet20_cifar", {"widths": "wide"}, ["resnet20_cifar", "widths"]),
    ],
)
def test_unsupported_switch_fails_at_creation(name: str, switches: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        create_model(name, num_classes=10, **switches)
    message = str(error.value)
    assert "\n" not in message
    assert all(word in message for word in words), message


def test_none_switches_are_dropped() -> None:
    with torch.device("meta"):
        model = create_model("resnet18", num_classes=3, activation=None, pool=None, dropout=None, stem=None)
    assert model.get_classifier().out_features == 3


# --- acceptance 8 (library side): unknown names -------------------------------------------------------------


def test_unknown_model_names_close_matches() -> None:
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        create_model("nope", num_classes=10)
    with pytest.raises(ConfigError, match="did you mean resnet18"):
        create_model("resnet19", num_classes=10)
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("resnet18", num_classes=0)


def test_resolve_stem() -> None:
    assert resolve_stem("resnet50", "auto", 28) == ("small", 28)
    assert resolve_stem("resnet50", "auto", 128) == ("imagenet", 128)
    assert resolve_stem("resnet50", "auto", 28, pretrained=True) == ("imagenet", 64)
    assert resolve_stem("resnet50", "auto", 96, pretrained=True) == ("imagenet", 96)
    assert resolve_stem("resnet50", "imagenet", 64) == ("imagenet", 64)
    assert resolve_stem("resnet50", "resize", 32) == ("imagenet", 224)
    assert resolve_stem("resnet50", "small", 96) == ("small", 96)
    assert resolve_stem("lenet5", "resize", 28) == (None, 28)
    assert resolve_stem("resnet20_cifar", "auto", 32) == (None, 32)
    with pytest.raises(ConfigError, match="model.stem='tiny'"):
        resolve_stem("resnet50", "tiny", 28)


def test_count_flops_meta_equals_real_and_keeps_mode() -> None:
    real = create_model("resnet20_cifar", num_classes=10).train()
    with torch.device("meta"):
        meta = create_model("resnet20_cifar", num_classes=10)
    assert count_flops(real, (3, 32, 32)) == count_flops(meta, (3, 32, 32)) > 0
    assert real.training


def test_models_package_never_imports_lightning() -> None:
    """Every module cnnlab.models imports, directly or through other cnnlab modules, is free of Lightning."""
    pending, seen, imported = ["cnnlab.models"], set(), set()
    while pending:
        module = pending.pop()
        source = _module_source(module)
        if module in seen or source is None:
            continue
        seen.add(module)
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            imported.update(names)
            pending += [name for name in names if name.startswith("cnnlab")]
    assert {"cnnlab.models.torchvision_nets", "cnnlab.models.weights", "cnnlab.safeio"} <= seen
    assert not [name for name in imported if name.split(".")[0] in ("lightning", "pytorch_lightning")]


def _module_source(name: str) -> Path | None:
    """The source file of module `name`, or None when the dotted name is an attribute, not a module."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


# --- E4: parameter counts as the papers state them (He et al. 2016 Table 6; Xie et al. 2017 Table 7) ---

PAPER_MILLIONS = {  # the papers print millions to one decimal, truncated
    "resnet20_paper_cifar": 0.27,
    "resnet32_paper_cifar": 0.46,
    "resnet44_paper_cifar": 0.66,
    "resnet56_paper_cifar": 0.85,
    "resnet110_paper_cifar": 1.7,
    "resnext29_8x64d_cifar": 34.4,
    "resnext29_16x64d_cifar": 68.1,
}


@pytest.mark.parametrize("name", sorted(PAPER_MILLIONS))
def test_paper_nets_have_the_papers_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        params = count_params(create_model(name, num_classes=10))
    stated = PAPER_MILLIONS[name]
    digits = 2 if stated < 1 else 1
    assert abs(params / 1e6 - stated) < 10**-digits, (
        f"{name}: {params:,} parameters, the paper says {stated} M"
    )


def test_resnext_switches_shape_the_grouped_convolution() -> None:
    model = create_model("resnext29_2x64d_cifar", num_classes=10, groups=4, width_per_group=8, blocks=1)
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert [(m.groups, m.in_channels) for m in grouped] == [(4, 32), (4, 64), (4, 128)]
    assert len([m for m in model.modules() if type(m).__name__ == "Bottleneck"]) == 3


def test_the_spec_api_is_reachable_from_the_package_without_an_import_cost() -> None:
    """`cnnlab.list_models`, `cnnlab.create_model` and `cnnlab.fit` (docs/architecture.md) work from a bare
    `import cnnlab`, which itself still imports neither torch nor Lightning."""
    code = (
        "import sys, cnnlab\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules\n"
        "assert 'lenet5' in cnnlab.list_models()\n"
        "model = cnnlab.create_model('lenet5', num_classes=3, in_chans=1)\n"
        "assert model.get_classifier().out_features == 3\n"
        "assert callable(cnnlab.fit)\n"
        "try:\n"
        "    cnnlab.no_such_name\n"
        "except AttributeError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "no attribute 'no_such_name'" in done.stdout
