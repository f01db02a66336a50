"""Per-layer patterns (zoo/arch/pattern.py): cached decoding, per-layer caches and costs, equivalences."""

import pytest
import torch

from zoo.arch.cost import kv_cache_bytes
from zoo.arch.pattern import LayerPattern
from zoo.attention.cache import KVCache, prepare_cache
from zoo.config import group_options
from zoo.errors import ConfigError
from zoo.testing import build_tiny

#: long enough that a local layer's window (8) is exceeded many times over while decoding
LONG = ["model.n_layers=12", "model.max_seq_len=64"]
PROMPT, TOTAL = 20, 40


def small_windows(option: str) -> list[str]:
    """Shrink the pattern's local windows to 8 tokens, so a short test runs past them."""
    if option == "based_hybrid":
        return ["model.layers.kinds.window.attention.window=8"]
    return ["model.layers.kinds.local.attention.window=8"] if option.startswith("local_global") else []


@pytest.mark.parametrize("option", group_options("model/layers"))
def test_cached_decoding_equals_full_forward(option):
    model = build_tiny([f"model/layers={option}", *LONG, *small_windows(option)]).eval()
    tokens = torch.randint(0, model.vocab_size, (2, TOTAL), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache()
        steps = [model(tokens[:, :PROMPT], cache=cache)]
        steps += [model(tokens[:, t : t + 1], cache=cache) for t in range(PROMPT, TOTAL)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
    # each layer's cache is sized by its own attention: a ring of `window` keys, or every key, or (a
    # recurrent mixer, linear attention's sums) a state of the size its cost reports, whatever the length
    for layer, layer_cache in zip(model.stack.layers, cache):
        if not isinstance(layer_cache.self_attn, KVCache):
            assert layer_cache.self_attn.nbytes() == tokens.shape[0] * kv_cache_bytes(layer.attn, TOTAL)
            continue
        window, capacity = layer.attn.window, layer_cache.self_attn.capacity
        assert capacity == window if window else capacity >= TOTAL


def test_local_global_caches_rings_only_in_local_layers():
    model = build_tiny(["model/layers=local_global_5to1", *LONG, *small_windows("local_global")]).eval()
    with torch.no_grad():
        cache = model.new_cache()
        model(torch.zeros(1, TOTAL, dtype=torch.long), cache=cache)
    kinds = model.stack.layer_kinds()
    assert kinds[:6] == ["local"] * 5 + ["global"] and kinds[6:] == kinds[:6]
    assert [c.self_attn.capacity for c in cache] == [8 if k == "local" else TOTAL for k in kinds]


# A pattern of one kind is the plain option that kind stands for: same weights from one seed, same outputs.
ONE_KIND = [
    (
        ["model/layers=local_global_5to1", "model.layers.pattern=[local]", "model.layers.kinds.local.attention.window=8"],
        ["model/attention=sliding_window", "model.attention.window=8"],
    ),
    (["model/layers=moe_every_other", "model.layers.pattern=[moe]"], ["model/ffn=moe"]),
    (["model/layers=nope_every_fourth", "model.layers.pattern=[nope]"], ["model/pos=none"]),
]


@pytest.mark.parametrize(("pattern", "plain"), ONE_KIND)
def test_one_kind_pattern_equals_the_plain_option(pattern, plain):
    a, b = build_tiny([*pattern, *LONG], seed=5).eval(), build_tiny([*plain, *LONG], seed=5).eval()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    tokens = torch.randint(0, a.vocab_size, (2, TOTAL), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(a(tokens), b(tokens))
    assert not torch.equal(a(tokens), build_tiny([*LONG], seed=5).eval()(tokens))  # the kind did change the model


def test_nope_layers_drop_positions_only_where_the_pattern_says():
    model = build_tiny(["model/layers=nope_every_fourth", *LONG])
    rows = model.layer_costs(seq_len=16)
    assert [r["pos"] for r in rows[:4]] == ["RoPE", "RoPE", "RoPE", "NoPositions"]


def test_layer_costs_add_up_and_match_the_cache():
    model = build_tiny(["model/layers=local_global_5to1", *LONG, *small_windows("local_global")]).eval()
    rows = model.layer_costs(seq_len=TOTAL)
    flops = model.flops(seq_len=TOTAL)
    assert sum(r["flops_per_token"] for r in rows) == pytest.approx((flops.total - flops.lm_head) / TOTAL)
    assert rows[0]["flops_per_token"] < rows[5]["flops_per_token"]  # a local layer scores fewer keys
    cache = prepare_cache(model.new_cache(), max_len=TOTAL)
    with torch.no_grad():
        model(torch.zeros(1, TOTAL, dtype=torch.long), cache=cache)
    assert [r["kv_cache_bytes"] for r in rows] == [c.nbytes() for c in cache]


def test_unknown_kind_is_refused():
    with pytest.raises(ConfigError, match=r"model.layers.pattern.*middle.*\['global', 'local'\]"):
        build_tiny(["model/layers=local_global_1to1", "model.layers.pattern=[local,middle]"])


def test_unknown_slot_is_refused_under_the_key_the_pattern_sits_at():
    pattern = LayerPattern(pattern=["a"], kinds={"a": {"mixer": {}}})
    with pytest.raises(ConfigError, match=r"^model.layers.kinds.a.mixer=.*one of \['attention'"):
        pattern.check()
    with pytest.raises(ConfigError, match=r"^model.decoder_layers.kinds.a.mixer=.*one of \['attention'"):
        pattern.check(key="model.decoder_layers")


def test_a_setting_the_slot_does_not_take_is_one_line():
    # a window on a recurrent mixer's layers: refused naming the key, not a TypeError at build
    with pytest.raises(ConfigError, match=r"model.layers.kinds.local.attention.window=8: a setting SelectiveSSM takes"):
        build_tiny(["model/attention=mamba2", "model/layers=local_global_1to1", "model.layers.kinds.local.attention.window=8"])


def test_additive_positions_per_kind_are_refused():
    with pytest.raises(ConfigError, match=r"model.layers.kinds.nope.pos.*once per stack"):
        build_tiny(["model/layers=nope_every_fourth", "model/pos@model.layers.kinds.nope.pos=learned"])


def test_export_refuses_a_pattern():
    from zoo.config import compose
    from zoo.hf import save_pretrained

    cfg = compose(["model/layers=local_global_1to1", "model.n_layers=2", "model.dim=32", "model.n_heads=4"])
    model = build_tiny(["model/layers=local_global_1to1"])
    with pytest.raises(ConfigError, match=r"model.layers.pattern.*model/layers=uniform"):
        save_pretrained(model, "/nonexistent/never-written", config=cfg)


# -- encoder-decoder: a pattern for both stacks (model.layers) or the decoder's own (model.decoder_layers)

#: a pattern in both stacks, in the encoder only (the decoder's own is uniform), in the decoder only
ENCDEC = {
    "both": ["model/layers=local_global_1to1", "model.layers.pattern=[local,local,global]", "model.layers.kinds.local.attention.window=4"],
    "encoder": [
        "model/layers=local_global_1to1", "model.layers.kinds.local.attention.window=4", "model/layers@model.decoder_layers=uniform",
    ],
    "decoder": ["model/layers@model.decoder_layers=local_global_5to1", "model.decoder_layers.kinds.local.attention.window=4"],
}  # fmt: skip
ENCDEC_SIZES = ["model=encdec", "model.n_layers=3", "model.n_decoder_layers=7", "model.max_seq_len=64"]


def windows(stack) -> list[int | None]:
    return [layer.attn.window for layer in stack.layers]


@pytest.mark.parametrize("where", sorted(ENCDEC))
def test_encdec_pattern_changes_the_layers_it_says(where):
    """The stack a pattern names gets its windows; the other stack is built and computes as without it."""
    model = build_tiny([*ENCDEC_SIZES, *ENCDEC[where]], seed=2).eval()
    plain = build_tiny(ENCDEC_SIZES, seed=2).eval()
    expected = {
        "both": ([4, 4, None], [4, 4, None, 4, 4, None, 4]),
        "encoder": ([4, None, 4], [None] * 7),
        "decoder": ([None] * 3, [4] * 5 + [None, 4]),
    }[where]
    assert (windows(model.encoder), windows(model.decoder)) == expected
    assert all(layer.cross_attn.window is None for layer in model.decoder.layers)  # a kind's window is its self-attention's
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), f"a window changed the weights at {name}"
    src, tgt = (torch.randint(0, model.vocab_size, (2, 24), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    with torch.no_grad():
        same_encoder = torch.equal(model.encode(src), plain.encode(src))
        assert same_encoder == (where == "decoder")
        memory = plain.encode(src)  # the decoders read the same memory, so only their own layers differ
        same_decoder = torch.equal(model.decode(tgt, memory), plain.decode(tgt, memory))
        assert same_decoder == (where == "encoder")


@pytest.mark.parametrize("where", sorted(ENCDEC))
def test_encdec_cached_decoding_equals_full_forward(where):
    """The decoder decodes token by token, its local layers past their window, as the full forward does;
    each decoder layer's self-attention cache is sized by its own window."""
    model = build_tiny([*ENCDEC_SIZES, *ENCDEC[where]]).eval()
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randint(0, model.vocab_size, (2, 18), generator=g), torch.randint(0, model.vocab_size, (2, 20), generator=g)
    with torch.no_grad():
        full = model(src, tgt)
        memory = model.encode(src)
        cache = model.new_cache()
        steps = [model.decode(tgt[:, :6], memory, cache=cache)]
        steps += [model.decode(tgt[:, t : t + 1], memory, cache=cache) for t in range(6, 20)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
    assert [c.self_attn.capacity for c in cache] == [w or c.self_attn.capacity for w, c in zip(windows(model.decoder), cache)]
    assert [c.self_attn.capacity >= 20 for c in cache] == [w is None for w in windows(model.decoder)]


def test_encdec_layer_costs_follow_each_stacks_pattern():
    decoder = ["model/layers@model.decoder_layers=local_global_5to1", "model.decoder_layers.kinds.local.attention.window=8"]
    model = build_tiny([*ENCDEC_SIZES, *ENCDEC["both"], *decoder]).eval()
    rows = model.layer_costs(seq_len=32)
    assert [r["layer"] for r in rows] == [f"enc{i}" for i in range(3)] + [f"dec{i}" for i in range(7)]
    assert [r["kind"] for r in rows] == ["local", "local", "global"] + ["local"] * 5 + ["global", "local"]
    assert [r["window"] for r in rows[:3]] == [4, 4, None] and rows[3]["window"] == 8 and rows[8]["window"] is None
    # an encoder's local layer scores the 2 * 4 - 1 keys its window reaches both ways, a global one all 32
    global_minus_local = 4 * 4 * (32 // 4) * (32 - 7)  # 4 n_heads head_dim per pair, 25 pairs fewer per token
    assert rows[2]["flops_per_token"] - rows[0]["flops_per_token"] == global_minus_local
    assert rows[8]["flops_per_token"] - rows[3]["flops_per_token"] == 4 * 4 * 8 * (32 - 8)  # the decoder's reach one way
    # a decoder layer caches its own keys (a ring of 8, or all 32) and the memory's (32) for cross-attention
    assert rows[3]["kv_cache_bytes"] * (32 + 32) == rows[8]["kv_cache_bytes"] * (8 + 32)
    flops = model.flops(seq_len=32)
    assert sum(r["flops_per_token"] * 32 for r in rows) == pytest.approx(flops.total - flops.lm_head)


def test_an_encoder_refuses_a_left_to_right_mixer_naming_the_kind():
    overrides = ["model=encdec", "model/pos=rope", "model/layers=hybrid_mamba2_1to1"]
    with pytest.raises(ConfigError, match=r"^model.layers.kinds.ssm.attention='mamba2': reads tokens left to right.*decoder_layers"):
        build_tiny(overrides)
    with pytest.raises(ConfigError, match=r"^model.layers.kinds.nope.pos='NoPositions'"):
        build_tiny(["model=encdec", "model/layers=nope_every_fourth"])
    # the decoder's own pattern may hold it
    model = build_tiny(["model=encdec", "model/pos=rope", "model/layers@model.decoder_layers=hybrid_mamba2_1to1"])
    assert [type(layer.attn).__name__ for layer in model.decoder.layers] == ["SelectiveSSM", "Attention"]


def test_a_decoder_pattern_error_names_model_decoder_layers():
    with pytest.raises(ConfigError, match=r"^model.decoder_layers.kinds.local.attention.size=8: a setting"):
        build_tiny(["model=encdec", "model/layers@model.decoder_layers=local_global_1to1", "+model.decoder_layers.kinds.local.attention.size=8"])
