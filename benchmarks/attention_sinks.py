"""Where attention puts its weight: the share on a row's first token, and on the learned sink.

Xiao et al. 2023 (StreamingLLM, arXiv:2309.17453) found trained models give much of their attention to a
row's first token whatever it holds, a place to put weight a head does not need; a learned sink logit in the
softmax's denominator (gpt-oss, ``model/attention=sinks``) is meant to take that role instead. For each
checkpoint given, this reads rows of Python source (the standard library's ``argparse`` and ``textwrap``),
recomputes every layer's attention weights from the queries and keys its kernel receives, and prints per
layer the mean weight on the first token (queries after the first ``--skip``, which must attend somewhere
near it) against what uniform attention would give it, and the mean weight the sinks take.

    python benchmarks/attention_sinks.py outputs/mha outputs/sinks [--rows 32] [--length 128]
"""

import argparse
import inspect
from pathlib import Path

import torch

from zoo.attention.dense import eager_weights
from zoo.generate import load_checkpoint


def rows_of_source(tokenizer, *, rows: int, length: int, seed: int) -> torch.Tensor:
    """``(rows, length)`` token ids from random offsets of two standard-library modules."""
    import argparse as argparse_module
    import textwrap

    ids = tokenizer.encode(inspect.getsource(argparse_module) + inspect.getsource(textwrap))
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - length, (rows,), generator=g).tolist()
    return torch.tensor([ids[s : s + length] for s in starts])


def attention_weights(model, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the attention weights ``(b, h, n, m + 1)`` of ``tokens``: the last column the sink's (0
    without sinks), the eager reference's weights (:func:`zoo.attention.dense.eager_weights`) of what each
    layer's kernel receives."""
    found = []

    def recorder(attn):
        original = attn.attend

        def attend(q, k, v, *, mask, q_pos, k_pos, bias):
            w = eager_weights(q, k, mask=mask, q_pos=q_pos, k_pos=k_pos, bias=bias, scale=attn.scale, softcap=attn.softcap, sinks=attn.sinks)
            sink = torch.zeros_like(w[..., :1]) if attn.sinks is None else 1 - w.sum(-1, keepdim=True)
            found.append(torch.cat([w, sink], -1))
            return original(q, k, v, mask=mask, q_pos=q_pos, k_pos=k_pos, bias=bias)

        return attend

    layers = [layer.attn for layer in model.stack.layers]
    for attn in layers:
        attn.attend = recorder(attn)
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for attn in layers:
            del attn.attend
    return found


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="run or checkpoint folders of causal models")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--skip", type=int, default=16, help="queries at positions below this are left out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = {}
    for path in args.checkpoints:
        model, tokenizer = load_checkpoint(path, device=torch.device("cpu"))
        model.eval()
        tokens = rows_of_source(tokenizer, rows=args.rows, length=args.length, seed=args.seed)
        per_layer = []
        for weights in attention_weights(model, tokens):
            later = weights[:, :, args.skip :]
            uniform = (1.0 / torch.arange(args.skip + 1, args.length + 1, dtype=torch.float)).mean().item()
            per_layer.append({"first": later[..., 0].mean().item(), "uniform": uniform, "sink": later[..., -1].mean().item()})
        results[Path(path).name] = per_layer
    print(f"mean attention weight of queries {args.skip}..{args.length - 1} ({args.rows} rows of Python source)")
    print("| checkpoint | layer | on the first token | uniform would give | on the sinks |")
    print("|---|---:|---:|---:|---:|")
    for name, per_layer in results.items():
        for i, r in enumerate(per_layer):
            print(f"| {name} | {i} | {r['first']:.3f} | {r['uniform']:.3f} | {r['sink']:.3f} |")
    return results


if __name__ == "__main__":
    main()
