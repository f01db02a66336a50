"""The scripts in benchmarks/ run end to end at tiny sizes (what they print is not asserted: speeds never are)."""

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_optim_times_every_adamw_variant():
    ms = script("bench_optim").main(["--rounds", "1", "--threads", "1"])
    assert set(ms) == {"loop", "foreach", "fused"} and all(v > 0 for v in ms.values())


def test_bench_moe_trains_the_moe_and_its_dense_ceiling():
    speed = script("bench_moe").main(["--peers", "zoo", "dense", "--seq-len", "16", "--batch", "2", "--rounds", "1", "--steps", "1", "--warmup", "0", "--threads", "1"])
    assert set(speed) == {"zoo", "dense"} and all(v > 0 for v in speed.values())


def test_bench_peers_profiles_the_step_it_times(capsys):
    """A compiled peer's profiled step has its loss in the compiled graph, as the timed one does:
    no eager log-softmax in its operators, but a fused kernel of its own row that computes it."""
    import torch

    bench_peers = script("bench_peers")
    tiny = bench_peers.peers.LlamaShape(vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=48, batch=2, seq_len=16)
    bench_peers.profile(["zoo", "zoo-compile"], tiny, device=torch.device("cpu"), steps=1, rows=-1)
    eager, compiled = capsys.readouterr().out.split("## zoo-compile")
    assert "aten::_log_softmax" in eager and "aten::_log_softmax" not in compiled and "CompiledFxGraph" in compiled
    assert "cpp_fused__log_softmax" in compiled


def test_bench_malloc_pairs_fresh_processes():
    ratios = script("bench_malloc").main(["--pairs", "1", "--steps", "1", "--batch", "2", "--seq-len", "16", "--threads", "1"])
    assert set(ratios) == {"train_tokens_per_s", "prefill_tokens_per_s"} and all(v > 0 for v in ratios.values())


def test_bench_mixers_times_every_variant_against_full_attention():
    out = script("bench_mixers").main(["--seqs", "64", "--rounds", "1", "--threads", "1", "--variants", "retention", "based", "bigbird"])
    assert set(out[64]) == {"mha", "retention", "based", "bigbird"} and all(v > 0 for v in out[64].values())
    prefix = script("bench_mixers").main(["--seqs", "64", "--rounds", "1", "--threads", "1", "--prefix"])
    assert set(prefix[64]) == {"mha", "strided", "fixed", "bigbird"} and all(v > 0 for v in prefix[64].values())
    packed = script("bench_mixers").main(["--seqs", "64", "--rounds", "1", "--threads", "1", "--documents", "3", "--variants", "mamba2", "strided"])
    assert set(packed[64]) == {"mha", "mamba2", "strided"} and all(v > 0 for v in packed[64].values())
    segments = script("bench_mixers").packed_segments(64, 3)
    assert segments.shape == (1, 64) and segments.unique().tolist() == [0, 1, 2]


def test_bench_mla_times_both_forms_of_a_decode_step():
    out = script("bench_mla").main(["--context", "16", "--steps", "1", "--rounds", "1", "--threads", "1"])
    assert set(out[16]) == {"expanded", "absorbed"} and all(v > 0 for v in out[16].values())


def test_bench_decode_sweeps_every_variant_against_mha(tmp_path):
    """The context sweep times every variant at each batch and context, pairs each with MHA, and
    writes its rows (the step traced by dynamo without generating code, to stay quick)."""
    import json

    rows = script("bench_decode").main(
        ["--skip-speed", "--skip-bytes", "--contexts", "8", "--batches", "2", "--rounds", "1", "--steps", "1",
         "--backend", "eager", "--json", str(tmp_path / "rows.json")]
    )  # fmt: skip
    assert [r["variant"] for r in rows] == ["mha", "gqa 2/4", "mqa", "window 256"]
    assert all(r["eager_ms"] > 0 and r["compiled_ms"] > 0 for r in rows)
    mha = rows[0]
    assert mha["eager_vs_mha"] == mha["compiled_vs_mha"] == 1.0
    assert [r["cache_bytes"] / mha["cache_bytes"] for r in rows[1:3]] == [0.5, 0.25]
    assert json.loads((tmp_path / "rows.json").read_text()) == rows


def test_init_gradients_reports_every_projection_of_each_composition(capsys):
    found = script("init_gradients").main(["model/norm=rmsnorm", "model/ffn=gelu model.n_layers=1", "--batch", "2", "--length", "8"])
    assert set(found["model/norm=rmsnorm"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert set(found["model/ffn=gelu model.n_layers=1"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"}
    assert all(v > 0 for row in found.values() for v in row.values())
    assert "| model/norm=rmsnorm |" in capsys.readouterr().out


def test_attention_sinks_recomputes_weights_that_are_a_causal_distribution():
    import torch

    from zoo.testing import build_tiny

    attention_weights = script("attention_sinks").attention_weights
    tokens = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    for options, has_sinks in ((["model/attention=sinks"], True), ([], False)):
        model = build_tiny([*options, "model.vocab_size=64"], seed=0).eval()
        if has_sinks:
            with torch.no_grad():
                for layer in model.stack.layers:
                    layer.attn.sinks.fill_(1.0)
        before = model(tokens)
        found = attention_weights(model, tokens)
        assert len(found) == len(model.stack.layers)
        torch.testing.assert_close(model(tokens), before)  # the layers are left as they were
        for w in found:
            torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
            assert not w[..., :-1].triu(1).any(), "no weight on later tokens"
            assert (w[..., -1] > 0).all() if has_sinks else not w[..., -1].any()
