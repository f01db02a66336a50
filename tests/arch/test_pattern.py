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


def test_unknown_slot_is_refused():
    with pytest.raises(ConfigError, match=r"model.layers.kinds.a.mixer.*one of \['attention'"):
        LayerPattern(pattern=["a"], kinds={"a": {"mixer": {}}})


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
