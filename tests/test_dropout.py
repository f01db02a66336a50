"""Dropout layers: no module at all at rate 0, a real one otherwise."""

import torch
from torch import nn

import zoo
from zoo.dropout import dropout_layer, identity


def test_zero_rate_builds_no_dropout_and_a_positive_rate_drops_in_training_only():
    assert dropout_layer(0.0) is identity
    layer, x = dropout_layer(0.5), torch.ones(1000)
    assert (layer.train()(x) == 0).any() and torch.equal(layer.eval()(x), x)


def test_a_model_builds_dropout_layers_only_when_it_has_a_rate():
    def dropouts(rate: float) -> int:
        model = zoo.build(["model=causal", "model.dim=32", "model.n_layers=2", "model.n_heads=2", f"model.dropout={rate}"])
        return sum(isinstance(m, nn.Dropout) for m in model.modules())

    assert dropouts(0.0) == 0 and dropouts(0.1) > 0


def test_what_a_model_leaves_out_costs_no_module_call():
    model = zoo.build(["model=causal", "model.dim=32", "model.n_layers=2", "model.n_heads=2"])
    assert not any(isinstance(m, (nn.Identity, nn.Dropout)) for m in model.modules())
    tokens = torch.randint(0, 64, (1, 8))
    assert model(tokens).shape == (1, 8, model.vocab_size)
