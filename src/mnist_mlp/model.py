"""The multilayer perceptron, and the pixels-in/probabilities-out module that ships."""

from __future__ import annotations

import torch
from torch import nn

INPUT_SIZE = 28 * 28
NUM_CLASSES = 10

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


class MaskDropout(nn.Dropout):
    """nn.Dropout whose mask on the CPU costs a third: 16 random bits per unit, 64 bits per draw.

    torch's CPU dropout draws one 32-bit number per unit (bernoulli_): ~480 us per 128x512
    mask on the 2-core development machine, against 120-170 us here. One 64-bit draw serves
    four units, so the drop probability is p rounded to a multiple of 1/65536 (0.2 -> 0.199997)
    and kept units are scaled by exactly 1/(1 - that).
    The mask is built with float arithmetic only: comparisons that make bool tensors, and
    bool -> float casts, cost 4-7x a float op of the same size on the CPU.
    Same generator, so seeded runs stay bit-identical. On a GPU, torch's fused kernel is faster.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        dropped = min(round(self.p * 65536), 65535)  # of 65536 equally likely 16-bit values
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        bits = words.view(torch.int16)[: x.numel()].view(x.shape)  # uniform in [-32768, 32767]
        # integer bits: clamp(bits - threshold + 1, 0, 1) is 1 where bits >= threshold, else 0
        keep = bits.to(x.dtype).sub_(dropped - 32768 - 1).clamp_(0, 1).mul_(65536 / (65536 - dropped))
        return x * keep


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
                layers.append(MaskDropout(dropout))
            width = size
        layers.append(nn.Linear(width, NUM_CLASSES))
        self.layers = nn.Sequential(*layers)
        self.hidden_sizes = list(hidden_sizes)
        self.activation = activation
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, 784) -> (B, 10)


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
        x = (pixels.flatten(1) - self.mean) / self.std  # (B, 784)
        return torch.softmax(self.mlp(x), dim=1)  # (B, 10)
