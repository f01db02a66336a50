"""The plugin architecture passes zoo's contract, and shares its block's weights across depth."""

import torch

from zoo.testing import build_tiny, check_contract
from zoo_shared import SharedLayersLM


def test_contract():
    check_contract(["model=shared"])


def test_one_block_many_passes():
    model = build_tiny(["model=shared", "model.n_layers=3"])
    assert isinstance(model, SharedLayersLM)
    layers = model.stack.layers
    assert len(layers) == 3 and all(layer is layers[0] for layer in layers)
    causal = build_tiny(["model=causal", "model.n_layers=3"])
    per_block = sum(p.numel() for p in layers[0].parameters())
    assert model.param_counts()["params"] == causal.param_counts()["params"] - 2 * per_block
    # every pass costs its FLOPs: the same count as three separate blocks
    assert model.flops(seq_len=8).total == causal.flops(seq_len=8).total
    with torch.no_grad():
        assert model(torch.randint(0, model.vocab_size, (1, 5))).shape == (1, 5, model.vocab_size)
