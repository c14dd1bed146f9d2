"""The training loop: cached tensors on the device, batches by index, best-on-validation weights."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from mnist_mlp.core.augment import augment_batch
from mnist_mlp.core.determinism import deterministic
from mnist_mlp.core.model import MLP, evaluate_logits
from mnist_mlp.data.mnist import Split, normalize
from mnist_mlp.errors import UserError
from mnist_mlp.params import TrainParams


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (a non-finite loss, an unavailable device)."""


def resolve_device(choice: str) -> torch.device:
    """`auto` = CUDA when present, else CPU; `cuda` without a GPU is an error, not a silent fallback."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is 'cuda' but no CUDA GPU is available; allowed here: auto, cpu")
    return torch.device(choice)


def seeded_model(params: TrainParams) -> MLP:
    """The MLP with its initial weights drawn from train.seed."""
    torch.manual_seed(params.seed)
    return MLP(params.hidden_sizes, params.activation, params.dropout)


def make_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    weights = model.parameters()
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            weights, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay, foreach=True
        )
    if params.optimizer == "rmsprop":
        return torch.optim.RMSprop(weights, lr=params.lr, weight_decay=params.weight_decay, foreach=True)
    if params.optimizer == "adam":
        return torch.optim.Adam(weights, lr=params.lr, weight_decay=params.weight_decay, fused=True)
    if params.optimizer == "adamw":
        return torch.optim.AdamW(weights, lr=params.lr, weight_decay=params.weight_decay, fused=True)
    raise ValueError(f"unknown optimizer {params.optimizer!r}")


def make_schedule(optimizer: torch.optim.Optimizer, params: TrainParams, total_steps: int):
    if params.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if params.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=params.lr, total_steps=total_steps)
    return None


def compute_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str, label_smoothing: float = 0.0) -> torch.Tensor:
    if kind == "mse":  # the lecture's backpropagation section: squared error against one-hot targets
        targets = nn.functional.one_hot(labels, logits.shape[1]).to(logits.dtype)  # (B, 10)
        return nn.functional.mse_loss(torch.softmax(logits, dim=1), targets)
    return nn.functional.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    params: TrainParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimization step on a batch (B, 784), (B,); returns the loss and the logits (B, 10)."""
    # forward
    logits = model(inputs)  # (B, 10)
    loss = compute_loss(logits, labels, params.loss, params.label_smoothing)

    # backward and update
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if schedule is not None:
        schedule.step()
    return loss, logits


@dataclass
class TrainResult:
    best_state: dict
    best_epoch: int
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def fit(
    model: MLP,
    train: Split,
    val: Split,
    params: TrainParams,
    device: torch.device,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train `model` in place; return the best-on-validation weights and per-epoch history.

    Seeded again here, so the dropout, shuffle and augmentation streams do not depend on what ran before.
    """
    torch.manual_seed(params.seed)
    model.to(device)

    # Data: normalized once, held on the device; a batch is an index slice.
    x_train = normalize(train.images.to(device), train.normalization)  # (N, 784)
    y_train = train.labels.to(device)  # (N,)
    x_val = normalize(val.images.to(device), train.normalization)  # (M, 784)
    y_val = val.labels.to(device)  # (M,)
    # a blank pixel once normalized: what augmentation moves in from outside the digit's frame
    background = float(normalize(torch.zeros(1, 1, dtype=torch.uint8), train.normalization))
    n = len(x_train)
    steps_per_epoch = math.ceil(n / params.batch_size)

    optimizer = make_optimizer(model, params)
    schedule = make_schedule(optimizer, params, total_steps=params.epochs * steps_per_epoch)
    shuffle = torch.Generator(device=device).manual_seed(params.seed)
    check_every_step = device.type == "cpu"  # on a GPU, a per-step check would sync the host

    result = TrainResult(best_state={}, best_epoch=0, best_val_accuracy=-1.0)
    started = time.perf_counter()
    for epoch in range(1, params.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        # the last train.augment.last_clean_epochs see the digits as stored, as the test digits are
        deformed = epoch <= params.epochs - params.augment.last_clean_epochs
        order = torch.randperm(n, device=device, generator=shuffle)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        batches = range(steps_per_epoch)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"epoch {epoch}/{params.epochs}", leave=False, unit="batch")
        for step in batches:
            idx = order[step * params.batch_size : (step + 1) * params.batch_size]
            # index_select: cheaper than advanced indexing (x_train[idx]) on the CPU
            inputs, labels = x_train.index_select(0, idx), y_train.index_select(0, idx)  # (B, 784), (B,)
            # fresh deformations per batch (train.augment; all 0 returns the batch as is); never val or test
            if deformed:
                inputs = augment_batch(inputs, params.augment, background)
            loss, logits = train_step(model, optimizer, schedule, inputs, labels, params)
            if check_every_step and not math.isfinite(loss.item()):
                raise _non_finite(loss, epoch, step + 1, params.lr)

            # running train metrics, kept on the device (no host sync per step)
            loss_sum.add_(loss.detach(), alpha=len(idx))
            correct.add_((logits.detach().argmax(dim=1) == labels).sum())

        train_loss = float(loss_sum) / n
        if not math.isfinite(train_loss):
            raise _non_finite(torch.tensor(train_loss), epoch, steps_per_epoch, params.lr)

        # validation, in eval mode without autograd
        val_logits = evaluate_logits(model, x_val)  # (M, 10)
        val_loss = float(compute_loss(val_logits, y_val, params.loss))
        val_accuracy = float((val_logits.argmax(dim=1) == y_val).float().mean())
        seconds = time.perf_counter() - epoch_started
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": int(correct) / n,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "samples_per_s": n / seconds,
        }
        result.history.append(record)
        if val_accuracy > result.best_val_accuracy:
            result.best_val_accuracy, result.best_epoch = val_accuracy, epoch
            result.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        if on_epoch is not None:
            on_epoch(record)

    result.seconds = time.perf_counter() - started
    return result


def train_best(
    model: MLP,
    train: Split,
    val: Split,
    params: TrainParams,
    device: torch.device,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> tuple[TrainResult, dict]:
    """`fit` with deterministic kernels on train.threads threads, then the best-on-validation weights loaded into
    `model`; (the result, the checkpoint's info). The train stage and `check-reproducible` both train through it."""
    with deterministic(device, params.threads):
        result = fit(model, train, val, params, device, on_epoch=on_epoch, progress=progress)
    model.load_state_dict(result.best_state)
    info = {
        "best_val_accuracy": result.best_val_accuracy,
        "best_epoch": result.best_epoch,
        "epochs": params.epochs,
        "device": str(device),
    }
    return result, info


def _non_finite(loss: torch.Tensor, epoch: int, step: int, lr: float) -> TrainingError:
    return TrainingError(
        f"loss became {float(loss.detach())} at epoch {epoch}, step {step}; training stopped. "
        f"Hint: lower train.lr (now {lr}) or use a schedule with warm-up (onecycle)."
    )


def format_epoch(record: dict, epochs: int) -> str:
    return (
        f"epoch {record['epoch']:>3}/{epochs}  train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}"
        f"  val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f}"
        f"  {record['seconds']:.2f}s {record['samples_per_s']:,.0f} samples/s"
    )
