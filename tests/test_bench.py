"""bench.py on tiny synthetic data: the FLOP count, the lecture's loop, the report. No timing asserts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from mnist_mlp import bench
from mnist_mlp.data import preprocess
from mnist_mlp.params import TrainParams, apply_preset, validate_params

ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden_sizes": [16, 8], "batch_size": 50, "epochs": 1, "lr": 0.01, "device": "cpu"}


@pytest.fixture
def tiny_processed(tiny_raw: Path, tmp_path: Path) -> Path:
    out = tmp_path / "processed"
    preprocess(tiny_raw, out, "standardize", val_size=100, split_seed=0)
    return out


def tiny_params(**train) -> dict:
    return {"train": {**TINY, **train}}


def test_default_net_costs_3_2_mflop_per_training_sample():
    # forward 2*(784*512 + 512*512 + 512*10); weight gradients the same; input gradients skip layer 1
    forward = 2 * (784 * 512 + 512 * 512 + 512 * 10)
    assert bench.forward_flops_per_sample([512, 512]) == forward == 1_337_344
    assert bench.training_flops_per_sample([512, 512]) == 2 * forward + 2 * (512 * 512 + 512 * 10) == 3_209_216
    assert bench.epoch_flops([512, 512], 55_000, 5_000) == 55_000 * 3_209_216 + 5_000 * 1_337_344


def test_flop_count_agrees_with_torchs_counter_on_a_real_step():
    model = bench.lecture_net(TrainParams(hidden_sizes=[32, 16], dropout=0.0))
    inputs = torch.randn(7, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        model(inputs).sum().backward()
    assert counter.get_total_flops() == 7 * bench.training_flops_per_sample([32, 16])


def test_lecture_loop_reads_the_raw_files_through_torchvision(tiny_raw: Path):
    params = TrainParams(**TINY)
    with bench.torchvision_root(tiny_raw) as root:
        loop = bench.LectureLoop(root, params, torch.device("cpu"), epochs=2)
        first = [p.detach().clone() for p in loop.model.parameters()]
        assert loop.epoch() > 0 and loop.epoch() > 0
    assert loop.samples == 600  # the synthetic training file, all of it
    assert any(not torch.equal(a, b) for a, b in zip(first, loop.model.parameters()))  # it trained
    assert not root.exists()  # the temporary layout is gone


def test_missing_raw_files_are_named(tmp_path: Path):
    with pytest.raises(bench.BenchError, match=r"missing train-images-idx3-ubyte.*dvc repro download"):
        with bench.torchvision_root(tmp_path):
            pass


def test_matmul_rate_is_a_positive_flop_rate():
    rates = bench.matmul_rate([16], batch_size=8, device=torch.device("cpu"), repeats=1, calls=2)
    assert rates["step_flop_per_s"] > 0 and rates["first_layer_flop_per_s"] > 0
    assert rates["first_layer_shape"] == "8x784x16"


def test_the_shipped_fast_preset_is_valid_and_short():
    fast = apply_preset(validate_params({}), ROOT / "params" / "fast.yaml")
    assert fast.train.epochs < validate_params({}).train.epochs


def test_benchmark_report_without_the_stage(tiny_raw: Path, tiny_processed: Path, tmp_path: Path):
    params = validate_params(tiny_params(epochs=3))
    fast = validate_params(tiny_params(epochs=2, batch_size=25))
    lines: list[str] = []
    report = bench.run_benchmark(tiny_raw, tiny_processed, params, fast, repeats=2, device_choice="cpu", log=lines.append)

    assert len(report["baseline"]["all_epoch_seconds"]) == 2
    assert len(report["project"]["all_epoch_seconds"]) == 4  # two fit epochs per repeat
    assert report["project"]["samples_per_epoch"] == 600  # 500 trained on + 100 validated
    assert report["baseline"]["samples_per_epoch"] == 600
    assert report["bound"]["epoch_flops"] == bench.epoch_flops([16, 8], 500, 100)
    # ratios are per repeat (lecture epoch / median project epoch of that repeat), then the median
    epochs = report["project"]["all_epoch_seconds"]
    speedups = [lecture / ((a + b) / 2) for lecture, a, b in zip(report["baseline"]["all_epoch_seconds"], epochs[::2], epochs[1::2])]
    assert report["project"]["speedups_per_repeat"] == pytest.approx(speedups)
    assert report["project"]["speedup_vs_baseline"] == pytest.approx(sum(speedups) / 2)
    assert len(report["project"]["ratios_to_bound_per_repeat"]) == 2 and report["project"]["ratio_to_bound"] > 0
    assert report["memory"]["peak_rss_mib"] > 0
    assert [point["epoch"] for point in report["fast"]["curve"]] == [1, 2]
    assert 0.0 <= report["fast"]["test_accuracy"] <= 1.0
    assert "train_stage" not in report and len(lines) == 4  # two repeats, the breakdown, the fast preset
    assert set(report["step_breakdown"]) == set(bench.BREAKDOWN_VARIANTS)
    text = bench.markdown(report)
    assert "| project (`fit`) |" in text and "## `fast` preset" in text and "## Where a step's time goes" in text


def test_step_breakdown_times_each_variant_against_the_matmuls(tiny_processed: Path):
    train = bench.load_split(tiny_processed / "train.pt")
    params = TrainParams(**{**TINY, "dropout": 0.2})
    parts = bench.step_breakdown(train, params, torch.device("cpu"), rounds=3, window=4)
    assert list(parts) == list(bench.BREAKDOWN_VARIANTS)
    assert parts["matmuls"]["ratio_to_matmuls"] == 1.0
    assert all(part["microseconds_per_step"] > 0 for part in parts.values())
    # a whole step does strictly more than its matmuls; the ratios are of the same windows
    assert parts["step"]["ratio_to_matmuls"] > 1.0


def test_time_to_accuracy_finds_the_first_epoch_at_the_target(tiny_processed: Path):
    train, val, test = (bench.load_split(tiny_processed / f"{name}.pt") for name in ("train", "val", "test"))
    params = TrainParams(**{**TINY, "epochs": 3})
    result = bench.time_to_accuracy(train, val, test, params, torch.device("cpu"), target=0.0)
    assert result["epoch_reaching_target"] == 1
    assert 0 < result["seconds_to_target"] <= result["train_seconds"]
    never = bench.time_to_accuracy(train, val, test, params, torch.device("cpu"), target=1.01)
    assert never["seconds_to_target"] is None and never["epoch_reaching_target"] is None


def test_main_writes_both_reports(tiny_raw: Path, tiny_processed: Path, tmp_path: Path, capsys):
    params_file, fast_file = tmp_path / "params.yaml", tmp_path / "fast.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params()))
    fast_file.write_text(yaml.safe_dump({"train": {"epochs": 1}}))
    out = tmp_path / "reports"
    bench.main(["--raw", str(tiny_raw), "--data", str(tiny_processed), "--params", str(params_file),
                "--fast", str(fast_file), "--repeats", "1", "--no-stage", "--device", "cpu", "--out", str(out)])
    report = json.loads((out / "benchmarks.json").read_text())
    assert report["repeats"] == 1 and report["net"] == "784-16-8-10"
    assert (out / "benchmarks.md").read_text().startswith("# Training benchmark")
    assert sorted(p.name for p in out.iterdir()) == ["benchmarks.json", "benchmarks.md"]  # no temp files left
    assert "# Training benchmark" in capsys.readouterr().out


@pytest.mark.slow
def test_train_stage_and_mlflow_costs_are_measured(tiny_processed: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params(epochs=2)))
    stage = bench.train_stage(ROOT, params_file, tiny_processed, tmp_path)
    assert stage["epochs"] == 2 and stage["seconds"] > stage["fit_seconds"] > 0
    assert stage["peak_rss_mib"] > 50  # torch alone is bigger than that
    assert 0.0 <= stage["test_accuracy"] <= 1.0

    from mnist_mlp.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tmp_path / "model.pt")
    example = torch.rand(2, 784).numpy()
    costs = bench.mlflow_costs(tmp_path, validate_params(tiny_params()), 2, checkpoint.classifier(), example)
    assert costs["train_logging_seconds"] > 0 and costs["model_logging_seconds"] > 0
