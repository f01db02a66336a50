"""Greedy decoding speed: zoo eager and compiled against Hugging Face ``generate``, KV-cache bytes,
and decode time per token against the context length for MHA, GQA, MQA and a sliding window.

1. The same Llama-style model on both sides (vocab 8192, dim 256, 4 layers, 4 heads of 64, SwiGLU 688,
   RMSNorm, RoPE, no biases): built with random weights in ``transformers``, and copied into a model
   composed by zoo, so both produce the same tokens. Batch 1, a short prompt, 256 new tokens, EOS
   disabled on both sides: zoo's ``generate`` eager and ``compiled=True`` (a static KV cache and a
   ``torch.compile``-d step), HF ``generate`` with its default cache, and (``--hf-static``) with its
   static cache compiled; ``--bf16`` adds zoo compiled and HF ``generate`` with bfloat16 weights and
   cache (half the bytes a step reads). Runs are interleaved (zoo, HF, zoo, HF, ...) and the median is reported;
   compilation happens in the warm-up and is timed apart.
2. The bytes of keys and values held after the same generation, for MHA, GQA and MQA (they shrink
   exactly with the KV heads) and for a sliding-window rolling buffer (bounded by its window).
3. Decode steps after a context of 256 to 8192 tokens, batch 1 and 16, for MHA, GQA (2 KV heads of
   4), MQA and a 256-token sliding window, eager against static + compiled: ms per step, tokens/s and
   cache bytes side by side, and a plot (``--plot``). The cache is filled with random keys and values
   instead of prefilling (decode time does not depend on what they hold; a 16 x 8192 prefill takes
   minutes here). Eager and compiled steps alternate, ``--steps`` each, median of ``--rounds``.
4. ``--profile``: where a compiled batch-1 step's time goes, operators against the overhead around them.

    python benchmarks/bench_decode.py --quick          # a few minutes: contexts 256/4096/8192
    python benchmarks/bench_decode.py --skip-speed --skip-bytes --skip-context --profile
    python benchmarks/bench_decode.py [--new-tokens 256] [--repeats 5] [--threads 2] [--hf-static] [--bf16]
"""

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

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


def run_zoo(model, prompt: torch.Tensor, new_tokens: int, *, compiled: bool = False) -> list[int]:
    return generate(model, prompt, max_new_tokens=new_tokens, compiled=compiled).tokens[0]


def run_hf(model, prompt: torch.Tensor, new_tokens: int, *, static: bool = False) -> list[int]:
    """HF ``generate``; ``static``: its static cache with the forward compiled, which HF does by
    itself only on accelerators (``CompileConfig._compile_all_devices`` asks for it on a CPU too)."""
    kwargs = {}
    if static:
        from transformers import CompileConfig

        config = CompileConfig(mode="default")
        config._compile_all_devices = True
        kwargs = dict(cache_implementation="static", compile_config=config)
    with torch.inference_mode():
        out = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, **kwargs)
    return out[0, prompt.shape[1] :].tolist()


def bench_speed(args) -> None:
    torch.manual_seed(0)
    hf = hf_llama(n_kv_heads=args.n_kv_heads)
    model = zoo.build(zoo_overrides(n_kv_heads=args.n_kv_heads)).eval()
    copy_llama_weights(hf, model)
    prompt = torch.randint(0, SIZES["vocab_size"], (1, args.prompt_len))
    runners = {
        "zoo (KV cache)": lambda: run_zoo(model, prompt, args.new_tokens),
        "zoo compiled": lambda: run_zoo(model, prompt, args.new_tokens, compiled=True),
        "HF generate": lambda: run_hf(hf, prompt, args.new_tokens),
    }
    if args.hf_static:
        runners["HF static+compile"] = lambda: run_hf(hf, prompt, args.new_tokens, static=True)
    if args.bf16:  # half the weight bytes a step reads; greedy tokens may part from fp32's, so HF in bf16 too
        half, hf_half = copy.deepcopy(model).to(torch.bfloat16), copy.deepcopy(hf).to(torch.bfloat16)
        runners["zoo compiled bf16"] = lambda: run_zoo(half, prompt, args.new_tokens, compiled=True)
        runners["HF generate bf16"] = lambda: run_hf(hf_half, prompt, args.new_tokens)
    for name, run in list(runners.items()):  # warm-up, and the compilations
        start = time.perf_counter()
        try:
            run()
        except Exception as error:  # HF's static cache may not compile on a CPU: say so and go on
            if name != "HF static+compile":
                raise
            print(f"{name} failed on {torch.device('cpu')}: {type(error).__name__}: {str(error)[:200]}")
            del runners[name]
            continue
        print(f"warm-up {name}: {time.perf_counter() - start:.1f} s")
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    tokens = {}
    for _ in range(args.repeats):
        for name, run in runners.items():
            w, c, tokens[name] = timed(run)
            wall[name].append(w)
            cpu[name].append(c)
    print(f"\ngreedy decoding, batch 1, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats} interleaved runs")
    print("same tokens as HF: " + ", ".join(f"{name} {tokens[name] == tokens['HF generate']}" for name in runners if name != "HF generate"))
    print(f"{'':<18} {'tokens/s':>9} {'ms/token':>9} {'ratio':>7} {'best ratio':>11} {'CPU ms/token':>13} {'CPU ratio':>10}")
    hf_wall, hf_best, hf_cpu = statistics.median(wall["HF generate"]), min(wall["HF generate"]), statistics.median(cpu["HF generate"])
    for name in runners:
        w, best, c = statistics.median(wall[name]), min(wall[name]), statistics.median(cpu[name])
        print(
            f"{name:<18} {args.new_tokens / w:>9.1f} {1000 * w / args.new_tokens:>9.2f} {hf_wall / w:>6.2f}x "
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


#: the variants of the context sweep: (KV heads of 4, window)
VARIANTS = {"mha": (4, None), "gqa 2/4": (2, None), "mqa": (1, None), "window 256": (4, 256)}


def filled_session(model, *, batch: int, context: int, room: int):
    """A session as after prefilling ``context`` tokens per row, its caches filled with random keys
    and values (what they hold does not change the time of a step)."""
    session = model.open_session([[1] * context] * batch, pad_id=0, start_id=0, room=room)
    g = torch.Generator().manual_seed(0)
    for block, layer in zip(model.stack.layers, session.cache):
        k = torch.randn(batch, block.attn.n_kv_heads, context, block.attn.head_dim, generator=g)
        layer.self_attn.update(k, torch.randn(k.shape, generator=g), session.positions[:, :context], None)
    session.fed = context
    return session


def steps_ms(feed, token: torch.Tensor, steps: int) -> tuple[float, torch.Tensor]:
    """Milliseconds per greedy step over ``steps`` steps, and the last token."""
    start = time.perf_counter()
    for _ in range(steps):
        token = feed(token)[:, -1:].argmax(-1)
    return 1000 * (time.perf_counter() - start) / steps, token


def bench_context(args) -> list[dict]:
    """Eager and static + compiled decode steps per variant x batch x context (rows for the table and plot).

    At each batch and context every variant is timed in every round (the order rotating), so a ratio to
    MHA pairs steps taken moments apart: its figure is the median of the rounds' paired ratios."""
    from zoo.generation.static import StaticDecoder

    torch._dynamo.config.cache_size_limit = 256  # one graph per shape family: never fall back to eager silently
    room = 2 + args.rounds * args.steps
    models = {}
    for name, (kv, window) in VARIANTS.items():
        torch.manual_seed(0)
        models[name] = zoo.build(zoo_overrides(n_kv_heads=kv, window=window, max_seq_len=max(args.contexts) + room)).eval()
    rows = []
    print(f"\ndecode steps after a context, {torch.get_num_threads()} thread(s), fp32, cache filled with random keys; "
          f"median of {args.rounds} rounds of {args.steps} steps, every variant and mode in each round")
    print(f"{'variant':<11} {'batch':>5} {'context':>7} {'cache MiB':>9} {'eager ms':>9} {'compiled ms':>11} "
          f"{'eager tok/s':>11} {'compiled tok/s':>14} {'compiled/eager':>14} {'compile s':>9}")
    for batch in args.batches:
        for context in args.contexts:
            feeds, nbytes, compile_s = {}, {}, {}
            with torch.inference_mode():  # the token too: a tensor made outside it would be compiled for apart
                token = torch.ones(batch, 1, dtype=torch.long)
                for name, model in models.items():
                    eager = filled_session(model, batch=batch, context=context, room=room)
                    nbytes[name] = cache_nbytes(eager.cache)
                    start = time.perf_counter()
                    decoder = StaticDecoder(filled_session(model, batch=batch, context=context, room=room), room=room, backend=args.backend)
                    decoder.feed(token), decoder.feed(token)  # compiles (or reuses a graph), then one warm step
                    compile_s[name] = time.perf_counter() - start
                    eager.feed(token), eager.feed(token)
                    feeds[name] = {"eager": eager.feed, "compiled": decoder.feed}
                times = {name: {"eager": [], "compiled": []} for name in models}
                names = list(models)
                for r in range(args.rounds):
                    for name in names[r % len(names) :] + names[: r % len(names)]:
                        for mode, feed in feeds[name].items():
                            times[name][mode].append(steps_ms(feed, token, args.steps)[0])
            del feeds  # the caches of this context, before the next one's
            for name in models:
                e, c = statistics.median(times[name]["eager"]), statistics.median(times[name]["compiled"])
                vs_mha = {mode: statistics.median(m / t for m, t in zip(times["mha"][mode], times[name][mode])) for mode in ("eager", "compiled")}
                row = dict(variant=name, batch=batch, context=context, cache_bytes=nbytes[name], eager_ms=e, compiled_ms=c,
                           compile_s=compile_s[name], eager_vs_mha=vs_mha["eager"], compiled_vs_mha=vs_mha["compiled"])
                rows.append(row)
                print(f"{name:<11} {batch:>5} {context:>7} {nbytes[name] / 2**20:>9.1f} {e:>9.2f} {c:>11.2f} "
                      f"{1000 * batch / e:>11.1f} {1000 * batch / c:>14.1f} {e / c:>13.2f}x {compile_s[name]:>9.1f}", flush=True)
    print_ratios(rows)
    return rows


def print_ratios(rows: list[dict]) -> None:
    """Each variant's speed against MHA's at the same batch and context (the cache-size payoff)."""
    mha = {(r["batch"], r["context"]): r for r in rows if r["variant"] == "mha"}
    print("\nspeed vs MHA at the same batch and context (MHA ms / variant ms, median of the rounds' paired ratios; > 1: faster)")
    print(f"{'variant':<11} {'batch':>5} {'context':>7} {'bytes vs MHA':>12} {'eager':>7} {'compiled':>9}")
    for r in sorted(rows, key=lambda r: (list(VARIANTS).index(r["variant"]), r["batch"], r["context"])):
        if r["variant"] == "mha":
            continue
        base = mha[(r["batch"], r["context"])]
        print(f"{r['variant']:<11} {r['batch']:>5} {r['context']:>7} {r['cache_bytes'] / base['cache_bytes']:>11.3f}x "
              f"{r['eager_vs_mha']:>6.2f}x {r['compiled_vs_mha']:>8.2f}x")


def plot_context(rows: list[dict], path: str) -> None:
    """ms per step against context, one panel per batch; solid compiled, dashed eager."""
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no plot ({path})")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for i, name in enumerate(VARIANTS):
            mine = [r for r in rows if r["variant"] == name and r["batch"] == batch]
            if not mine:
                continue
            x = [r["context"] for r in mine]
            ax.plot(x, [r["compiled_ms"] for r in mine], f"C{i}-o", label=f"{name} compiled")
            ax.plot(x, [r["eager_ms"] for r in mine], f"C{i}--x", label=f"{name} eager")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({r["context"] for r in rows}), [str(c) for c in sorted({r["context"] for r in rows})])
        ax.minorticks_off()
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("ms per decode step")
        ax.set_title(f"batch {batch}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"plot: {path}")


def bench_profile(args) -> None:
    """Where the time of a compiled batch-1 decode step goes: ``torch.profiler``'s self CPU time per
    operator over ``--profile-steps`` steps after a ``--prompt-len`` context, the peers' model (part 1's).
    What the operators do not account for is the step's overhead outside them (the compiled wrapper's
    guards and Python, the session's bookkeeping)."""
    from torch.profiler import ProfilerActivity, profile

    from zoo.generation.static import StaticDecoder

    steps = args.profile_steps
    torch.manual_seed(0)
    model = zoo.build(zoo_overrides(n_kv_heads=args.n_kv_heads)).eval()
    room = 4 + 2 * steps
    token = torch.ones(1, 1, dtype=torch.long)
    with torch.inference_mode():
        decoder = StaticDecoder(filled_session(model, batch=1, context=args.prompt_len, room=room), room=room)
        steps_ms(decoder.feed, token, 4)  # compiles (the first steps may each compile a graph), then warm steps
        plain_ms, _ = steps_ms(decoder.feed, token, steps)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            profiled_ms, _ = steps_ms(decoder.feed, token, steps)
    events = prof.key_averages()
    ops = [e for e in events if e.key.startswith(("aten::", "mkldnn::", "onednn::", "mkl::"))]
    ops_ms = sum(e.self_cpu_time_total for e in ops) / 1000 / steps
    print(f"\nprofile of a compiled decode step, batch 1, context {args.prompt_len}, {steps} steps, {torch.get_num_threads()} thread(s)")
    print(f"step: {plain_ms:.2f} ms unprofiled, {profiled_ms:.2f} ms profiled; in operators (aten/oneDNN self time) "
          f"{ops_ms:.2f} ms ({ops_ms / profiled_ms:.0%}), the rest {profiled_ms - ops_ms:.2f} ms")
    print(f"{'operator':<44} {'calls/step':>10} {'self ms/step':>12} {'share':>6}")
    for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[: args.profile_rows]:
        ms = e.self_cpu_time_total / 1000 / steps
        print(f"{e.key[:44]:<44} {e.count / steps:>10.1f} {ms:>12.3f} {ms / profiled_ms:>6.1%}")
    others = [e for e in events if e not in ops]
    print("\nother profiler events (wrappers: their self time is the overhead around the operators):")
    for e in sorted(others, key=lambda e: -e.self_cpu_time_total)[:6]:
        print(f"{e.key[:44]:<44} {e.count / steps:>10.1f} {e.self_cpu_time_total / 1000 / steps:>12.3f}")


def main(argv: list[str] | None = None) -> list[dict] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (batch-1 decoding gains little from more)")
    parser.add_argument("--n-kv-heads", type=int, default=4, help="KV heads of the speed comparison (4: MHA)")
    parser.add_argument("--window", type=int, default=64, help="window of the rolling-buffer row of the bytes table")
    parser.add_argument("--hf-static", action="store_true", help="also HF generate with its static cache, compiled")
    parser.add_argument("--bf16", action="store_true", help="part 1: also zoo compiled and HF generate with bfloat16 weights and cache")
    parser.add_argument("--skip-speed", action="store_true", help="skip part 1 (zoo vs HF)")
    parser.add_argument("--skip-bytes", action="store_true", help="skip part 2 (cache bytes)")
    parser.add_argument("--skip-context", action="store_true", help="skip part 3 (the context sweep)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=3, help="context sweep: alternating rounds per mode")
    parser.add_argument("--steps", type=int, default=8, help="context sweep: decode steps per round")
    parser.add_argument("--plot", default=None, help="context sweep: write the plot here (PNG)")
    parser.add_argument("--backend", default="inductor", help="context sweep: torch.compile's backend for the static step (eager: traces only, for tests)")
    parser.add_argument("--json", default=None, help="context sweep: write its rows here (JSON)")
    parser.add_argument("--profile", action="store_true", help="part 4: profile the compiled batch-1 step (operators vs overhead)")
    parser.add_argument("--profile-steps", type=int, default=64)
    parser.add_argument("--profile-rows", type=int, default=12)
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 64 new tokens, 3 repeats, contexts 256/4096/8192, 2 rounds of 4 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.new_tokens, args.repeats, args.contexts, args.rounds, args.steps = 64, 3, [256, 4096, 8192], 2, 4
    torch.set_num_threads(args.threads)
    if not args.skip_speed:
        bench_speed(args)
    if not args.skip_bytes:
        bench_bytes(args)
    if not args.skip_context:
        rows = bench_context(args)
        if args.plot:
            plot_context(rows, args.plot)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.profile:
        bench_profile(args)
    return None if args.skip_context else rows


if __name__ == "__main__":
    main()
