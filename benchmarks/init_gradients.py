"""The size of each projection's gradient at initialisation, against AdamW's ``eps``.

AdamW moves a weight by about ``lr * g / (sqrt(v) + eps)``: where a gradient's size is well below ``eps``
(1e-8 in zoo's recipe), the step is ``eps``-bound and the weight barely moves, whatever the learning rate.
A composition whose activations start tiny (a norm replaced by DyT at 0.02-scale weights, for one) can put
its query and key projections there and never learn to attend. This prints, for each composition given
(``;``-separated overrides), the median ``|gradient|`` of each projection kind over one batch of random
tokens, and its ratio to ``eps``.

    python benchmarks/init_gradients.py "model/norm=layernorm" "model/norm=dyt" "model/norm=dyt model.scale_embed=true"
"""

import argparse

import torch
import torch.nn.functional as F

import zoo

#: the norms study's model (conf/study/norms.yaml)
SIZE = ["model.dim=128", "model.n_layers=4", "model.n_heads=4", "model.max_seq_len=128"]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def medians(overrides: list[str], *, batch: int, length: int, seed: int) -> dict[str, float]:
    """Median ``|gradient|`` of each projection kind of the model ``overrides`` compose, after one
    next-token loss on random tokens."""
    torch.manual_seed(seed)
    model = zoo.build([*SIZE, *overrides])
    tokens = torch.randint(0, model.vocab_size, (batch, length + 1), generator=torch.Generator().manual_seed(seed))
    logits = model(tokens[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    found = {}
    for kind in PROJECTIONS:
        grads = [p.grad.abs().flatten() for name, p in model.named_parameters() if f".{kind}." in name and p.grad is not None]
        if grads:
            found[kind] = torch.cat(grads).median().item()
    return found


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("compositions", nargs="+", help="space-separated overrides per composition")
    parser.add_argument("--eps", type=float, default=1e-8, help="AdamW's eps (conf/optim/adamw.yaml)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {c: medians(c.split(), batch=args.batch, length=args.length, seed=args.seed) for c in args.compositions}
    kinds = [k for k in PROJECTIONS if any(k in r for r in results.values())]
    print(f"median |gradient| at initialisation (ratio to eps={args.eps:g})")
    print("| composition | " + " | ".join(kinds) + " |")
    print("|---|" + "---:|" * len(kinds))
    for composition, found in results.items():
        cells = [f"{found[k]:.1e} ({found[k] / args.eps:.2g})" if k in found else "" for k in kinds]
        print(f"| {composition} | " + " | ".join(cells) + " |")
    return results


if __name__ == "__main__":
    main()
