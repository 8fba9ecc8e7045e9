"""Grad-CAM: exact where the map is known, in the deciding quadrant on a trained net; `cnnlab explain`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnlab import config as cfg
from cnnlab.cli import main
from cnnlab.models import create_model
from cnnlab.train import fit
from cnnlab.train.gradcam import feature_map_module, grad_cam

SIDE = 32  # the quadrant task's image side
HALF = SIDE // 2


def test_map_of_a_one_channel_gap_net_is_the_image_itself() -> None:
    """conv 1x1 (weight 1) → ReLU → global average pool → linear: class 0 has weight +1, so its score rises
    with every bright pixel and its map is the image scaled to a peak of 1; class 1 (weight -1) has none."""
    conv = nn.Conv2d(1, 1, kernel_size=1)
    head = nn.Linear(1, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        head.bias.zero_()
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    images = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    explained = grad_cam(model, images, classes=torch.tensor([0, 0, 0]))
    expected = images[:, 0] / images.amax(dim=(1, 2, 3))[:, None, None]
    np.testing.assert_allclose(explained.maps, expected.numpy(), atol=1e-6)
    against = grad_cam(model, images, classes=torch.tensor([1, 1, 1]))
    assert np.all(against.maps == 0)
    assert explained.probs.shape == (3, 2) and np.allclose(explained.probs.sum(axis=1), 1)


def _bars(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images; class 1 a horizontal and class 2 a vertical bar inside one random quadrant, class 0
    none. The class is decided by that one quadrant: the other three hold only noise."""
    images = torch.rand(count, 1, SIDE, SIDE, generator=generator) * 0.2
    labels = torch.randint(0, 3, (count,), generator=generator)
    quadrants = torch.randint(0, 4, (count,), generator=generator)
    offsets = torch.randint(1, 5, (count, 2), generator=generator)
    for i in range(count):
        top = int(quadrants[i] // 2) * HALF + int(offsets[i, 0])
        left = int(quadrants[i] % 2) * HALF + int(offsets[i, 1])
        if labels[i] == 1:
            images[i, 0, top + 4 : top + 6, left : left + 10] = 1.0
        elif labels[i] == 2:
            images[i, 0, top : top + 10, left + 4 : left + 6] = 1.0
    return images, labels, quadrants


def test_map_mass_lies_in_the_quadrant_that_decides_the_class() -> None:
    generator = torch.Generator().manual_seed(0)
    images, labels, _ = _bars(256, generator)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(12):  # a second or two on one core
        for batch in torch.randperm(len(images)).split(64):
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    test, test_labels, quadrants = _bars(96, generator)
    explained = grad_cam(model, test)
    with_bar = (test_labels > 0).numpy()
    assert (explained.classes == test_labels.numpy())[with_bar].mean() > 0.95
    maps = explained.maps
    mass = np.stack(
        [maps[:, :HALF, :HALF], maps[:, :HALF, HALF:], maps[:, HALF:, :HALF], maps[:, HALF:, HALF:]], axis=1
    ).sum(axis=(2, 3))
    share = mass[np.arange(len(mass)), quadrants.numpy()] / mass.sum(axis=1)
    assert share[with_bar].min() > 0.6 and share[with_bar].mean() > 0.85


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("lenet5", {"in_chans": 1, "image_size": 28}),
        ("resnet20_cifar", {"in_chans": 3}),
        ("densenet_cifar", {"in_chans": 3}),
        ("resnet18", {"in_chans": 3, "stem": "small"}),
    ],
)
def test_zoo_models_get_a_map_of_their_input_side_and_keep_their_weights(name: str, hparams: dict) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, **hparams)
    side = hparams.get("image_size", 32)
    images = torch.randn(2, hparams["in_chans"], side, side)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    explained = grad_cam(model, images)
    assert explained.maps.shape == (2, side, side)
    assert np.isfinite(explained.maps).all() and explained.maps.min() >= 0 and explained.maps.max() <= 1
    with torch.no_grad():
        expected = torch.softmax(model(images), dim=1).numpy()
    np.testing.assert_allclose(explained.probs, expected, atol=1e-5)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())
    assert isinstance(feature_map_module(model, images[:1]), nn.Module)


def test_a_model_without_a_conv_feature_map_gets_no_map() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    assert grad_cam(model, torch.rand(2, 1, 4, 4)) is None


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lenet5 run on a digits subset (one epoch, a second or two)."""
    config = cfg.from_dict(
        {
            "model.name": "lenet5",
            "model.activation": "relu",
            "data.name": "digits",
            "data.subset": 300,
            "train.epochs": 1,
        }
    )
    return fit(config, tmp_path_factory.mktemp("runs") / "tiny").out_dir


def test_explain_writes_one_overlay_png_per_image(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(pictures / "red.png")
    Image.new("L", (28, 28), 90).save(pictures / "grey.jpg")
    Image.new("L", (20, 20), 10).save(pictures / "grey.png")  # the same stem as grey.jpg
    (pictures / "notes.txt").write_text("not an image")
    (pictures / "cats").mkdir()  # class subfolders are read too (a README example passes photos/)
    Image.new("RGB", (28, 28), (20, 90, 30)).save(pictures / "cats" / "0.png")
    out = tmp_path / "explained"
    assert (
        main(["explain", "--checkpoint", str(tiny_checkpoint), "--images", str(pictures), "--out", str(out)])
        == 0
    )
    assert sorted(path.name for path in out.iterdir()) == ["cats_0.png", "grey-2.png", "grey.png", "red.png"]
    for path in out.iterdir():
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.width > 2 * image.height * 0.8
            pixels = np.asarray(image)
        right = pixels[:200, image.width // 2 + 10 :]
        assert right.std() > 0  # the overlay panel is not blank
    printed = capsys.readouterr().out
    assert printed.count("predicted") == 4 and str(out / "red.png") in printed


@pytest.mark.parametrize("missing", ["checkpoint", "images"])
def test_explain_with_a_missing_path_exits_2_with_one_line(
    tiny_checkpoint: Path, tmp_path: Path, missing: str, capsys
) -> None:
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.new("RGB", (28, 28)).save(pictures / "a.png")
    checkpoint = tmp_path / "no-run" if missing == "checkpoint" else tiny_checkpoint
    images = tmp_path / "no-pictures" if missing == "images" else pictures
    code = main(
        ["explain", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(tmp_path / "o")]
    )
    error = capsys.readouterr().err
    assert code == 2
    assert (
        error.count("\n") == 1
        and error.startswith("cnnlab: error: ")
        and f"no-{'run' if missing == 'checkpoint' else 'pictures'}" in error
    )
    assert not (tmp_path / "o").exists()


def test_explain_refuses_an_out_that_is_a_file_or_the_images_folder(
    tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.new("RGB", (28, 28)).save(pictures / "a.png")
    (tmp_path / "taken").write_text("a file")
    for out in (tmp_path / "taken", pictures):
        assert (
            main(
                [
                    "explain",
                    "--checkpoint",
                    str(tiny_checkpoint),
                    "--images",
                    str(pictures),
                    "--out",
                    str(out),
                ]
            )
            == 2
        )
        assert capsys.readouterr().err.startswith(f"cnnlab: error: --out {out} ")
    assert sorted(path.name for path in pictures.iterdir()) == ["a.png"]


def test_hostile_file_names_give_one_line_captions_and_safe_overlay_names(
    tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    pictures = tmp_path / "pictures"
    for name in ("-rf.png", "new\nline.png", "esc\x1b[31m.png", f"{'deep' * 30}/{'deeper' * 30}/x.png"):
        (pictures / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (28, 28), (90, 90, 90)).save(pictures / name)
    out = tmp_path / "explained"
    assert (
        main(["explain", "--checkpoint", str(tiny_checkpoint), "--images", str(pictures), "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and not any("\x1b" in line for line in printed)
    assert any(line.startswith("new\\nline.png: predicted") for line in printed)
    names = sorted(path.name for path in out.iterdir())
    assert len(names) == 4 and not any(name.startswith("-") for name in names)
    assert max(len(name.encode()) for name in names) <= 255 and "_rf.png" in names
