"""train.py: the loop learns, every optimizer/schedule/loss runs, best weights are kept, failures stop it."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from mnist_mlp.core.determinism import deterministic
from mnist_mlp.core.model import MLP
from mnist_mlp.core.train import (
    TrainingError,
    compute_loss,
    evaluate_logits,
    fit,
    format_epoch,
    make_optimizer,
    resolve_device,
    seeded_model,
    train_step,
)
from mnist_mlp.data.mnist import Normalization, Split, load_split, normalize
from mnist_mlp.errors import UserError
from mnist_mlp.params import TrainParams
from support.mnist_files import synthetic_digits

CPU = torch.device("cpu")


def split_of(count: int, seed: int) -> Split:
    images, labels = synthetic_digits(count, seed)
    return Split(torch.from_numpy(images), torch.from_numpy(labels.astype("int64")), Normalization(0.2, 0.3))


def small(**overrides) -> TrainParams:
    settings = {"hidden_sizes": [32], "dropout": 0.0, "epochs": 1, "batch_size": 64, "lr": 0.01, "device": "cpu"}
    return TrainParams(**{**settings, **overrides})


def accuracy(model: MLP, split: Split) -> float:
    logits = evaluate_logits(model, normalize(split.images, split.normalization))
    return float((logits.argmax(dim=1) == split.labels).float().mean())


def test_a_small_batch_is_overfit():
    batch = split_of(32, seed=5)
    params = small(optimizer="adam", schedule="none", batch_size=32, epochs=60, weight_decay=0.0, label_smoothing=0.0)
    result = fit(MLP([64]), batch, batch, params, CPU)
    last = result.history[-1]
    assert last["train_loss"] < 0.01
    assert last["train_accuracy"] == 1.0 and last["val_accuracy"] == 1.0
    assert result.history[0]["train_loss"] > 10 * last["train_loss"]


def test_train_step_is_one_canonical_optimizer_step():
    torch.manual_seed(0)
    params = small(optimizer="sgd", schedule="none", momentum=0.0, weight_decay=0.0, lr=0.1, label_smoothing=0.0)
    model = MLP([8])
    reference = copy.deepcopy(model)
    inputs, labels = torch.randn(5, 784), torch.tensor([0, 1, 2, 3, 4])
    loss, logits = train_step(model, make_optimizer(model, params), None, inputs, labels, params)
    assert logits.shape == (5, 10) and loss.shape == ()
    # the same step by hand: w <- w - lr * dL/dw
    expected_loss = torch.nn.functional.cross_entropy(reference(inputs), labels)
    expected_loss.backward()
    torch.testing.assert_close(loss, expected_loss)
    for after, before in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(after, before.detach() - 0.1 * before.grad)


def test_history_has_one_record_per_epoch(tiny_processed):
    train, val = load_split(tiny_processed / "train.pt"), load_split(tiny_processed / "val.pt")
    seen = []
    result = fit(MLP([32]), train, val, small(epochs=3), CPU, on_epoch=seen.append)
    assert [record["epoch"] for record in result.history] == [1, 2, 3]
    assert seen == result.history
    assert set(result.history[0]) == {
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "seconds",
        "samples_per_s",
    }
    assert result.seconds > 0
    assert "epoch   3/3" in format_epoch(result.history[-1], 3)
    # on these separable digits three epochs are plenty
    assert result.best_val_accuracy > 0.9


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(UserError, match="train.device is 'cuda' but no CUDA GPU is available; allowed here: auto, cpu"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("optimizer", "schedule", "loss"),
    list(
        itertools.product(["sgd", "rmsprop", "adam", "adamw"], ["none", "cosine", "onecycle"], ["cross_entropy", "mse"])
    ),
)
def test_every_optimizer_schedule_and_loss_runs_an_epoch(optimizer, schedule, loss):
    train, val = split_of(256, seed=1), split_of(64, seed=2)
    model = MLP([16], dropout=0.1)
    before = copy.deepcopy(model.state_dict())
    result = fit(model, train, val, small(optimizer=optimizer, schedule=schedule, loss=loss, lr=0.005), CPU)
    (record,) = result.history
    assert all(torch.isfinite(torch.tensor(value)) for value in record.values())
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.best_epoch == 1 and result.best_state


def test_mse_loss_is_squared_error_of_probabilities_against_one_hot():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    probabilities = torch.softmax(logits, dim=1)
    target = torch.zeros(1, 10)
    target[0, 0] = 1.0
    expected = ((probabilities - target) ** 2).mean()
    torch.testing.assert_close(compute_loss(logits, torch.tensor([0]), "mse"), expected)
    torch.testing.assert_close(
        compute_loss(logits, torch.tensor([0]), "cross_entropy"), -torch.log_softmax(logits, dim=1)[0, 0]
    )


def test_best_on_validation_weights_are_kept():
    train = split_of(300, seed=1)
    # validation labels shifted by one: the better the model learns the digits, the worse it does here,
    # so the best epoch is an early one and the final weights must not be what is kept
    val = split_of(200, seed=2)
    val = Split(val.images, (val.labels + 1) % 10, val.normalization)
    model = MLP([32])
    snapshots = []
    result = fit(
        model,
        train,
        val,
        small(epochs=5, lr=0.001, optimizer="sgd", schedule="none"),
        CPU,
        on_epoch=lambda _: snapshots.append(copy.deepcopy(model.state_dict())),
    )
    accuracies = [record["val_accuracy"] for record in result.history]
    assert result.history[-1]["train_accuracy"] > result.history[0]["train_accuracy"]
    assert accuracies[-1] < accuracies[0]
    assert result.best_val_accuracy == max(accuracies)
    assert result.best_epoch == accuracies.index(max(accuracies)) + 1 < 5  # the first epoch reaching it
    best = snapshots[result.best_epoch - 1]
    assert result.best_state.keys() == best.keys()
    assert all(torch.equal(result.best_state[k], best[k]) for k in best)
    assert not all(torch.equal(result.best_state[k], v) for k, v in model.state_dict().items())
    model.load_state_dict(result.best_state)
    assert accuracy(model, Split(val.images, val.labels, train.normalization)) == pytest.approx(
        result.best_val_accuracy
    )


def test_a_non_finite_loss_stops_training_naming_epoch_and_step():
    train, val = split_of(256, seed=1), split_of(64, seed=2)
    exploding = small(optimizer="sgd", schedule="none", momentum=0.0, lr=1e12, epochs=3, batch_size=32)
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at epoch 1, step [2-8]; training stopped.*lr"):
        fit(MLP([32]), train, val, exploding, CPU)


def test_same_seed_gives_identical_weights_on_cpu():
    train, val = split_of(256, seed=1), split_of(64, seed=2)
    params = small(epochs=2, dropout=0.3, seed=7)

    def train_once(settings: TrainParams) -> dict:
        torch.rand(17)  # whatever ran before must not matter
        model = seeded_model(settings)
        with deterministic(CPU):
            return fit(model, train, val, settings, CPU).best_state

    first, second = train_once(params), train_once(params)
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = train_once(small(epochs=2, dropout=0.3, seed=8))
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_label_smoothing_moves_the_cross_entropy_target_off_the_one_hot():
    logits = torch.tensor([[10.0, 0.0, 0.0]])
    plain = compute_loss(logits, torch.tensor([0]), "cross_entropy")
    smoothed = compute_loss(logits, torch.tensor([0]), "cross_entropy", label_smoothing=0.3)
    expected = 0.8 * -torch.log_softmax(logits, dim=1)[0, 0] + 0.1 * -torch.log_softmax(logits, dim=1)[0, 1:].sum()
    torch.testing.assert_close(smoothed, expected)
    assert smoothed > plain


def test_fit_leaves_process_wide_torch_settings_alone():
    before = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    fit(MLP([8]), split_of(64, seed=1), split_of(32, seed=2), small(epochs=1), CPU)
    assert (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory) == before


AUGMENTED = {"shift": 2.0, "rotation": 10.0, "scale": 0.1, "shear": 5.0, "elastic_alpha": 30.0, "elastic_sigma": 4.0}


def test_augmentation_is_seeded_and_changes_training():
    train, val = split_of(256, seed=1), split_of(64, seed=2)

    def train_once(**overrides) -> dict:
        settings = small(epochs=2, dropout=0.3, seed=7, **overrides)
        torch.rand(17)  # whatever ran before must not matter
        with deterministic(CPU):
            return fit(seeded_model(settings), train, val, settings, CPU).best_state

    first, second = train_once(augment=AUGMENTED), train_once(augment=AUGMENTED)
    assert all(torch.equal(first[k], second[k]) for k in first)
    plain = train_once()
    assert not all(torch.equal(first[k], plain[k]) for k in first)


def test_validation_digits_are_never_augmented():
    train, val = split_of(256, seed=1), split_of(128, seed=2)
    # strong deformations every training step; the logged validation accuracy must be that of the clean digits
    model = MLP([32])
    result = fit(model, train, val, small(epochs=3, augment={**AUGMENTED, "rotation": 90.0, "shift": 8.0}), CPU)
    model.load_state_dict(result.best_state)
    assert accuracy(model, val) == result.best_val_accuracy


def test_the_last_clean_epochs_see_the_digits_as_stored(monkeypatch):
    from mnist_mlp.core import train as train_module

    deformed, real_augment = [0], train_module.augment_batch

    def counting(*args, **kwargs):  # the real deformation, counted
        deformed[0] += 1
        return real_augment(*args, **kwargs)

    monkeypatch.setattr(train_module, "augment_batch", counting)
    settings = small(epochs=3, batch_size=64, augment={**AUGMENTED, "last_clean_epochs": 2})
    after_each_epoch = []
    fit(
        MLP([8]),
        split_of(256, seed=1),
        split_of(32, seed=2),
        settings,
        CPU,
        on_epoch=lambda record: after_each_epoch.append(deformed[0]),
    )
    assert after_each_epoch == [4, 4, 4]  # 4 batches a epoch: epoch 1 deformed, epochs 2 and 3 as stored
