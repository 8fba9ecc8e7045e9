"""Pretrained weights: first-conv adaptation, head replacement, torchvision files (never downloaded here)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from cnnlab.errors import ConfigError, WeightsError
from cnnlab.models import adapt_input_conv, create_model, load_pretrained, torchvision_state_dict


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    """A torchvision resnet18 state_dict with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(3)
    model = torchvision.models.resnet18()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.state_dict()


def test_one_channel_first_conv_is_sum_of_rgb_kernels(resnet18_state: dict) -> None:
    model = create_model("resnet18", num_classes=10, in_chans=1)
    skipped = load_pretrained(model, resnet18_state, name="resnet18")
    assert skipped == ["fc.weight", "fc.bias"]
    torch.testing.assert_close(model.conv1.weight, resnet18_state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, resnet18_state["layer4.1.conv2.weight"])
    assert torch.equal(model.layer1[0].bn1.running_var, resnet18_state["layer1.0.bn1.running_var"])
    assert model.fc.out_features == 10
    model.eval()
    gray = torch.rand(1, 1, 64, 64)
    reference = torchvision.models.resnet18().eval()
    reference.load_state_dict(resnet18_state)
    with torch.no_grad():  # a gray image gives the features the RGB net gives the same image in RGB
        torch.testing.assert_close(
            model.forward_features(gray), torch.flatten(reference.avgpool(_resnet_trunk(reference, gray)), 1)
        )


def _resnet_trunk(model: nn.Module, gray: torch.Tensor) -> torch.Tensor:
    x = model.maxpool(model.relu(model.bn1(model.conv1(gray.expand(-1, 3, -1, -1)))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


@pytest.mark.parametrize("in_chans", [2, 4, 7])
def test_other_channel_counts_repeat_and_rescale(in_chans: int) -> None:
    rgb = torch.randn(8, 3, 5, 5)
    adapted = adapt_input_conv(rgb, in_chans)
    assert adapted.shape == (8, in_chans, 5, 5)
    for channel in range(in_chans):
        torch.testing.assert_close(adapted[:, channel], rgb[:, channel % 3] * 3 / in_chans)


def test_same_head_loads_everything_and_matches_torchvision(resnet18_state: dict) -> None:
    model = create_model("resnet18", num_classes=1000).eval()
    assert load_pretrained(model, resnet18_state, name="resnet18") == []
    reference = torchvision.models.resnet18().eval()
    reference.load_state_dict(resnet18_state)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(image), reference(image))


def test_densenet_legacy_keys_and_first_conv() -> None:
    torch.manual_seed(0)
    state = torchvision.models.densenet121().state_dict()
    legacy = {  # the key style of torchvision's published densenet files
        key.replace(".norm1.", ".norm.1.")
        .replace(".conv1.", ".conv.1.")
        .replace(".norm2.", ".norm.2."): value
        for key, value in state.items()
        if not key.endswith("num_batches_tracked")  # absent from files saved before torch 0.4.1
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    model = create_model("densenet121", num_classes=2, in_chans=1)
    assert load_pretrained(model, legacy, name="densenet121") == ["classifier.weight", "classifier.bias"]
    first = model.features.denseblock1.denselayer1
    assert torch.equal(first.norm1.weight, state["features.denseblock1.denselayer1.norm1.weight"])
    torch.testing.assert_close(
        model.features.conv0.weight, state["features.conv0.weight"].sum(1, keepdim=True)
    )


def test_googlenet_pretrained_file_drops_aux_and_folds_input_transform() -> None:
    torch.manual_seed(0)
    # torchvision's googlenet weights are saved with aux heads and used with transform_input=True
    reference = torchvision.models.googlenet(aux_logits=True, transform_input=True, init_weights=True).eval()
    reference.conv1.bn.running_mean.uniform_(-0.5, 0.5)
    state = reference.state_dict()
    model = create_model("googlenet", num_classes=1000).eval()
    skipped = load_pretrained(model, state, name="googlenet")
    assert skipped and all(key.startswith(("aux1.", "aux2.")) for key in skipped)
    image = torch.randn(1, 3, 64, 64)  # ImageNet-normalized input
    with torch.no_grad():
        theirs = reference.conv1(reference._transform_input(image))
        ours = model.conv1(image)
    # equal away from the border that conv1's zero padding touches (7x7 kernel, padding 3, stride 2)
    torch.testing.assert_close(ours[..., 2:-2, 2:-2], theirs[..., 2:-2, 2:-2], rtol=1e-4, atol=1e-5)


def test_small_stem_refuses_pretrained_weights(resnet18_state: dict) -> None:
    model = create_model("resnet18", num_classes=10, stem="small")
    with pytest.raises(WeightsError, match="imagenet stem.*model.stem=auto"):
        load_pretrained(model, resnet18_state, name="resnet18")


def test_weights_of_another_model_are_refused_before_loading(resnet18_state: dict) -> None:
    model = create_model("resnet34", num_classes=1000)
    before = model.conv1.weight.clone()
    with pytest.raises(WeightsError, match=r"weights do not fit model resnet34: \d+ missing \(layer1.2"):
        load_pretrained(model, resnet18_state, name="resnet34")
    assert torch.equal(model.conv1.weight, before)


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, and a download function that fails like an offline machine."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path


def test_torchvision_weights_offline_says_how_to_get_them(hub_dir: Path) -> None:
    with pytest.raises(WeightsError) as error:
        torchvision_state_dict("resnet18", "IMAGENET1K_V1")
    message = str(error.value)
    assert "\n" not in message
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    for part in (
        "IMAGENET1K_V1",
        "resnet18",
        "not available offline",
        "name resolution",
        url,
        "--init file:PATH",
    ):
        assert part in message


def test_torchvision_weights_come_from_the_hub_cache(hub_dir: Path, resnet18_state: dict) -> None:
    (hub_dir / "checkpoints").mkdir()
    torch.save(resnet18_state, hub_dir / "checkpoints" / "resnet18-f37072fd.pth")
    for name in ("IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"):
        loaded = torchvision_state_dict("resnet18", name)
        assert loaded.keys() == resnet18_state.keys()
        assert torch.equal(loaded["conv1.weight"], resnet18_state["conv1.weight"])


def test_torchvision_weights_download_into_the_hub_cache(
    hub_dir: Path, resnet18_state: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append((url, hash_prefix))
        torch.save(resnet18_state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    loaded = torchvision_state_dict("resnet18", "IMAGENET1K_V1")
    assert calls == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd")]
    assert (hub_dir / "checkpoints" / "resnet18-f37072fd.pth").is_file()
    assert torch.equal(loaded["fc.bias"], resnet18_state["fc.bias"])


def test_unknown_torchvision_weights_are_config_errors(hub_dir: Path) -> None:
    with pytest.raises(ConfigError, match="IMAGENET1K_V2.*allowed: .*IMAGENET1K_V1"):
        torchvision_state_dict("resnet50", "IMAGENET1K_V3")
    with pytest.raises(ConfigError, match="no pretrained weights for model 'densenet264'"):
        torchvision_state_dict("densenet264", "IMAGENET1K_V1")
