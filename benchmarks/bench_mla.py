"""Multi-head latent attention: one decoding step in the absorbed form against the expanded form.

A one-layer causal model with ``model/attention=mla`` at DeepSeek-V2-Lite's proportions, scaled down
(dim 512, 8 heads, non-rotary query/key and value heads of 64, a rotary part of 32, a latent of 256 =
4 x 64 as in the paper), prefills ``--context`` random tokens once, then times single-token decode
steps over that cache (taken back to the context after each step) with the same weights in both
forms: ``absorb=false`` up-projects every cached latent into per-head keys and values at each step,
``absorb=true`` folds the up-projections into the query and the output. Steps alternate between the
forms, ``--steps`` each per round, and the median of ``--rounds`` is reported, so a busy machine skews
both alike; the figure to read is the expanded step's time over the absorbed one's.

    python benchmarks/bench_mla.py                                    # 2048 cached tokens, batch 1
    python benchmarks/bench_mla.py --context 512 4096 --batch 4 --threads 1
"""

import argparse
import statistics
import time

import torch

import zoo
from zoo.attention.cache import prepare_cache, truncate_cache

SIZES = [
    "model/attention=mla", "model.n_layers=1", "model.vocab_size=256", "model.dim=512", "model.n_heads=8",
    "model.head_dim=32", "model.attention.nope_head_dim=64", "model.attention.v_head_dim=64", "model.attention.kv_rank=256",
]  # fmt: skip


def step_seconds(model: torch.nn.Module, cache, token: torch.Tensor, context: int, steps: int) -> float:
    """Seconds per decode step at ``context`` cached tokens, mean over ``steps``."""
    start = time.perf_counter()
    for _ in range(steps):
        model(token, cache=cache)
        truncate_cache(cache, context)
    return (time.perf_counter() - start) / steps


@torch.inference_mode()
def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, nargs="+", default=[2048], help="cached tokens before each timed step")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {}
    for context in args.context:
        torch.manual_seed(0)
        model = zoo.build([*SIZES, f"model.max_seq_len={context + 1}"]).eval()
        attn = model.stack.layers[0].attn
        cache = prepare_cache(model.new_cache(), max_len=context + 1)
        model(torch.randint(0, 256, (args.batch, context)), cache=cache)
        token = torch.randint(0, 256, (args.batch, 1))
        times: dict[str, list[float]] = {"expanded": [], "absorbed": []}
        for r in range(args.rounds + 1):  # round 0 warms up
            for form in (["expanded", "absorbed"] if r % 2 else ["absorbed", "expanded"]):
                attn.absorb = form == "absorbed"
                seconds = step_seconds(model, cache, token, context, args.steps)
                if r:
                    times[form].append(seconds)
        ms = {form: 1e3 * statistics.median(t) for form, t in times.items()}
        out[context] = ms
        print(
            f"{context} cached tokens, batch {args.batch}, {torch.get_num_threads()} threads: one decode step "
            f"expanded {ms['expanded']:.3f} ms, absorbed {ms['absorbed']:.3f} ms, "
            f"expanded / absorbed {ms['expanded'] / ms['absorbed']:.2f} (median of {args.rounds} rounds of {args.steps})"
        )
    return out


if __name__ == "__main__":
    main()
