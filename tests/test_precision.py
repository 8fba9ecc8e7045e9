"""train.precision: auto — the probe's decision, its cache, what a run records (result.json, first line)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from cnnlab import config as cfg
from cnnlab import safeio
from cnnlab.models import create_model
from cnnlab.train import fit
from cnnlab.train import precision as prec
from cnnlab.train.precision import ProbeResult, ProbeTarget, choose_precision, decide


def fake_probe(fp32: float, bf16: float) -> ProbeResult:
    return ProbeResult(batch=64, pairs=3, fp32_images_per_s=fp32, bf16_images_per_s=bf16, seconds=0.5)


@pytest.fixture
def bf16_cpu(monkeypatch, tmp_path):
    """A CPU that reports avx512_bf16, an empty probe cache, and a counter of probes actually measured."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    monkeypatch.setattr(prec, "_memo", {})
    calls: list[int] = []

    def use(fp32: float, bf16: float) -> list[int]:
        def measure(*args, **kwargs) -> ProbeResult:
            calls.append(1)
            return fake_probe(fp32, bf16)

        monkeypatch.setattr(prec, "probe_step_rates", measure)
        return calls

    return use


def lenet_target(overrides: dict) -> ProbeTarget:
    """lenet5 at 1x28x28, batch 256, one CPU process; takes (pops) the ProbeTarget fields out of overrides."""
    target = ProbeTarget(
        accelerator="cpu",
        processes=1,
        model=create_model("lenet5", num_classes=10, in_chans=1),
        model_key="lenet5",
        input_shape=(1, 28, 28),
        num_classes=10,
        batch_size=256,
    )
    fields = {"accelerator", "processes", "model_key", "batch_size"} & overrides.keys()
    return dataclasses.replace(target, **{key: overrides.pop(key) for key in fields})


def choose(requested: str = "auto", **overrides):
    target = lenet_target(overrides)
    channels_last = overrides.pop("channels_last", True)
    return choose_precision(requested, target, channels_last=channels_last, **overrides)


@pytest.mark.parametrize(
    ("fp32", "bf16", "expected"),
    [(734, 1353, "bf16-mixed"), (1000, 1100, "bf16-mixed"), (1000, 1090, "32-true"), (734, 80, "32-true")],
)
def test_bf16_only_when_measured_faster_by_the_margin(fp32, bf16, expected):
    assert decide(fp32, bf16) == expected


def test_auto_takes_bf16_where_the_probe_measured_it_faster(bf16_cpu):
    calls = bf16_cpu(734.0, 1353.0)
    choice = choose()
    assert choice.precision == "bf16-mixed" and calls == [1]
    assert choice.probe.speedup == pytest.approx(1353 / 734)
    assert "fp32 734 img/s, bf16 1,353 img/s (1.84x" in choice.line()
    assert choice.line().startswith("precision: bf16-mixed (auto: probe on this CPU (avx512_bf16)")


def test_auto_keeps_fp32_where_bf16_measured_slower(bf16_cpu):
    bf16_cpu(734.0, 80.0)
    assert choose().precision == "32-true"


def test_the_decision_is_cached_per_machine_and_model(bf16_cpu, tmp_path):
    calls = bf16_cpu(734.0, 1353.0)
    first = choose()
    again = choose()  # a study worker's next run: measured earlier in this process, so not now
    assert not first.probe.cached and again.probe.cached and "(auto: cached probe on this CPU" in again.line()
    prec._memo.clear()  # a new process: only the cache file remains
    second = choose()
    assert calls == [1] and second.precision == first.precision and second.probe.cached
    stored = json.loads((tmp_path / "cache" / prec.CACHE_FILE).read_text())
    assert len(stored) == 1 and next(iter(stored.values()))["bf16_images_per_s"] == 1353.0
    choose(model_key="resnet20_cifar")  # another model is measured on its own
    assert calls == [1, 1]


def test_a_cached_decision_is_not_reused_on_another_cpu_of_the_same_name(bf16_cpu, monkeypatch, tmp_path):
    # cloud VMs call different EPYC generations "AMD EPYC", and a VM keeps its host name when moved
    calls = bf16_cpu(734.0, 1353.0)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(prec, "Path", lambda path: cpuinfo if path == "/proc/cpuinfo" else Path(path))
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 1\n\n")
    choose()
    prec._memo.clear()
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 17\n\n")
    again = choose()
    assert calls == [1, 1] and not again.probe.cached
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: ("amx_bf16", "avx512_bf16"))
    prec._memo.clear()
    choose()
    assert calls == [1, 1, 1]


def test_explicit_precision_bypasses_the_probe(bf16_cpu):
    calls = bf16_cpu(734.0, 1353.0)
    for requested in ("32-true", "bf16-mixed"):
        choice = choose(requested)
        assert choice.precision == requested and choice.probe is None
    assert calls == []


def test_no_probe_without_bf16_flags_or_with_several_processes(bf16_cpu, monkeypatch):
    calls = bf16_cpu(734.0, 1353.0)
    assert choose(processes=2).precision == "32-true"
    assert choose(resumed_with="bf16-mixed").precision == "bf16-mixed"
    assert choose(accelerator="cuda").precision == "bf16-mixed"
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: ())
    choice = choose()
    assert choice.precision == "32-true" and "lacks avx512_bf16 and amx_bf16" in choice.reason
    assert calls == []


def test_probe_measures_both_ways_and_leaves_model_and_random_state_alone():
    model = create_model("lenet5", num_classes=10, in_chans=1, norm="batch")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    state = torch.random.get_rng_state()
    result = prec.probe_step_rates(model, (1, 28, 28), 10, 8, channels_last=True, pairs=1)
    assert result.batch == 8 and result.pairs == 1
    assert result.fp32_images_per_s > 0 and result.bf16_images_per_s > 0
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_probe_halves_its_batch_for_slow_steps_and_keeps_to_its_budget(monkeypatch):
    model = create_model("lenet5", num_classes=10, in_chans=1)
    monkeypatch.setattr(prec, "PROBE_STEP_S", 0.0)  # every step is "too slow"
    result = prec.probe_step_rates(model, (1, 28, 28), 10, 256, channels_last=False)
    assert result.batch == prec.PROBE_MIN_BATCH and result.pairs == prec.PROBE_PAIRS
    spent = prec.probe_step_rates(model, (1, 28, 28), 10, 64, channels_last=False, budget_s=0.0)
    assert spent.pairs == 0 and spent.fp32_images_per_s > 0 and spent.bf16_images_per_s > 0


def test_a_slow_first_call_at_a_shape_does_not_cut_the_probe_batch(monkeypatch):
    # oneDNN builds its kernels on the first call at a shape; on a busy machine that call alone took longer
    # than PROBE_STEP_S at each batch tried, the batch fell from 128 to 8, and set-up and noise at batch 8
    # decided (and cached) lenet5's layout
    calls: list[int] = []

    def step_slow_at_first_call(model, optimizer, channels_last, input_shape, num_classes, batch):
        def step(bf16: bool) -> float:
            calls.append(batch)
            return 10 * prec.PROBE_STEP_S if calls.count(batch) == 1 else prec.PROBE_STEP_S / 10

        return step

    monkeypatch.setattr(prec, "_training_step", step_slow_at_first_call)
    model = create_model("lenet5", num_classes=10, in_chans=1)
    result = prec.probe_step_rates(model, (1, 28, 28), 10, 128, channels_last=False)
    assert result.batch == 128 and set(calls) == {128}
    assert result.fp32_images_per_s == result.bf16_images_per_s == 128 / (prec.PROBE_STEP_S / 10)


def tiny(**dotted) -> cfg.RunConfig:
    base = {
        "model.name": "lenet5",
        "model.activation": "relu",
        "data.name": "digits",
        "data.subset": 200,
        "data.batch_size": 50,
        "optim.lr": 0.05,
        "train.epochs": 1,
    }
    return cfg.from_dict({**base, **dotted})


def test_a_run_records_the_choice_in_result_json_its_first_line_and_checkpoint(bf16_cpu, tmp_path, capsys):
    calls = bf16_cpu(100.0, 300.0)
    result = fit(tiny(), tmp_path / "auto")
    assert result.status == "completed" and calls == [1]
    recorded = json.loads((tmp_path / "auto" / "result.json").read_text())["precision"]
    assert recorded["precision"] == "bf16-mixed" and recorded["requested"] == "auto"
    assert recorded["probe"]["fp32_images_per_s"] == 100.0 and recorded["probe"]["speedup"] == 3.0
    assert capsys.readouterr().out.splitlines()[0].startswith("precision: bf16-mixed (auto: probe")
    meta = safeio.load_checkpoint(tmp_path / "auto" / "checkpoints" / "last.ckpt")["cnnlab"]
    assert meta["precision"] == "bf16-mixed"


def test_explicit_fp32_run_is_not_probed_and_auto_keeps_the_run_id(bf16_cpu, tmp_path):
    calls = bf16_cpu(100.0, 300.0)
    result = fit(tiny(**{"train.precision": "32-true"}), tmp_path / "fp32")
    assert calls == [] and result.summary["precision"]["reason"] == "as configured, no probe"
    assert result.summary["precision"]["probe"] is None
    # the id hashes the config as written (auto), never the machine's outcome
    assert cfg.config_hash(tiny()) == cfg.config_hash(tiny(**{"train.precision": "auto"}))


def test_a_resumed_run_trains_in_the_precision_its_checkpoint_records(bf16_cpu, tmp_path):
    calls = bf16_cpu(100.0, 300.0)
    out = tmp_path / "resume"
    fit(tiny(), out)
    checkpoint = out / "checkpoints" / "last.ckpt"
    state = safeio.load_checkpoint(checkpoint)
    state["cnnlab"]["precision"] = "32-true"  # as if the run had started on a machine that chose fp32
    torch.save(state, checkpoint)
    (out / "result.json").unlink()  # unfinished: --resume continues from last.ckpt
    resumed = fit(tiny(**{"train.epochs": 1}), out, resume=True)
    assert resumed.summary["precision"]["precision"] == "32-true" and calls == [1]
    assert "its checkpoint" in resumed.summary["precision"]["reason"]


def _counted_steps(monkeypatch) -> list[int]:
    """Record the batch of every probe training step built (steps still run for real)."""
    built: list[int] = []
    real = prec._training_step

    def counting(*args):
        built.append(args[-1])
        return real(*args)

    monkeypatch.setattr(prec, "_training_step", counting)
    return built


def test_a_run_too_short_to_repay_a_probe_keeps_fp32_unless_one_is_cached(bf16_cpu, monkeypatch, tmp_path):
    built = _counted_steps(monkeypatch)
    short = dataclasses.replace(lenet_target({}), batch_size=64, run_images=600)
    choice = choose_precision("auto", short, channels_last=True)
    assert choice.precision == "32-true" and choice.probe is None and built == [], "not a single step"
    assert "no probe: the run trains 600 images, fewer than 10x the 64 a probe trains" in choice.line()
    assert not (tmp_path / "cache" / prec.CACHE_FILE).exists(), "a skipped probe is not a decision to keep"
    long = dataclasses.replace(short, run_images=64 * 8 * 10)
    measured = choose_precision("auto", long, channels_last=True)
    assert measured.probe is not None and not measured.probe.cached and built
    again = choose_precision("auto", short, channels_last=True)
    assert again.probe is not None and again.probe.cached, "a cached probe is used whatever the run's length"


def test_a_slow_first_step_cuts_the_probe_batch_to_what_its_time_says_fits(monkeypatch):
    built: list[int] = []

    def step_taking_batch_over_100_s(model, optimizer, channels_last, shape, classes, batch):
        built.append(batch)
        return lambda bf16: batch / 100  # 1.28 s at 128, 0.5 s at 50 (no real step runs)

    monkeypatch.setattr(prec, "_training_step", step_taking_batch_over_100_s)
    model = create_model("lenet5", num_classes=10, in_chans=1)
    result = prec.probe_step_rates(model, (1, 28, 28), 10, 256, channels_last=False)
    assert built == [128, 128, 50, 50] and result.batch == 50, "one cut, straight to the batch that fits"
    with pytest.raises(prec.ProbeNotWorthIt, match="fewer than 10x the 400 a probe trains"):
        prec.probe_step_rates(model, (1, 28, 28), 10, 256, channels_last=False, run_images=3999)
