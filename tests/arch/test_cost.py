"""The model's cost counter (zoo.arch.cost) against a hand count and against torch's own FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from zoo.arch.cost import training_flops_per_token
from zoo.testing import build_tiny


def counted(model, *args) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as mode:
        model(*args)
    return mode.get_total_flops()


def test_matches_a_hand_count():
    n, dim, layers, heads, vocab = 12, 32, 2, 4, 61
    model = build_tiny(["model/ffn=swiglu", "model.ffn.hidden_dim=40"])
    per_layer = 2 * n * 4 * dim * dim + 4 * n * n * heads * (dim // heads) + 2 * n * 3 * dim * 40
    flops = model.flops(seq_len=n)
    assert flops.attn_proj == layers * 2 * n * 4 * dim * dim
    assert flops.attn_scores == layers * 4 * n * n * dim
    assert flops.ffn == layers * 2 * n * 3 * dim * 40
    assert flops.lm_head == 2 * n * dim * vocab
    assert flops.total == layers * per_layer + 2 * n * dim * vocab
    assert flops.per_token()["total"] == flops.total / n
    assert training_flops_per_token(model, seq_len=n) == 3 * flops.total / n


@pytest.mark.parametrize(
    "overrides",
    [
        ["model/attention=mha"],
        ["model/attention=gqa", "model/ffn=gelu"],
        ["model/attention=mqa", "model/pos=alibi"],
        ["model=prefix"],
    ],
    ids=["mha", "gqa-gelu", "mqa-alibi", "prefix"],
)
def test_matches_torch_flop_counter_with_eager_attention(overrides):
    # FlopCounterMode does not count CPU's fused SDPA kernel; the eager kernel's einsums it does count
    model = build_tiny([*overrides, "model.attention.kernel=eager"])
    tokens = torch.randint(0, model.vocab_size, (2, 16))
    kwargs = {"prefix_len": torch.tensor([3, 5])} if model.arch == "prefix" else {}
    with torch.no_grad(), FlopCounterMode(display=False) as mode:
        model(tokens, **kwargs)
    ours = 2 * model.flops(seq_len=16).total
    assert ours == pytest.approx(mode.get_total_flops(), rel=0.02)


def test_matmul_flops_match_torch_with_sdpa():
    model = build_tiny(["model.attention.kernel=sdpa"])
    flops = model.flops(seq_len=16)
    assert flops.total - flops.attn_scores == pytest.approx(counted(model, torch.randint(0, 61, (1, 16))), rel=0.02)


def test_encoder_decoder_counts_cross_attention():
    model = build_tiny(["model=encdec", "model.attention.kernel=eager", "+model.cross_attention.kernel=eager"])
    src, tgt = torch.randint(0, 61, (1, 10)), torch.randint(0, 61, (1, 6))
    flops = model.flops(seq_len=6, src_len=10)
    assert flops.tokens == 16
    assert flops.total == pytest.approx(counted(model, src, tgt), rel=0.02)


def test_sliding_window_counts_only_the_window():
    full = build_tiny(["model/attention=mha"]).flops(seq_len=32)
    windowed = build_tiny(["model/attention=sliding_window", "model.attention.window=8"]).flops(seq_len=32)
    assert windowed.attn_scores == full.attn_scores * 8 / 32
    assert windowed.attn_proj == full.attn_proj


def test_moe_counts_active_experts():
    model = build_tiny(["model/ffn=moe", "model.ffn.n_experts=4", "model.ffn.router.top_k=2", "model.attention.kernel=eager"])
    counts = model.param_counts()
    moe = model.stack.layers[0].ffn
    per_expert = sum(p.numel() for p in moe.experts[0].parameters())
    assert counts["params"] - counts["active_params"] == 2 * len(model.stack.layers) * per_expert
    for layer in model.stack.layers:
        # each expert module on its own tokens, which torch's counter sees whole (its batched and
        # grouped-matmul fast paths pad rows or use kernels the counter does not know)
        layer.ffn.grouped = False
    assert 2 * model.flops(seq_len=16).total == pytest.approx(counted(model, torch.randint(0, 61, (2, 16))), rel=0.02)


def test_tied_embedding_counted_once():
    tied = build_tiny(["model.tie_embeddings=true"]).param_counts()
    untied = build_tiny(["model.tie_embeddings=false"]).param_counts()
    assert untied["params"] - tied["params"] == 61 * 32
    assert untied["embedding_params"] == 2 * tied["embedding_params"]


def test_sliding_window_matches_a_hand_count():
    n, dim, layers, window, vocab = 32, 32, 2, 8, 61
    model = build_tiny(["model/attention=sliding_window", f"model.attention.window={window}", "model/ffn=swiglu", "model.ffn.hidden_dim=40"])
    flops = model.flops(seq_len=n)
    # each query scores `window` keys, not n
    assert flops.attn_scores == layers * 4 * n * window * dim
    assert flops.attn_proj == layers * 2 * n * 4 * dim * dim
    assert flops.ffn == layers * 2 * n * 3 * dim * 40
    assert flops.lm_head == 2 * n * dim * vocab
    assert training_flops_per_token(model, seq_len=n) == 3 * flops.total / n


def test_moe_matches_a_hand_count():
    n, dim, layers, experts, top_k, hidden, vocab = 16, 32, 2, 4, 2, 24, 61
    model = build_tiny(
        ["model/ffn=moe", f"model.ffn.n_experts={experts}", f"model.ffn.router.top_k={top_k}", f"model.ffn.expert.hidden_dim={hidden}"]
    )
    flops = model.flops(seq_len=n)
    # the router's (dim, experts) projection, and top_k of the experts' three (dim, hidden) matrices
    assert flops.ffn == layers * 2 * n * (dim * experts + top_k * 3 * dim * hidden)
    assert flops.attn_scores == layers * 4 * n * n * dim
    counts = model.param_counts()
    expert = 3 * dim * hidden
    assert counts["params"] - counts["active_params"] == layers * (experts - top_k) * expert
    assert training_flops_per_token(model, seq_len=n) == 3 * (flops.attn_proj + flops.attn_scores + flops.ffn + 2 * n * dim * vocab) / n


@pytest.mark.parametrize(
    "overrides",
    [
        ["model/attention=mha"],
        ["model/attention=sliding_window", "model.attention.window=4"],
        ["model/attention=mla"],  # decodes in the absorbed form
        ["model/attention=mla", "model.attention.absorb=false"],  # up-projects every cached latent again
    ],
    ids=["mha", "window", "mla", "mla-expanded"],
)
def test_a_decoding_step_matches_torch_flop_counter(overrides):
    """The per-layer decode column of ``layer_costs`` (shown by ``zoo-info --cost``) against one real step."""
    from zoo.attention.cache import prepare_cache

    model = build_tiny([*overrides, "model.attention.kernel=eager"]).eval()  # FlopCounterMode does not count CPU's SDPA
    n = 12
    tokens = torch.randint(0, model.vocab_size, (1, n))
    with torch.no_grad():
        cache = prepare_cache(model.new_cache(), max_len=n)
        model(tokens[:, :-1], cache=cache)
        with FlopCounterMode(display=False) as mode:
            model(tokens[:, -1:], cache=cache)
    ours = sum(row["decode_flops"] for row in model.layer_costs(seq_len=n)) + 2 * model.lm_head.weight.numel()
    assert ours == pytest.approx(mode.get_total_flops(), rel=0.02)


@pytest.mark.parametrize(("attention", "takes"), [("mha", True), ("retention", True), ("performer", True), ("based", False), ("mamba2", False)])
def test_the_pos_column_names_the_scheme_only_where_the_mixer_takes_positions(attention, takes):
    model = build_tiny([f"model/attention={attention}"]).eval()
    assert {r["pos"] for r in model.layer_costs(seq_len=12)} == {"RoPE" if takes else "none (mixer)"}
    # what the column says is what the layer does: stretched positions (other distances for RoPE) move
    # the logits only of a model whose mixers take them
    tokens = torch.randint(0, model.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        moved = not torch.allclose(model(tokens), model(tokens, positions=3 * torch.arange(12)[None]), atol=1e-6)
    assert moved == takes


def test_a_hybrid_stack_names_the_scheme_per_layer():
    rows = build_tiny(["model/layers=based_hybrid", "model.n_layers=4"]).layer_costs(seq_len=12)
    assert [r["pos"] for r in rows] == ["none (mixer)", "RoPE", "none (mixer)", "RoPE"]
