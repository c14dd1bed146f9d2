"""The multilayer perceptron, and the pixels-in/probabilities-out module that ships."""

from __future__ import annotations

import torch
from torch import nn

from mnist_mlp.data.mnist import INPUT_SIZE, NUM_CLASSES

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


class MLP(nn.Module):
    """784 -> hidden sizes (activation, dropout after each) -> 10 logits."""

    def __init__(self, hidden_sizes: list[int], activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        layers: list[nn.Module] = []
        width = INPUT_SIZE
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, NUM_CLASSES))
        self.layers = nn.Sequential(*layers)
        self.hidden_sizes = list(hidden_sizes)
        self.activation = activation
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, 784) -> (B, 10)


def architecture(hidden_sizes: list[int]) -> str:
    """The layer widths as the literature writes them: 784-512-512-10."""
    return "-".join(map(str, [INPUT_SIZE, *hidden_sizes, NUM_CLASSES]))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class PixelClassifier(nn.Module):
    """What ships: pixel intensities in [0, 1] (B, 784), white digit on black, -> probabilities (B, 10).

    The training normalization lives inside as buffers, so a client never needs to know it.
    """

    def __init__(self, mlp: MLP, mean: float, std: float):
        super().__init__()
        self.mlp = mlp
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # flatten, not reshape(len(pixels), -1): len() pins the batch size when torch.export
        # traces the model for MLflow, and the served model would accept only that many rows
        # inside the exported graph too: `mlflow models serve` answers 400, not NaN or a confident digit
        torch._assert_async(((pixels >= 0) & (pixels <= 1)).all(), "pixels must be finite numbers in [0, 1]")
        x = (pixels.flatten(1) - self.mean) / self.std  # (B, 784)
        return torch.softmax(self.mlp(x), dim=1)  # (B, 10)


@torch.inference_mode()
def evaluate_logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = 10000) -> torch.Tensor:
    """Logits (N, 10) for normalized inputs (N, 784), in eval mode."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])
    model.train(was_training)
    return logits
