"""benchmarks/bench.py: the FLOP count, the validity rules on constructed results, a tiny real run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mnist_mlp.core.model import MLP
from mnist_mlp.errors import UserError
from mnist_mlp.params import Params, TrainParams

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load_script()
FLOPS = 1e9  # epoch FLOPs of the constructed results: at 1 GFLOP/s the bound is 1 s


def repeat(lecture: float = 4.0, project: float = 2.0, rate: float = 1e9) -> bench.Repeat:
    return bench.Repeat(lecture, project, rate, fast_to_target_s=1.0, fast_train_s=1.5, fast_test_accuracy=0.981)


def result(*repeats) -> bench.Result:
    return bench.Result(
        device="cpu",
        threads=2,
        net="784-512-512-10",
        batch_size=128,
        epoch_flops=int(FLOPS),
        train_samples=55_000,
        lecture_samples=60_000,
        fast_preset="fast",
        stage_epochs=20,
        repeats=list(repeats),
    )


def test_default_net_costs_3_2_mflop_per_training_sample():
    # forward 2*(784*512 + 512*512 + 512*10); weight gradients the same; input gradients skip layer 1
    _, forward, step = bench.step_matmuls([512, 512], 1, torch.device("meta"))
    assert forward == 2 * (784 * 512 + 512 * 512 + 512 * 10) == 1_337_344
    assert step == 2 * forward + 2 * (512 * 512 + 512 * 10) == 3_209_216


def test_flop_count_and_the_timed_matmuls_agree_with_torchs_counter():
    run, forward, step = bench.step_matmuls([32, 16], 7, torch.device("cpu"))
    model, inputs = MLP([32, 16]), torch.randn(7, 784)
    with FlopCounterMode(display=False) as counter:
        model(inputs).sum().backward()
    assert counter.get_total_flops() == 7 * step
    with FlopCounterMode(display=False) as counter:
        run()
    assert counter.get_total_flops() == 7 * step  # the timed function runs exactly a step's matmuls
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(inputs)
    assert counter.get_total_flops() == 7 * forward


def test_the_cost_of_augmentation_per_epoch_is_the_median_difference():
    repeats = [
        bench.Repeat(4.0, project, 1e9, 1.0, 1.5, 0.981, augmented_epoch_s=augmented)
        for project, augmented in ((2.0, 2.5), (2.0, 2.6), (2.2, 2.6))
    ]
    measured = result(*repeats)
    measured.augment = "shift 2, rotation 10"
    summary = measured.summary()
    assert summary["augment_cost_s"] == pytest.approx(0.5) and summary["augment_cost_share"] == pytest.approx(0.25)
    assert "Augmentation (the `best` preset's train.augment: shift 2, rotation 10;" in bench.markdown(measured)
    assert "+0.50 s (+25%" in bench.markdown(measured)
    assert result(repeat()).summary()["augment_cost_s"] is None and "Augmentation" not in bench.markdown(
        result(repeat())
    )


def test_consistent_repeats_are_valid():
    valid = result(repeat(), repeat(4.4, 2.1, 0.9e9), repeat(3.8, 1.9, 1.1e9))
    assert bench.problems(valid) == []
    assert valid.summary()["speedup_vs_lecture"] == pytest.approx(2.0)
    assert valid.summary()["ratio_to_bound"] == pytest.approx(2.0)
    assert "INVALID" not in bench.markdown(valid)


def test_a_project_faster_than_its_matmul_bound_is_impossible():
    # 0.5 s per epoch, but the epoch's matmuls alone take 1 s at this repeat's rate
    assert bench.problems(result(repeat(project=0.5), repeat(project=0.6))) == [
        (0, "repeat 1: the project's epoch (0.500 s) is faster than the matmul bound (1.000 s)"),
        (1, "repeat 2: the project's epoch (0.600 s) is faster than the matmul bound (1.000 s)"),
    ]


def test_a_lecture_epoch_faster_than_the_bound_is_impossible_too():
    # at 0.5 GFLOP/s the epoch's matmuls take 2 s; the lecture's epoch has at least as many
    assert bench.problems(result(repeat(1.8, 2.5, 0.5e9), repeat(2.4, 2.5, 0.5e9))) == [
        (0, "repeat 1: the lecture's epoch (1.800 s) is faster than the matmul bound (2.000 s)"),
    ]


def test_a_matmul_rate_under_half_of_the_runs_best_is_refused():
    found = bench.problems(result(repeat(), repeat(project=8.0, rate=0.4e9, lecture=16.0), repeat()))
    assert found == [(1, "repeat 2: matmuls at 0.4 GFLOP/s, under 50% of this run's best (1.0)")]


def test_repeats_whose_ratios_disagree_name_the_outlier():
    found = bench.problems(result(repeat(), repeat(lecture=9.0), repeat(lecture=4.2)))
    assert found == [
        (1, "speedup vs lecture: the repeats disagree (2.00, 4.50, 2.10: largest over smallest above 2.0)")
    ]


def test_remeasuring_replaces_the_bad_repeat_and_then_it_is_valid():
    measured = result(repeat(), repeat(project=0.5), repeat())
    bench.remeasure(measured, lambda: repeat(project=2.2), retries=2)
    assert measured.problems == [] and measured.remeasured == 1
    assert [r.project_epoch_s for r in measured.repeats] == [2.0, 2.2, 2.0]


def test_remeasuring_is_bounded_and_what_stays_impossible_is_marked_invalid():
    calls = []
    measured = result(repeat(3.0, 1.5), repeat(1.8, 0.9))
    bench.remeasure(measured, lambda: calls.append(1) or repeat(1.8, 0.9), retries=3)
    assert len(calls) == 3 and measured.remeasured == 3
    assert measured.problems == ["repeat 2: the project's epoch (0.900 s) is faster than the matmul bound (1.000 s)"]
    text = bench.markdown(measured)
    assert "**INVALID** (after re-measuring 3 repeats)" in text and measured.problems[0] in text
    assert measured.summary()["valid"] is False


def test_missing_raw_files_are_one_clear_error(tmp_path: Path):
    with pytest.raises(UserError, match=r"the four MNIST IDX files are missing; run `dvc repro download`"):
        bench.lecture_epoch(tmp_path, TrainParams(), torch.device("cpu"))


def test_the_train_stages_mlflow_work_is_timed_in_the_given_store(
    mlflow_store: str, tiny_processed: Path, tmp_path: Path
):
    import mlflow

    params = Params(train=TrainParams(epochs=3))
    assert bench.mlflow_seconds(params, tiny_processed, tmp_path) > 0
    client = mlflow.MlflowClient(mlflow_store)
    (run,) = client.search_runs([client.get_experiment_by_name(params.tracking.experiment).experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 3
    assert sorted(d.dataset.name for d in run.inputs.dataset_inputs) == ["mnist-train", "mnist-val"]


@pytest.mark.integration
def test_a_tiny_real_run_writes_both_reports_and_exits_0_only_when_valid(
    tiny_raw: Path, tiny_processed: Path, tmp_path: Path
):
    # a leftover experiment in the working folder's params.yaml must not change what is measured
    (tmp_path / "params.yaml").write_text("train:\n  hidden_sizes: [8]\n")
    out = tmp_path / "reports"
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--raw",
            str(tiny_raw),
            "--data",
            str(tiny_processed),
            "--repeats",
            "2",
            "--min-run-time",
            "0.01",
            "--no-mlflow",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    report = json.loads((out / "benchmarks.json").read_text())
    text = (out / "benchmarks.md").read_text()
    assert report["net"] == "784-512-512-10" and len(report["repeats"]) == 2
    assert report["epoch_flops"] == 500 * 3_209_216 + 100 * 1_337_344  # the tiny split: 500 trained on, 100 validated
    assert report["lecture_samples"] == 600 and report["mlflow_s"] is None
    assert text.startswith("# Training benchmark") and "784-256-256-10, batch 256" in text  # params/fast.yaml
    assert all(r["augmented_epoch_s"] > 0 for r in report["repeats"]) and "`best` preset's train.augment: shift" in text
    assert run.returncode == (0 if report["summary"]["valid"] else 1), run.stderr
    assert ("**INVALID**" in text) == (not report["summary"]["valid"]) == ("bench: error: INVALID" in run.stderr)
    assert sorted(p.name for p in out.iterdir()) == ["benchmarks.json", "benchmarks.md"]  # no temp files left
