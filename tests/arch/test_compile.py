"""Models compile to one graph: a graph break costs the fusion that ``trainer.compile=true`` is for."""

import pytest
import torch

import zoo

TINY = ["model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.vocab_size=64", "model.max_seq_len=16"]


OPTIONS = [f"model/pos={p}" for p in ("rope", "alibi", "learned", "sinusoidal", "t5", "none")] + [
    "model/attention=gqa", "model/attention=mqa", "model/attention=sliding_window", "model/ffn=gelu", "model/norm=layernorm",
]  # fmt: skip


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("mode", ["train", "inference"])
def test_a_model_compiles_without_graph_breaks(option, mode):
    torch._dynamo.reset()
    model = zoo.build([*TINY, option]).train(mode == "train")
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: a break raises
    tokens = torch.randint(64, (2, 16))
    with torch.inference_mode(mode == "inference"):
        torch.testing.assert_close(compiled(tokens), model(tokens))
