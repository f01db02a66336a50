"""Sparse attention patterns (strided, fixed, BigBird): the rule, its gathered kernel against the eager
reference, and whole models (no future leak, cached decoding equals the full forward)."""

import warnings
from dataclasses import replace

import pytest
import torch

import zoo
from zoo.attention import flex as flex_module
from zoo.attention.dense import eager
from zoo.attention.gathered import gathered, sparse
from zoo.attention.kernels import KERNEL_SPECS, auto_kernel
from zoo.attention.mask import Mask
from zoo.attention.sparse import BigBird, Fixed, Strided
from zoo.arch.stack import document_positions
from zoo.errors import ConfigError
from zoo.testing import check_contract

B, H, D = 2, 4, 8
CPU = torch.device("cpu")

#: small patterns, so that a few dozen tokens already leave most pairs out
PATTERNS = {
    "strided": Strided(stride=4),
    "fixed": Fixed(stride=4, summary=1),
    "bigbird": BigBird(window=3, n_global=2, random_blocks=2, block=4, seed=1),
}
#: option name -> overrides that make its pattern bite at the contract's short lengths
SMALL = {
    "strided": ["model.attention.pattern.stride=3"],
    "fixed": ["model.attention.pattern.stride=3", "model.attention.pattern.summary=1"],
    "bigbird": ["model.attention.pattern.window=2", "model.attention.pattern.n_global=1", "model.attention.pattern.block=2"],
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def no_bias(q_pos, k_pos):
    return None


def case(pattern, *, causal: bool, padded: bool, n: int, m: int, seed: int = 0):
    """The last ``n`` of ``m`` tokens as queries; a padded batch is left-padded (positions start at the first token)."""
    torch.manual_seed(seed)
    valid = torch.ones(B, m, dtype=torch.bool)
    if padded:
        valid[1, :9] = False
    k_pos = (valid.cumsum(1) - 1).clamp(min=0)
    mask = Mask(causal=causal, key_valid=valid if padded else None, pattern=pattern)
    q = torch.randn(B, H, n, D, requires_grad=True)
    k, v = (torch.randn(B, 2, m, D, requires_grad=True) for _ in range(2))
    rows = valid[:, m - n :]
    return q, k, v, dict(mask=mask, q_pos=k_pos[:, m - n :], k_pos=k_pos, bias=no_bias, scale=D**-0.5), rows


def assert_matches_eager(kernel, q, k, v, kw, rows) -> None:
    out, ref = kernel(q, k, v, **kw), eager(q, k, v, **kw)
    keep = rows[:, None, :, None].expand_as(ref)  # rows of pure padding are never read
    torch.testing.assert_close(out[keep], ref[keep], atol=2e-5, rtol=1e-4)
    weight = torch.randn_like(ref) * keep
    for got, want in zip(torch.autograd.grad((out * weight).sum(), (q, k, v)), torch.autograd.grad((ref * weight).sum(), (q, k, v))):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


# --- the rule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("name", list(PATTERNS))
def test_candidates_cover_every_visible_key(name, causal):
    pattern, m = PATTERNS[name], 53
    pos = torch.arange(m)
    allowed = Mask(causal=causal, pattern=pattern).allows(pos[None], pos[None])[0]
    cand = pattern.candidates(pos[None], lo=0, hi=m - 1, causal=causal)[0]
    listed = torch.zeros(m, m, dtype=torch.bool)
    dense = pos < pattern.dense_below(causal=causal)
    inside = (cand >= 0) & (cand < m)
    listed[pos[:, None].expand_as(cand)[inside], cand[inside]] = True
    missing = allowed & ~listed & ~dense[:, None]
    assert not missing.any(), f"{name}: visible keys not among the candidates: {missing.nonzero()[:5].tolist()}"
    assert allowed.diagonal().all(), "a query must see itself"
    assert allowed.sum(1).max() <= pattern.keys_per_query(m) * (1 if causal else 2) or dense.any()
    assert allowed.float().mean() < 0.5, "the pattern leaves most pairs out at this length"


@pytest.mark.parametrize("name", list(PATTERNS))
def test_the_rule_does_not_depend_on_the_length(name):
    """What position q sees is the same in a short and a long sequence: decoding extends, never redraws."""
    pattern = PATTERNS[name]
    short, long = torch.arange(20), torch.arange(60)
    mask = Mask(causal=True, pattern=pattern)
    assert torch.equal(mask.allows(short[None], short[None]), mask.allows(long[None], long[None])[:, :20, :20])


def test_strided_parts_split_the_pattern_in_two():
    """The gathered kernel merges the parts' softmaxes: exact only if they are disjoint and cover the pattern."""
    pos = torch.arange(40)
    near, columns = Strided(stride=4).parts()
    a, c = near.allows(pos[:, None], pos[None]), columns.allows(pos[:, None], pos[None])
    assert not (a & c).any() and torch.equal(a | c, Strided(stride=4).allows(pos[:, None], pos[None]))


def test_bigbird_random_blocks_follow_the_seed():
    pos = torch.arange(64)[None]
    rule = lambda seed: Mask(causal=True, pattern=BigBird(window=2, n_global=0, random_blocks=2, block=4, seed=seed)).allows(pos, pos)  # noqa: E731
    assert torch.equal(rule(3), rule(3))
    assert not torch.equal(rule(3), rule(4))


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="model.attention.pattern.stride"):
        Strided(stride=0)
    with pytest.raises(ConfigError, match="model.attention.pattern.summary.*at most the stride"):
        Fixed(stride=4, summary=5)
    with pytest.raises(ConfigError, match="model.attention.pattern.block"):
        BigBird(block=0)


# --- the gathered kernel ----------------------------------------------------------------------------


@pytest.mark.parametrize("padded", [False, True], ids=["full", "left_padded"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("name", list(PATTERNS))
def test_gathered_matches_eager_forward_and_gradients(name, causal, padded):
    q, k, v, kw, rows = case(PATTERNS[name], causal=causal, padded=padded, n=37, m=37)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these positions are the keys' indices: no fallback
        assert_matches_eager(gathered, q, k, v, kw, rows)


@pytest.mark.parametrize("padded", [False, True], ids=["full", "left_padded"])
@pytest.mark.parametrize("name", list(PATTERNS))
def test_gathered_under_a_prefix_matches_eager_without_falling_back(name, padded):
    """A prefix query sees the later prefix keys its pattern allows: gathered from both sides, not dense."""
    for n in (37, 6):  # the whole row, and queries after a cache
        q, k, v, kw, rows = case(PATTERNS[name], causal=True, padded=padded, n=n, m=37)
        kw["mask"] = replace(kw["mask"], prefix_len=torch.tensor([20, 30]))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert_matches_eager(gathered, q, k, v, kw, rows)


@pytest.mark.parametrize(
    "name, arch, inputs",
    [
        ("fixed", "prefix", {"prefix_len": torch.tensor([12, 25])}),
        # packed documents, positions restarting at each one
        ("bigbird", "causal", {"segments": torch.stack([(torch.arange(40) >= 21).long(), (torch.arange(40) >= 7).long() + (torch.arange(40) >= 30).long()])}),
    ],
    ids=["prefix", "packed"],
)
def test_a_model_on_the_sparse_kernel_equals_eager(name, arch, inputs):
    torch.manual_seed(0)
    model = zoo.build([f"model={arch}", f"model/attention={name}", *SMALL[name], "model.dim=32", "model.n_layers=2", "model.vocab_size=64"])
    tokens = torch.randint(0, 64, (2, 40))
    logits = {}
    for kernel in ("eager", "sparse"):
        for layer in model.stack.layers:
            layer.attn.kernel = kernel
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            logits[kernel] = model(tokens, **inputs)
    torch.testing.assert_close(logits["sparse"], logits["eager"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(PATTERNS))
def test_gathered_queries_after_a_cache(name):
    for n in (1, 6):
        q, k, v, kw, rows = case(PATTERNS[name], causal=True, padded=True, n=n, m=41)
        assert_matches_eager(gathered, q, k, v, kw, rows)


def test_gathered_with_a_window_documents_and_a_bias():
    from zoo.pos import ALiBi

    q, k, v, kw, rows = case(PATTERNS["bigbird"], causal=True, padded=False, n=40, m=40)
    segments = (torch.arange(40) >= 23).long().expand(B, -1)
    kw["mask"] = Mask(causal=True, window=9, pattern=PATTERNS["strided"]).within(segments)
    kw["bias"] = ALiBi(H * D, n_heads=H, head_dim=D, max_seq_len=64, causal=True).bias
    assert_matches_eager(gathered, q, k, v, kw, rows)


def packed(pattern, *, causal: bool, n: int = 60):
    """Rows of three documents of other lengths in each row, positions restarting at each one."""
    q, k, v, kw, rows = case(pattern, causal=causal, padded=False, n=n, m=n)
    index = torch.arange(n)
    segments = torch.stack([(index >= 17).long() + (index >= 40).long(), (index >= 9).long() + (index >= 31).long()])
    kw["k_pos"] = kw["q_pos"] = document_positions(segments)
    kw["mask"] = kw["mask"].within(segments)
    return q, k, v, kw, rows


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("name", list(PATTERNS))
def test_gathered_on_packed_documents_matches_eager_without_falling_back(name, causal):
    """Positions restart at each document: a query's candidates name its own document's keys (and
    BigBird's global queries, one pair per document, are computed densely wherever they sit)."""
    q, k, v, kw, rows = packed(PATTERNS[name], causal=causal)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_matches_eager(gathered, q, k, v, kw, rows)


def test_gathered_falls_back_to_sdpa_where_positions_are_not_indices():
    q, k, v, kw, rows = case(PATTERNS["strided"], causal=True, padded=False, n=40, m=40)
    kw["k_pos"] = kw["q_pos"] = (torch.arange(40) * 2).expand(B, -1)  # positions two apart: no offset names a key
    with pytest.warns(UserWarning, match="kernel=sparse"):
        assert_matches_eager(gathered, q, k, v, kw, rows)


def test_gathered_never_builds_a_full_score_matrix():
    q, k, v, kw, rows = case(PATTERNS["fixed"], causal=True, padded=False, n=64, m=64)
    seen = []

    def bias(q_pos, k_pos):
        seen.append(k_pos.shape[-1])
        return None

    kw["bias"] = bias
    gathered(q, k, v, **kw)
    assert seen and max(seen) < 64 // 2, f"a query block scored {max(seen)} of 64 keys"


def test_sparse_kernel_and_auto():
    q, k, v, kw, rows = case(PATTERNS["strided"], causal=True, padded=False, n=64, m=64)
    assert_matches_eager(sparse, q, k, v, kw, rows)
    auto = dict(window=None, device=CPU, dropout=0.0, n=4096, m=4096)
    assert auto_kernel(backward=True, pattern=Strided(stride=64), **auto) == "sparse"
    assert auto_kernel(backward=True, pattern=Strided(stride=64), **{**auto, "n": 100, "m": 100}) == "sdpa"  # short


# --- FlexAttention: the pattern in mask_mod and in the block mask ------------------------------------


def pairs(b: int, n: int, m: int):
    """Broadcastable (b, h, q_idx, kv_idx) index tensors, as FlexAttention's vmap hands them to the mods."""
    return torch.arange(b)[:, None, None, None], torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.arange(n)[:, None], torch.arange(m)


@pytest.mark.parametrize("causal", [True, False, "prefix", "packed"], ids=["causal", "bidirectional", "prefix", "packed"])
@pytest.mark.parametrize("name", list(PATTERNS))
def test_flex_mask_mod_is_the_rule_and_its_tiles_cover_it(name, causal):
    pattern = {  # at a tile's scale: a stride and blocks of whole tiles leave tiles out (a stride below it cannot)
        "strided": Strided(stride=40),
        "fixed": Fixed(stride=256, summary=8),
        "bigbird": BigBird(window=100, n_global=2, random_blocks=1, block=64),
    }[name]
    n = m = 700
    _, _, _, kw, _ = case(pattern, causal=bool(causal), padded=True, n=n, m=m)
    mask, q_pos, k_pos = kw["mask"], kw["q_pos"], kw["k_pos"]
    if causal == "prefix":  # prefix queries see later prefix keys the pattern allows
        mask = replace(mask, prefix_len=torch.tensor([300, 500]))
    if causal == "packed":  # positions restart at each document
        index = torch.arange(n)
        segments = torch.stack([(index >= 250).long() + (index >= 600).long(), (index >= 130).long()])
        mask, q_pos = replace(mask, key_valid=torch.ones(B, m, dtype=torch.bool)).within(segments), document_positions(segments)
        k_pos = q_pos
    seen = flex_module.rule_mod(mask, q_pos, k_pos)(*pairs(B, n, m))[:, 0]
    assert torch.equal(seen, mask.with_keys(None).allows(q_pos, k_pos) & mask.key_valid[:, None])
    assert flex_module.pattern_tiles(mask, q_pos, k_pos) is not None, "every tile computed: the pattern's candidates unused"
    some, every = flex_module.tile_mask(mask, q_pos, k_pos)
    tile = flex_module.BLOCK
    padded = torch.zeros(B, some.shape[1] * tile, some.shape[2] * tile, dtype=torch.bool)
    padded[:, :n, :m] = seen
    visible = padded.unflatten(1, (-1, tile)).unflatten(3, (-1, tile)).any(dim=(2, 4))
    assert not (visible & ~some).any(), "a visible pair in a skipped tile"
    assert not every.any()
    if name != "strided":  # a stride shorter than a tile reaches every tile
        assert not some.all(), "the pattern skips no tile"


@pytest.mark.slow
def test_flex_matches_eager_in_inference():
    """One compilation (~30 s on 2 cores): BigBird, whose rule (a hash per random block) is the hardest to trace."""
    if not KERNEL_SPECS["flex"].available():
        pytest.skip("no torch.nn.attention.flex_attention in this torch")
    q, k, v, kw, rows = case(PATTERNS["bigbird"], causal=True, padded=True, n=40, m=300)
    try:
        with torch.no_grad():
            out = flex_module.flex(q, k, v, **kw)
    except Exception as error:  # no C++ compiler, no AVX2...
        pytest.skip(f"FlexAttention does not compile here: {type(error).__name__}: {error}")
    keep = rows[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[keep], eager(q, k, v, **kw).detach()[keep], atol=2e-5, rtol=1e-4)


# --- whole models ---------------------------------------------------------------------------------


def test_cost_counts_the_keys_a_pattern_lets_a_query_see():
    sizes = ["model.dim=32", "model.n_layers=2", "model.vocab_size=64"]
    dense, strided = zoo.build(sizes), zoo.build([*sizes, "model/attention=strided", "model.attention.pattern.stride=16"])
    n = 1024
    ratio = strided.flops(seq_len=n).attn_scores / dense.flops(seq_len=n).attn_scores
    assert ratio == Strided(stride=16).keys_per_query(n) / n  # 16 near keys and 64 columns of 1024
    # the cache keeps every key: the pattern picks among them
    assert [r["kv_cache_bytes"] for r in strided.layer_costs(seq_len=n)] == [r["kv_cache_bytes"] for r in dense.layer_costs(seq_len=n)]


@pytest.mark.parametrize("name", list(PATTERNS))
def test_contract_with_a_pattern_that_bites(name):
    """The contract (no future leak, cached decoding equals the full forward...) where the pattern leaves keys out."""
    check_contract([f"model/attention={name}", *SMALL[name]])


@pytest.mark.parametrize("name", list(PATTERNS))
def test_model_kernels_agree_and_decoding_equals_the_full_forward(name):
    torch.manual_seed(0)
    model = zoo.build([f"model/attention={name}", *SMALL[name], "model.dim=32", "model.n_layers=2", "model.vocab_size=64"])
    tokens = torch.randint(0, 64, (2, 40))
    results = {}
    for kernel in ("eager", "sparse"):
        for layer in model.stack.layers:
            layer.attn.kernel = kernel
        model.zero_grad()
        logits = model(tokens)
        logits.square().mean().backward()
        results[kernel] = logits, [p.grad.clone() for p in model.parameters()]
    torch.testing.assert_close(results["sparse"][0], results["eager"][0], atol=1e-5, rtol=1e-4)
    for got, want in zip(results["sparse"][1], results["eager"][1]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # prefill 30 tokens through the sparse kernel, then decode one at a time
        cache = model.new_cache()
        steps = [model(tokens[:, :30], cache=cache)] + [model(tokens[:, t : t + 1], cache=cache) for t in range(30, 40)]
    torch.testing.assert_close(torch.cat(steps, dim=1), results["eager"][0].detach(), atol=1e-5, rtol=1e-4)
