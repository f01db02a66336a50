"""Greedy decoding speed with zoo's KV cache against Hugging Face ``generate``, and KV-cache bytes.

The same Llama-style model on both sides (vocab 8192, dim 256, 4 layers, 4 heads of 64, SwiGLU 688,
RMSNorm, RoPE, no biases): built with random weights in ``transformers``, and copied into a model
composed by zoo, so both produce the same tokens. Batch 1, a short prompt, 256 new tokens, EOS
disabled on both sides. Runs are interleaved (zoo, HF, zoo, HF, ...) and the median is reported.

Then the bytes of keys and values held after the same generation, for MHA, GQA and MQA (they shrink
exactly with the KV heads) and for a sliding-window rolling buffer (bounded by its window).

    python benchmarks/bench_decode.py [--new-tokens 256] [--repeats 5] [--threads 1]
"""

import argparse
import statistics
import time

import torch

import zoo
from zoo.attention.cache import cache_nbytes, prepare_cache
from zoo.generation import generate

SIZES = dict(vocab_size=8192, dim=256, n_layers=4, n_heads=4, hidden_dim=688)


def zoo_overrides(*, n_kv_heads: int, window: int | None = None, max_seq_len: int = 1024) -> list[str]:
    s = SIZES
    return [
        "model=causal", "model/norm=rmsnorm", "model/residual=pre", "model/ffn=swiglu", "model/pos=rope",
        "model/attention=sliding_window" if window else "model/attention=mha",
        f"model.vocab_size={s['vocab_size']}", f"model.dim={s['dim']}", f"model.n_layers={s['n_layers']}",
        f"model.n_heads={s['n_heads']}", f"model.attention.n_kv_heads={n_kv_heads}", f"model.ffn.hidden_dim={s['hidden_dim']}",
        f"model.max_seq_len={max_seq_len}", "model.tie_embeddings=false", "model.norm.eps=1e-6", "model.pos.theta=10000.0",
        *([f"model.attention.window={window}"] if window else []),
    ]


def hf_llama(*, n_kv_heads: int, max_seq_len: int = 1024):
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SIZES
    config = LlamaConfig(
        vocab_size=s["vocab_size"], hidden_size=s["dim"], intermediate_size=s["hidden_dim"], num_hidden_layers=s["n_layers"],
        num_attention_heads=s["n_heads"], num_key_value_heads=n_kv_heads, max_position_embeddings=max_seq_len,
        rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    )
    model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa").eval()
    model.generation_config.eos_token_id = None  # always generate the full length
    model.generation_config.pad_token_id = 0
    return model


def copy_llama_weights(hf, model) -> None:
    """Copy a ``transformers`` Llama's weights into a zoo causal LM (pre-norm, SwiGLU, RoPE, untied)."""
    src = hf.state_dict()
    names = {"embed.weight": "model.embed_tokens.weight", "lm_head.weight": "lm_head.weight", "stack.norm.weight": "model.norm.weight"}
    for i in range(len(model.stack.layers)):
        ours, theirs = f"stack.layers.{i}", f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names[f"{ours}.attn.{proj}.weight"] = f"{theirs}.self_attn.{proj}.weight"
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names[f"{ours}.ffn.{proj}.weight"] = f"{theirs}.mlp.{proj}.weight"
        names[f"{ours}.norms.0.weight"] = f"{theirs}.input_layernorm.weight"
        names[f"{ours}.norms.1.weight"] = f"{theirs}.post_attention_layernorm.weight"
    target = model.state_dict()
    if set(names) != set(target):
        raise ValueError(f"unmapped zoo weights: {sorted(set(target) ^ set(names))}")
    model.load_state_dict({ours: src[theirs] for ours, theirs in names.items()})


def timed(fn):
    """``(wall seconds, CPU seconds of this thread, result)``: CPU time is less disturbed by other
    processes sharing the cores; wall time is what a user waits."""
    wall, cpu = time.perf_counter(), time.thread_time()
    out = fn()
    return time.perf_counter() - wall, time.thread_time() - cpu, out


def run_zoo(model, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    return generate(model, prompt, max_new_tokens=new_tokens).tokens[0]


def run_hf(model, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False)
    return out[0, prompt.shape[1] :].tolist()


def bench_speed(args) -> None:
    torch.manual_seed(0)
    hf = hf_llama(n_kv_heads=args.n_kv_heads)
    model = zoo.build(zoo_overrides(n_kv_heads=args.n_kv_heads)).eval()
    copy_llama_weights(hf, model)
    prompt = torch.randint(0, SIZES["vocab_size"], (1, args.prompt_len))
    runners = {"zoo (KV cache)": lambda: run_zoo(model, prompt, args.new_tokens), "HF generate": lambda: run_hf(hf, prompt, args.new_tokens)}
    for run in runners.values():  # warm-up
        run()
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    tokens = {}
    for _ in range(args.repeats):
        for name, run in runners.items():
            w, c, tokens[name] = timed(run)
            wall[name].append(w)
            cpu[name].append(c)
    same = tokens["zoo (KV cache)"] == tokens["HF generate"]
    print(f"\ngreedy decoding, batch 1, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats} interleaved runs")
    print(f"same tokens as HF: {same}")
    print(f"{'':<16} {'tokens/s':>9} {'ms/token':>9} {'ratio':>7} {'best ratio':>11} {'CPU ms/token':>13} {'CPU ratio':>10}")
    hf_wall, hf_best, hf_cpu = statistics.median(wall["HF generate"]), min(wall["HF generate"]), statistics.median(cpu["HF generate"])
    for name in runners:
        w, best, c = statistics.median(wall[name]), min(wall[name]), statistics.median(cpu[name])
        print(
            f"{name:<16} {args.new_tokens / w:>9.1f} {1000 * w / args.new_tokens:>9.2f} {hf_wall / w:>6.2f}x "
            f"{hf_best / best:>10.2f}x {1000 * c / args.new_tokens:>13.2f} {hf_cpu / c:>9.2f}x"
        )
    print("ratio: HF time / this time (> 1: faster than HF), from medians; best ratio from the fastest run of each;")
    print("CPU: this thread's CPU time, which other processes on shared cores disturb less than wall time")


def cache_bytes(overrides: list[str], length: int) -> int:
    model = zoo.build(overrides).eval()
    cache = prepare_cache(model.new_cache(), max_len=length)
    with torch.inference_mode():
        model(torch.randint(0, SIZES["vocab_size"], (1, length)), cache=cache)
    return cache_nbytes(cache)


def bench_bytes(args) -> None:
    length = args.prompt_len + args.new_tokens
    s = SIZES
    head_dim = s["dim"] // s["n_heads"]
    print(f"\nKV-cache bytes after {length} tokens (batch 1, float32, {s['n_layers']} layers, {s['n_heads']} query heads of {head_dim})")
    print(f"{'attention':<22} {'kv heads':>8} {'bytes':>10} {'vs MHA':>7} {'expected':>10}")
    mha = None
    for name, kv, window in [("mha", 4, None), ("gqa", 2, None), ("mqa", 1, None), (f"sliding_window {args.window}", 4, args.window)]:
        got = cache_bytes(zoo_overrides(n_kv_heads=kv, window=window), length)
        held = length if window is None else min(length, window)
        expected = 2 * s["n_layers"] * kv * head_dim * held * 4
        mha = mha or got
        print(f"{name:<22} {kv:>8} {got:>10} {got / mha:>6.3f}x {expected:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (batch-1 decoding gains little from more)")
    parser.add_argument("--n-kv-heads", type=int, default=4, help="KV heads of the speed comparison (4: MHA)")
    parser.add_argument("--window", type=int, default=64, help="window of the rolling-buffer row of the bytes table")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_speed:
        bench_speed(args)
    bench_bytes(args)


if __name__ == "__main__":
    main()
