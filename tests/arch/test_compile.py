"""Models compile to one graph: a graph break costs the fusion that ``trainer.compile=true`` is for."""

import pytest
import torch

import zoo

TINY = ["model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.vocab_size=64", "model.max_seq_len=16"]


# Every option is covered once; options from different groups share a model, since each trace costs
# seconds and a graph break in either one fails the case.
OPTIONS = [
    "model/pos=rope",
    "model/pos=alibi model/attention=gqa",
    "model/pos=learned model/attention=mqa",
    "model/pos=sinusoidal model/attention=sliding_window",
    "model/pos=t5 model/ffn=gelu",
    "model/pos=none model/norm=layernorm",
]


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("mode", ["train", "inference"])
def test_a_model_compiles_without_graph_breaks(option, mode):
    torch._dynamo.reset()
    model = zoo.build([*TINY, *option.split()]).train(mode == "train")
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: a break raises
    tokens = torch.randint(64, (2, 16))
    with torch.inference_mode(mode == "inference"):
        torch.testing.assert_close(compiled(tokens), model(tokens))


def test_a_prefix_decoder_compiles_without_graph_breaks():
    # its check of prefix_len against the length reads tensors: skipped while compiling
    torch._dynamo.reset()
    model = zoo.build([*TINY, "model=prefix"]).train()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    tokens, prefix_len = torch.randint(64, (2, 16)), torch.tensor([3, 9])
    torch.testing.assert_close(compiled(tokens, prefix_len=prefix_len), model(tokens, prefix_len=prefix_len))
