"""Transfer: run: init across class subsets, linear/full/gradual fine-tuning, lr groups, weights files."""

from __future__ import annotations

import pytest
import torch
import torchvision

from cnnlab import config as cfg
from cnnlab import runfolder, safeio
from cnnlab.cli import main
from cnnlab.errors import CnnlabError, WeightsError
from cnnlab.models import create_model
from cnnlab.train import fit
from cnnlab.train.checkpoint import model_state
from cnnlab.train.run import prepare_run
from cnnlab.train.system import build_optimizer, split_parameters

FIRST = [str(c) for c in range(5)]
SECOND = [str(c) for c in range(5, 10)]


def small(classes, **dotted) -> cfg.RunConfig:
    base = {
        "model.name": "resnet20_cifar",
        "data.name": "digits",
        "data.classes": classes,
        "data.subset": 150,
        "data.batch_size": 32,
        "train.epochs": 1,
        "train.test": False,
    }
    return cfg.from_dict({**base, **dotted})


def weights(run_dir) -> dict[str, torch.Tensor]:
    return model_state(safeio.load_checkpoint(run_dir / "checkpoints" / "last.ckpt"))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return fit(small(FIRST), tmp_path_factory.mktemp("pre") / "pretrain").out_dir


def _changed(before: dict, after: dict) -> set[str]:
    return {key for key in after if not torch.equal(before[key], after[key])}


def head_keys(state: dict) -> set[str]:
    return {key for key in state if key.startswith("fc.")}


def test_run_init_on_other_classes_with_linear_probe_moves_only_the_head(pretrained, tmp_path):
    probe = fit(
        small(SECOND, **{"train.init": f"run:{pretrained}", "train.finetune": "linear"}), tmp_path / "lin"
    )
    assert probe.status == "completed" and probe.summary["class_names"] == SECOND
    before, after = weights(pretrained), weights(probe.out_dir)
    changed = _changed(before, after)
    assert changed and changed <= head_keys(after)
    running = [key for key in after if "running_mean" in key or "running_var" in key]
    assert running and all(torch.equal(before[key], after[key]) for key in running)


def test_full_finetune_changes_every_layer(pretrained, tmp_path):
    full = fit(small(SECOND, **{"train.init": f"run:{pretrained}"}), tmp_path / "full")
    before, after = weights(pretrained), weights(full.out_dir)
    counters = {k for k in after if k.endswith("num_batches_tracked")}
    assert _changed(before, after) - counters == set(after) - counters


@pytest.mark.parametrize(("epochs", "backbone_moves"), [(1, False), (2, True)])
def test_gradual_unfreezes_at_the_given_epoch(pretrained, tmp_path, epochs, backbone_moves):
    config = small(
        SECOND,
        **{
            "train.init": f"run:{pretrained}",
            "train.finetune": "gradual",
            "train.unfreeze_epoch": 1,
            "train.epochs": epochs,
        },
    )
    run = fit(config, tmp_path / f"gradual{epochs}")
    backbone = {k for k in _changed(weights(pretrained), weights(run.out_dir)) if not k.startswith("fc.")}
    assert bool(backbone) is backbone_moves


def test_backbone_lr_mult_makes_two_parameter_groups():
    model = create_model("resnet20_cifar", num_classes=10)
    optim = cfg.OptimConfig(lr=0.1)
    optimizer = build_optimizer(model, optim, backbone_lr_mult=0.01)
    head, backbone = split_parameters(model)
    assert [group["lr"] for group in optimizer.param_groups] == [0.1, pytest.approx(0.001)]
    assert optimizer.param_groups[0]["params"] == head and optimizer.param_groups[1]["params"] == backbone
    assert {id(p) for p in head} == {id(p) for p in model.get_classifier().parameters()}


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_float32_weights_get_the_fused_update_and_half_weights_their_own_precision(optimizer):
    model = create_model("lenet5", num_classes=10, in_chans=1)
    optim = cfg.OptimConfig(optimizer=optimizer, lr=0.01)
    assert build_optimizer(model, optim, backbone_lr_mult=1.0).defaults["fused"] is True
    assert not build_optimizer(model.half(), optim, backbone_lr_mult=1.0).defaults["fused"]


def test_a_fused_update_is_the_loops_to_rounding():
    """The same 20 SGD steps (momentum, Nesterov, weight decay) from the same weights, fused and looped."""
    models = [create_model("resnet20_cifar", num_classes=10) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optim = cfg.OptimConfig(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    fused = build_optimizer(models[0], optim, backbone_lr_mult=0.1)
    looped = torch.optim.SGD(
        [dict(g, params=list(m)) for g, m in zip(fused.param_groups, split_parameters(models[1]))],
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
    )
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for _ in range(20):
        for model, optimizer in zip(models, (fused, looped)):
            optimizer.zero_grad()
            model(images).square().mean().backward()
            optimizer.step()
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_file_init_with_torchvision_state_dict_adapts_first_conv_and_replaces_head(tmp_path):
    reference = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    config = cfg.from_dict(
        {
            "model.name": "resnet18",
            "model.stem": "resize",
            "data.name": "digits",
            "data.subset": 100,
            "train.init": f"file:{path}",
        }
    )
    prepared = prepare_run(config)
    model = prepared.model
    assert prepared.config.data.image_size == 224
    assert torch.allclose(model.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    assert model.get_classifier().out_features == 10
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_torchvision_init_offline_says_how_to_use_a_local_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    code = main(
        [
            "train",
            "--model",
            "resnet18",
            "--data",
            "digits",
            "--init",
            "torchvision:IMAGENET1K_V1",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "IMAGENET1K_V1" in err and "file:" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_readme_e2_command_fine_tunes_a_torchvision_resnet50_file_on_digits(tmp_path, capsys):
    """README's E2 line as a user types it, plus three settings for time (3 epochs at 32 px instead of
    the 64 px `stem: auto` feeds pretrained weights: a quarter of the FLOPs): a torchvision-format resnet50
    state_dict on 1-channel 8x8 digits. The run says what it adapted, and it learns well above chance
    (10 %), though the weights are random here (no ImageNet file offline)."""
    torch.manual_seed(0)
    weights_file = tmp_path / "resnet50-imagenet.pth"
    torch.save(torchvision.models.resnet50(num_classes=1000).state_dict(), weights_file)
    out = tmp_path / "r50"
    code = main(
        ["train", "--model", "resnet50", "--data", "digits", "--init", f"file:{weights_file}"]
        + ["--out", str(out), "--epochs", "3", "--set", "model.stem=imagenet", "--set", "data.image_size=32"]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "conv1 adapted from 3 to 1 input channels" in printed
    assert "head replaced: 1000 → 10 classes" in printed
    result = runfolder.read_result(out)
    assert result["status"] == "completed" and result["test"]["acc"] > 0.3, result["test"]


@pytest.mark.parametrize(
    ("dotted", "message"),
    [
        (
            {"model.name": "lenet5"},
            "trained model 'resnet20_cifar', not 'lenet5'; set model.name=resnet20_cifar",
        ),
        ({"model.widths": [8, 16, 32]}, "init from weights saved from resnet20_cifar with the same switches"),
    ],
)
def test_run_init_of_another_architecture_says_which_model_it_holds(pretrained, dotted, message):
    with pytest.raises(CnnlabError, match=message):
        prepare_run(small(SECOND, **{"train.init": f"run:{pretrained}", **dotted}))


def test_a_first_conv_of_one_channel_cannot_feed_three_and_says_what_to_do(tmp_path):
    gray = create_model("lenet5", num_classes=10, in_chans=1)
    torch.save(gray.state_dict(), tmp_path / "gray.pth")
    config = cfg.from_dict(
        {
            "model.name": "lenet5",
            "data.name": "synthetic",
            "data.subset": 100,
            "train.init": f"file:{tmp_path}/gray.pth",
        }
    )
    with pytest.raises(
        WeightsError, match=r"1 input channel\(s\) to 3; .*init from weights trained on 3 channels"
    ):
        prepare_run(config)


@pytest.mark.parametrize("kind", ["missing", "folder", "list"])
def test_a_file_init_that_cannot_serve_names_the_key_and_what_works(tmp_path, capsys, kind):
    path = {"missing": tmp_path / "nope.pth", "folder": tmp_path, "list": tmp_path / "list.pth"}[kind]
    if kind == "list":
        torch.save([1, 2, 3], path)
    out = tmp_path / "run"
    argv = ["train", "--model", "lenet5", "--data", "digits", "--init", f"file:{path}", "--out", str(out)]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"cnnlab: error: train.init=file:{path}: "), err
    assert "give a lenet5 state_dict saved with torch.save(model.state_dict(), PATH)" in err[0]
    assert not out.exists()
