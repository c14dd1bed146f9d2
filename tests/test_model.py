"""model.py: the MLP's shape and size, its activations and dropout, and the shipped classifier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnist_mlp.core.model import ACTIVATIONS, MLP, PixelClassifier, architecture, count_parameters


def test_output_shape_is_batch_by_ten():
    model = MLP([64, 32])
    assert model(torch.randn(5, 784)).shape == (5, 10)
    assert model(torch.randn(1, 784)).shape == (1, 10)


def test_default_architecture_has_669706_parameters():
    # 784*512+512 + 512*512+512 + 512*10+10, the lecture's network
    model = MLP([512, 512], "relu", 0.2)
    assert count_parameters(model) == 669_706
    linear = [layer for layer in model.layers if isinstance(layer, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linear] == [(784, 512), (512, 512), (512, 10)]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_builds_and_is_used(activation):
    model = MLP([16, 16], activation=activation)
    kinds = [type(layer) for layer in model.layers]
    assert kinds.count(ACTIVATIONS[activation]) == 2
    assert torch.isfinite(model(torch.randn(4, 784))).all()
    assert model.activation == activation


def test_unknown_activation_names_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed: relu, tanh, sigmoid, gelu, leaky_relu"):
        MLP([16], activation="swish")


def test_dropout_follows_each_hidden_layer_when_positive():
    with_dropout = MLP([16, 8], dropout=0.5)
    dropouts = [layer for layer in with_dropout.layers if isinstance(layer, nn.Dropout)]
    assert [layer.p for layer in dropouts] == [0.5, 0.5]
    assert isinstance(with_dropout.layers[-1], nn.Linear)  # logits are never dropped
    assert not any(isinstance(layer, nn.Dropout) for layer in MLP([16, 8], dropout=0.0).layers)


def test_dropout_is_active_in_training_and_off_in_eval():
    torch.manual_seed(0)
    model = MLP([256], dropout=0.5)
    x = torch.randn(2, 784)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_pixel_classifier_outputs_probabilities_with_its_normalization_inside():
    torch.manual_seed(0)
    mlp = MLP([32]).eval()
    classifier = PixelClassifier(mlp, mean=0.13, std=0.31).eval()
    pixels = torch.rand(6, 784)
    probabilities = classifier(pixels)
    assert probabilities.shape == (6, 10)
    assert (probabilities >= 0).all()
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(6))
    torch.testing.assert_close(probabilities, torch.softmax(mlp((pixels - 0.13) / 0.31), dim=1))
    # images (B, 28, 28) are flattened the same way
    torch.testing.assert_close(classifier(pixels.reshape(6, 28, 28)), probabilities)
    assert {name for name, _ in classifier.named_buffers()} == {"mean", "std"}


def test_the_model_is_made_of_stock_modules_only():
    # a model file must load with stock torch alone: no module of this package inside
    mlp = MLP([64, 32], "tanh", dropout=0.2)
    assert {type(module).__module__.split(".")[0] for module in mlp.layers} == {"torch"}
    assert [type(module) for module in mlp.layers] == [
        nn.Linear,
        nn.Tanh,
        nn.Dropout,
        nn.Linear,
        nn.Tanh,
        nn.Dropout,
        nn.Linear,
    ]


def test_architecture_names_the_layer_widths():
    assert architecture([512, 512]) == "784-512-512-10"
    assert architecture([64]) == "784-64-10"
