"""train.channels_last: auto — the layout probe's decision, its cache, what a run records and resumes with."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from cnnlab import safeio
from cnnlab.errors import ConfigError
from cnnlab.models import create_model
from cnnlab.train import fit
from cnnlab.train import layout as lay
from cnnlab.train import precision as prec
from cnnlab.train.layout import LayoutProbe, choose_layout
from tests.test_precision import lenet_target, tiny


@pytest.fixture
def layout_probe(monkeypatch, tmp_path):
    """An empty probe cache and a fake layout probe (channels_last, nchw images/s); returns its call list."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prec, "_memo", {})
    calls: list[int] = []

    def use(channels_last: float, nchw: float) -> list[int]:
        def measure(*args, **kwargs) -> LayoutProbe:
            calls.append(1)
            return LayoutProbe(
                batch=64,
                pairs=3,
                channels_last_images_per_s=channels_last,
                nchw_images_per_s=nchw,
                seconds=0.4,
            )

        monkeypatch.setattr(lay, "probe_layout_rates", measure)
        return calls

    return use


def choose(requested: bool | str = "auto", **overrides):
    return choose_layout(requested, lenet_target(overrides), **overrides)


@pytest.mark.parametrize(
    ("channels_last", "nchw", "expected"),
    [(4300.0, 6400.0, False), (1000.0, 1100.0, False), (1000.0, 1090.0, True), (1380.0, 1130.0, True)],
)
def test_auto_trains_nchw_only_where_it_measured_faster_by_the_margin(
    layout_probe, channels_last, nchw, expected
):
    calls = layout_probe(channels_last, nchw)
    choice = choose()
    assert choice.channels_last is expected and calls == [1]
    assert f"channels_last {channels_last:,.0f} img/s, nchw {nchw:,.0f} img/s" in choice.line()


def test_the_layout_decision_is_cached_per_machine_and_model(layout_probe, tmp_path):
    calls = layout_probe(4300.0, 6400.0)
    first = choose()
    prec._memo.clear()  # a new process: only the cache file remains
    second = choose()
    assert calls == [1] and second.channels_last is first.channels_last is False and second.probe.cached
    stored = json.loads((tmp_path / "cache" / prec.CACHE_FILE).read_text())
    (key,) = stored
    assert "|layout|lenet5|" in key and stored[key]["nchw_images_per_s"] == 6400.0
    choose(model_key="resnet20_cifar")  # another model is measured on its own
    assert calls == [1, 1]


def test_no_layout_probe_when_configured_resumed_on_cuda_or_with_several_processes(layout_probe):
    calls = layout_probe(4300.0, 6400.0)
    assert choose(True).channels_last is True and choose(False).channels_last is False
    assert choose(resumed_with=True).channels_last is True
    assert choose(accelerator="cuda").channels_last is True
    choice = choose(processes=2)
    assert choice.channels_last is True and "2 CPU processes" in choice.reason
    assert calls == []


def test_the_layout_probe_measures_both_ways_and_leaves_model_and_random_state_alone():
    model = create_model("lenet5", num_classes=10, in_chans=1, norm="batch")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    state = torch.random.get_rng_state()
    result = lay.probe_layout_rates(model, (1, 28, 28), 10, 16, pairs=1)
    assert result.batch == 16 and result.pairs == 1
    assert result.channels_last_images_per_s > 0 and result.nchw_images_per_s > 0
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert next(model.parameters()).is_contiguous()  # the model itself was not converted


def test_a_run_records_its_layout_in_result_json_its_second_line_and_checkpoint(
    layout_probe, tmp_path, capsys
):
    calls = layout_probe(100.0, 300.0)
    out = tmp_path / "auto"
    result = fit(tiny(), out)
    assert result.status == "completed" and calls == [1]
    recorded = json.loads((out / "result.json").read_text())["layout"]
    assert recorded["layout"] == "nchw" and recorded["requested"] == "auto"
    assert recorded["probe"]["nchw_speedup"] == 3.0
    assert capsys.readouterr().out.splitlines()[1].startswith("layout: nchw (train.channels_last auto: probe")
    assert safeio.load_checkpoint(out / "checkpoints" / "last.ckpt")["cnnlab"]["channels_last"] is False


def test_a_resumed_run_trains_in_the_layout_its_checkpoint_records(layout_probe, tmp_path):
    calls = layout_probe(100.0, 300.0)
    out = tmp_path / "resume"
    fit(tiny(), out)
    checkpoint = out / "checkpoints" / "last.ckpt"
    state = safeio.load_checkpoint(checkpoint)
    state["cnnlab"]["channels_last"] = True  # as if the run had started where channels_last measured faster
    torch.save(state, checkpoint)
    (out / "result.json").unlink()  # unfinished: --resume continues from last.ckpt
    resumed = fit(tiny(), out, resume=True)
    assert resumed.summary["layout"]["layout"] == "channels_last" and calls == [1]
    assert "its checkpoint" in resumed.summary["layout"]["reason"]


def test_explicit_layouts_are_not_probed_and_a_bad_value_is_named(layout_probe, tmp_path):
    calls = layout_probe(100.0, 300.0)
    result = fit(tiny(**{"train.channels_last": "false"}), tmp_path / "nchw")
    assert result.summary["layout"] == {
        "layout": "nchw",
        "requested": False,
        "reason": "as configured, no probe",
        "probe": None,
    }
    assert calls == []
    with pytest.raises(ConfigError, match=r"train\.channels_last='sometimes'.*true, false or auto"):
        tiny(**{"train.channels_last": "sometimes"})


def test_a_run_too_short_to_repay_the_probe_trains_channels_last_unprobed(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prec, "_memo", {})
    target = dataclasses.replace(lenet_target({}), batch_size=16, run_images=1279)
    choice = choose_layout("auto", target)
    assert choice.channels_last is True and choice.probe is None
    assert "no probe: the run trains 1,279 images, fewer than 10x the 128 a probe trains" in choice.line()
    probed = choose_layout("auto", dataclasses.replace(target, run_images=1280))
    assert probed.probe is not None and not probed.probe.cached
