"""Every attention kernel against the eager reference, for every mask, bias, head grouping and length.

Rows of pure padding (a query whose own token is padding) are left out of the comparisons: their
output is never read, and the fast kernels fill them differently (see ``zoo.attention.local``).
"""

import re
import warnings
from dataclasses import replace
from functools import partial
from importlib.resources import files

import pytest
import torch

import zoo
from zoo.attention import Attention
from zoo.attention import flex as flex_module
from zoo.attention.kernels import (
    CPU_INFERENCE_KERNEL,
    KERNEL_CHOICES,
    KERNEL_SPECS,
    auto_kernel,
    eager,
    local,
    pick_kernel,
    sdpa,
)
from zoo.arch.stack import document_positions
from zoo.attention.local import default_block
from zoo.attention.mask import Mask
from zoo.errors import ConfigError
from zoo.pos import ALiBi, T5RelativeBias

B, H, D, WINDOW = 2, 4, 8, 16  # default_block(16) == 16: lengths 64 and 70 are and are not block multiples
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second thread only waits for the first on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def left_padding(m: int) -> torch.Tensor:
    valid = torch.ones(B, m, dtype=torch.bool)
    valid[1, :9] = False
    return valid


def right_padding(m: int) -> torch.Tensor:
    valid = torch.ones(B, m, dtype=torch.bool)
    valid[0, -7:] = False
    return valid


def packed(m: int) -> torch.Tensor:
    """Document ids ``(B, m)`` of packed rows: three documents, then two, of uneven lengths."""
    segments = torch.zeros(B, m, dtype=torch.long)
    for row, starts in enumerate(([17, m * 2 // 3], [m // 2 + 3])):
        for start in starts:
            segments[row, start:] += 1
    return segments


#: name -> the mask for m keys (left padding gets positions that start at the first real token, as in generation)
MASKS = {
    "causal": lambda m: Mask(causal=True),
    "prefix": lambda m: Mask(causal=True, prefix_len=torch.tensor([5, 23])),
    "bidirectional": lambda m: Mask(),
    "padding": lambda m: Mask(causal=True, key_valid=left_padding(m)),
    "bidirectional_padding": lambda m: Mask(key_valid=right_padding(m)),
    "window": lambda m: Mask(causal=True, window=WINDOW),
    "window_bidirectional": lambda m: Mask(window=WINDOW),
    "window_prefix": lambda m: Mask(causal=True, window=WINDOW, prefix_len=torch.tensor([5, 40])),
    "window_padding": lambda m: Mask(causal=True, window=WINDOW, key_valid=left_padding(m)),
    "window_bidirectional_padding": lambda m: Mask(window=WINDOW, key_valid=right_padding(m)),
    "documents": lambda m: Mask(causal=True).within(packed(m)),
    "bidirectional_documents": lambda m: Mask().within(packed(m)),
    "window_documents": lambda m: Mask(causal=True, window=WINDOW).within(packed(m)),
    "window_bidirectional_documents": lambda m: Mask(window=WINDOW).within(packed(m)),
    "prefix_documents": lambda m: Mask(causal=True, prefix_len=torch.tensor([5, 40])).within(packed(m)),
}


def no_bias(q_pos, k_pos):
    return None


def make_bias(name: str, causal: bool):
    if name == "none":
        return no_bias, None
    scheme = {"alibi": ALiBi, "t5": T5RelativeBias}[name](H * D, n_heads=H, head_dim=D, max_seq_len=512, causal=causal)
    if name == "t5":
        torch.nn.init.normal_(scheme.relative_attention_bias.weight)  # large enough to matter
    return scheme.bias, scheme


def case(mask_name: str, *, n: int, m: int, kv_heads: int, seed: int = 0, d: int = D):
    """Inputs for queries that are the last ``n`` of ``m`` keys (self-attention after a cache of ``m - n``),
    heads ``d`` channels wide."""
    torch.manual_seed(seed)
    mask = MASKS[mask_name](m)
    q = torch.randn(B, H, n, d, requires_grad=True)
    k, v = (torch.randn(B, kv_heads, m, d, requires_grad=True) for _ in range(2))
    k_pos = torch.arange(m).expand(B, m)
    if mask.key_valid is not None and not mask.key_valid[:, 0].all():  # left padding: positions start at the first token
        k_pos = (mask.key_valid.cumsum(1) - 1).clamp(min=0)
    if mask.k_segment is not None:  # packed documents: positions restart at each (a prefix is the row's)
        k_pos = k_pos if mask.prefix_len is not None else document_positions(mask.k_segment)
        mask = replace(mask, q_segment=mask.k_segment[:, m - n :])
    q_pos = k_pos[:, m - n :]
    rows = torch.ones(B, n, dtype=torch.bool) if mask.key_valid is None else mask.key_valid[:, m - n :]
    return q, k, v, dict(mask=mask, q_pos=q_pos, k_pos=k_pos, scale=d**-0.5), rows


def assert_matches_eager(kernel, q, k, v, kw, rows, *, bias, scheme, grads: bool = True) -> None:
    out, ref = kernel(q, k, v, bias=bias, **kw), eager(q, k, v, bias=bias, **kw)
    keep = rows[:, None, :, None].expand_as(ref)
    torch.testing.assert_close(out[keep], ref[keep], atol=2e-5, rtol=1e-4)
    if not grads:
        return
    weight = torch.randn_like(ref) * keep  # a loss that reads only real rows, as a model's does
    params = [q, k, v] + ([] if scheme is None else [p for p in scheme.parameters()])
    got = torch.autograd.grad((out * weight).sum(), params)
    want = torch.autograd.grad((ref * weight).sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("bias_name", ["none", "alibi", "t5"])
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("kernel", [sdpa, local], ids=["sdpa", "local"])
def test_kernel_matches_eager_forward_and_gradients(kernel, mask_name, bias_name):
    n = 70  # not a multiple of the block
    q, k, v, kw, rows = case(mask_name, n=n, m=n, kv_heads=2)
    bias, scheme = make_bias(bias_name, kw["mask"].causal)
    assert_matches_eager(kernel, q, k, v, kw, rows, bias=bias, scheme=scheme)


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("n", [64, 70, 97], ids=["block_multiple", "not_multiple", "odd"])
@pytest.mark.parametrize("mask_name", ["window", "window_bidirectional", "window_prefix", "window_padding", "window_documents"])
def test_local_at_every_length_and_head_grouping(mask_name, n, kv_heads):
    assert default_block(WINDOW) == 16 and n > 2 * 16  # the blocked path runs, not its SDPA fallback
    q, k, v, kw, rows = case(mask_name, n=n, m=n, kv_heads=kv_heads, seed=n)
    bias, scheme = make_bias("alibi", kw["mask"].causal)
    assert_matches_eager(local, q, k, v, kw, rows, bias=bias, scheme=scheme)


@pytest.mark.parametrize("cached", [WINDOW - 1, 40, 150], ids=["rolling_window", "longer", "long"])
@pytest.mark.parametrize("mask_name", ["window", "window_padding", "window_prefix", "causal"])
def test_queries_fewer_than_keys(mask_name, cached):
    """A KV cache holds ``cached`` earlier keys: chunked prefill (n > 1) and one-token decoding."""
    for n in (50, 1):
        q, k, v, kw, rows = case(mask_name, n=n, m=n + cached, kv_heads=2)
        bias, scheme = make_bias("t5", True)
        for kernel in (sdpa, local):
            assert_matches_eager(kernel, q, k, v, kw, rows, bias=bias, scheme=scheme)


@pytest.mark.parametrize("kv_heads", [2, 1], ids=["gqa", "mqa"])
@pytest.mark.parametrize("bias_name", ["none", "alibi", "t5"])
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_one_token_steps_of_grouped_heads(mask_name, bias_name, kv_heads):
    """A decode step of GQA/MQA: SDPA reads a group's query heads as queries of their shared KV head
    (masks per key, biases per head), the eager reference's attention."""
    q, k, v, kw, rows = case(mask_name, n=1, m=41, kv_heads=kv_heads)
    bias, scheme = make_bias(bias_name, kw["mask"].causal)
    with torch.no_grad():
        assert_matches_eager(sdpa, q, k, v, kw, rows, bias=bias, scheme=scheme, grads=False)


def test_local_takes_keys_in_the_slot_order_of_a_rolling_cache():
    q, k, v, kw, rows = case("window_padding", n=50, m=80, kv_heads=2)
    ring = torch.cat([torch.arange(30).roll(7), torch.arange(30, 80)])  # the 30 cached keys wrapped around
    k, v = (t.detach()[:, :, ring].requires_grad_() for t in (k, v))
    kw["k_pos"], kw["mask"] = kw["k_pos"][:, ring], kw["mask"].with_keys(kw["mask"].key_valid[:, ring])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sorted by position, no fallback to SDPA
        assert_matches_eager(local, q, k, v, kw, rows, bias=make_bias("alibi", True)[0], scheme=None)


def test_chunked_prefill_through_a_rolling_cache_equals_one_pass():
    overrides = ["model/attention=sliding_window", "model.attention.window=8", "model.dim=32", "model.n_layers=2",
                 "model.vocab_size=64"]
    torch.manual_seed(0)
    model = zoo.build([*overrides, "model.attention.kernel=local"]).eval()
    tokens = torch.randint(0, 64, (2, 120))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        full = model(tokens)
        cache = model.new_cache()
        chunks = [model(chunk, cache=cache) for chunk in tokens.split(50, dim=1)]  # the ring wraps mid-chunk
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mask_name", ["window", "window_documents"])
def test_local_never_builds_a_full_bias_or_mask(mask_name):
    """Packed documents too: positions restart, yet each document's run of positions is local."""
    n = 256
    q, k, v, kw, rows = case(mask_name, n=n, m=n, kv_heads=2)
    seen = []

    def bias(q_pos, k_pos):
        seen.append(tuple(k_pos.shape))
        return ALiBi(H * D, n_heads=H, head_dim=D, max_seq_len=n, causal=True).bias(q_pos, k_pos)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to SDPA
        local(q, k, v, bias=bias, **kw)
    assert seen and all(keys <= 2 * default_block(WINDOW) for _, keys in seen)


def test_local_falls_back_to_sdpa_for_positions_that_are_not_local():
    """Positions that restart with no documents to say where: a window of positions is no window of indices."""
    q, k, v, kw, rows = case("window", n=80, m=80, kv_heads=2)
    kw["k_pos"] = kw["q_pos"] = torch.arange(80).remainder(40).expand(B, 80)
    with pytest.warns(UserWarning, match="positions"):
        assert_matches_eager(local, q, k, v, kw, rows, bias=no_bias, scheme=None)


def test_local_dropout_runs_and_drops():
    q, k, v, kw, rows = case("window", n=70, m=70, kv_heads=2)
    torch.manual_seed(0)
    out = local(q, k, v, bias=no_bias, dropout=0.5, **kw)
    assert torch.isfinite(out).all() and not torch.allclose(out, local(q, k, v, bias=no_bias, **kw))


# --- FlexAttention's pieces, checked without compiling ---------------------------------------------


def pairs(m: int, n: int):
    """Broadcastable (b, h, q_idx, kv_idx) index tensors, as FlexAttention's vmap hands them to the mods."""
    return torch.arange(B)[:, None, None, None], torch.arange(H)[None, :, None, None], torch.arange(n)[:, None], torch.arange(m)


@pytest.mark.parametrize("mask_name", list(MASKS))
def test_flex_mask_mod_is_the_mask_rule(mask_name):
    n, m = 50, 90
    _, _, _, kw, rows = case(mask_name, n=n, m=m, kv_heads=2)
    mask, q_pos, k_pos = kw["mask"], kw["q_pos"], kw["k_pos"]
    got = flex_module.rule_mod(mask, q_pos, k_pos)(*pairs(m, n))[:, 0]
    want = mask.with_keys(None).allows(q_pos, k_pos)
    if mask.key_valid is not None:
        want = want & mask.key_valid[:, None]
    assert torch.equal(got, want)


@pytest.mark.parametrize("mask_name", list(MASKS))
def test_flex_tiles_cover_every_visible_pair(mask_name):
    n, m = 300, 520
    _, _, _, kw, _ = case(mask_name, n=n, m=m, kv_heads=2)
    mask, q_pos, k_pos = kw["mask"], kw["q_pos"], kw["k_pos"]
    some, every = flex_module.tile_mask(mask, q_pos, k_pos)
    seen = flex_module.rule_mod(mask, q_pos, k_pos)(*pairs(m, n))[:, 0]
    tile = flex_module.BLOCK

    def per_tile(x: torch.Tensor) -> torch.Tensor:  # (b, n, m) -> (b, n tiles, tile, m tiles, tile), zero-padded
        padded = torch.zeros(B, some.shape[1] * tile, some.shape[2] * tile, dtype=torch.bool)
        padded[:, :n, :m] = x
        return padded.unflatten(1, (-1, tile)).unflatten(3, (-1, tile))

    visible, real = per_tile(seen), per_tile(torch.ones_like(seen))
    assert not (visible.any(dim=(2, 4)) & ~some).any()  # no visible pair in a skipped tile
    assert not (every & ~(visible | ~real).all(dim=(2, 4))).any()  # a full tile: every real pair visible
    if mask.window is not None or mask.q_segment is not None:
        assert not some.all()  # the window skips tiles, and so do other documents


@pytest.mark.parametrize("bias_name", ["alibi", "t5"])
def test_flex_score_mod_adds_the_bias(bias_name):
    n, m = 40, 60
    _, _, _, kw, _ = case("padding", n=n, m=m, kv_heads=2)
    bias, _ = make_bias(bias_name, True)
    score_mod = flex_module.bias_mod(bias, kw["q_pos"], kw["k_pos"])
    got = score_mod(torch.zeros(()), *pairs(m, n))
    torch.testing.assert_close(got, bias(kw["q_pos"], kw["k_pos"]))
    assert flex_module.bias_mod(no_bias, kw["q_pos"], kw["k_pos"]) is None


def test_flex_refuses_a_bias_of_absolute_positions():
    def absolute(q_pos, k_pos):
        return (q_pos[:, None, :, None] + k_pos[:, None, None, :]).float().expand(-1, H, -1, -1)

    _, _, _, kw, _ = case("causal", n=20, m=20, kv_heads=2)
    with pytest.raises(ConfigError, match="model.attention.kernel"):
        flex_module.bias_mod(absolute, kw["q_pos"], kw["k_pos"])


# --- FlexAttention compiled: inference only on CPU, a couple of compilations ----------------------


@pytest.fixture(scope="module")
def compiled_flex():
    if not KERNEL_SPECS["flex"].available():
        pytest.skip("no torch.nn.attention.flex_attention in this torch")
    q, k, v, kw, _ = case("window", n=200, m=300, kv_heads=2)
    try:
        with torch.no_grad():
            flex_module.flex(q, k, v, bias=no_bias, **kw)
    except Exception as error:  # no C++ compiler, no AVX2...
        pytest.skip(f"FlexAttention does not compile here: {type(error).__name__}: {error}")
    return flex_module.flex


@pytest.mark.slow
@pytest.mark.parametrize("bias_name", ["none", "alibi_t5"])
def test_flex_matches_eager_in_inference(compiled_flex, bias_name):
    """One compiled kernel serves every mask kind (the mask is data): one compilation per bias/no bias."""
    for mask_name in MASKS:
        for name in ("none",) if bias_name == "none" else ("alibi", "t5"):
            q, k, v, kw, rows = case(mask_name, n=200, m=300, kv_heads=2)  # 300 keys: a cache of 100, 3 tiles
            bias, scheme = make_bias(name, kw["mask"].causal)
            with torch.no_grad():
                assert_matches_eager(compiled_flex, q, k, v, kw, rows, bias=bias, scheme=scheme, grads=False)


@pytest.mark.slow
def test_flex_matches_eager_at_lengths_off_the_tile(compiled_flex):
    """torch 2.13's CPU FlexAttention alone returns wrong rows or NaN at e.g. 8 or 40 queries; zoo pads to whole tiles."""
    for n, m in ((8, 8), (40, 40), (1, 40)):
        for mask_name in ("causal", "window_padding", "documents"):
            q, k, v, kw, rows = case(mask_name, n=n, m=m, kv_heads=2)
            with torch.no_grad():
                assert_matches_eager(compiled_flex, q, k, v, kw, rows, bias=no_bias, scheme=None, grads=False)


def test_flex_training_on_cpu_is_a_config_error():
    q, k, v, kw, _ = case("window", n=20, m=20, kv_heads=2)
    with pytest.raises(ConfigError, match="model.attention.kernel.*backward on CPU"):
        flex_module.flex(q, k, v, bias=no_bias, **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mask_name", ["window", "window_prefix", "window_padding", "bidirectional_padding"])
def test_fast_kernels_train_on_cuda(mask_name):
    q, k, v, kw, rows = case(mask_name, n=300, m=300, kv_heads=2, d=64)  # a real head width: Triton's flex needs >= 16
    q, k, v = (t.detach().cuda().requires_grad_() for t in (q, k, v))
    kw = {key: value.cuda() if torch.is_tensor(value) else value for key, value in kw.items()}
    mask = kw["mask"]
    kw["mask"] = Mask(
        causal=mask.causal, window=mask.window,
        prefix_len=None if mask.prefix_len is None else mask.prefix_len.cuda(),
        key_valid=None if mask.key_valid is None else mask.key_valid.cuda(),
    )
    bias, scheme = make_bias("t5", mask.causal)
    scheme.cuda()
    for kernel in (local, flex_module.flex):
        assert_matches_eager(kernel, q, k, v, kw, rows.cuda(), bias=bias, scheme=scheme)


# --- choosing a kernel --------------------------------------------------------------------------------

pick = partial(pick_kernel, window=256, device=CPU, dropout=0.0, n=4096, m=4096)


def test_auto_picks_by_window_length_mode_and_device():
    auto = partial(auto_kernel, device=CPU, dropout=0.0)
    assert auto(window=None, backward=True, n=4096, m=4096) == "sdpa"
    assert auto(window=256, backward=True, n=4096, m=4096) == "local"
    assert auto(window=256, backward=False, n=4096, m=4096) == CPU_INFERENCE_KERNEL
    assert auto(window=256, backward=False, n=1, m=4096) == "sdpa"  # decoding
    assert auto(window=256, backward=True, n=400, m=400) == "sdpa"  # short: the dense mask is as fast
    if KERNEL_SPECS["flex"].available():
        cuda = partial(auto_kernel, device=torch.device("cuda"), window=256, n=4096, m=4096)
        assert cuda(backward=True, dropout=0.0) == "flex"
        assert cuda(backward=True, dropout=0.1) == "local"  # FlexAttention has no dropout


def test_auto_never_picks_a_kernel_past_its_declared_limits():
    """FlexAttention's CUDA lowering needs heads of >= 16 channels: asked about CUDA shapes on a CPU-only
    machine, the picker says so, before any GPU is involved."""
    cuda = torch.device("cuda")
    if KERNEL_SPECS["flex"].available():
        narrow = partial(auto_kernel, device=cuda, window=256, n=4096, m=4096, backward=True, dropout=0.0)
        assert narrow(head_dim=64) == "flex" and narrow(head_dim=16) == "flex"
        assert narrow(head_dim=8) == "local"
        assert auto_kernel(device=cuda, window=None, n=64, m=64, backward=True, dropout=0.0, softcap=30.0, head_dim=8) == "eager"
        with pytest.raises(ConfigError, match="model.attention.kernel.*at least 16 channels on CUDA, got 8"):
            pick_kernel("flex", window=256, device=cuda, backward=False, dropout=0.0, n=4096, m=4096, head_dim=8)
    assert auto_kernel(device=CPU, window=256, n=4096, m=4096, backward=False, dropout=0.0, head_dim=8) == CPU_INFERENCE_KERNEL


def test_explicit_kernels_that_cannot_run_are_config_errors():
    assert pick("flex", backward=False) is KERNEL_SPECS["flex"].fn
    with pytest.raises(ConfigError, match="model.attention.kernel.*no backward on CPU"):
        pick("flex", backward=True)
    assert pick("local", backward=True) is local


def test_config_validation_reads_the_declarations():
    with pytest.raises(ConfigError, match="model.attention.kernel.*one of"):
        Attention(32, n_heads=H, head_dim=D, kernel="fast")
    with pytest.raises(ConfigError, match="model.attention.kernel.*dropout"):
        Attention(32, n_heads=H, head_dim=D, kernel="flex", dropout=0.1)
    Attention(32, n_heads=H, head_dim=D, kernel="local", dropout=0.1)


def test_every_kernel_is_listed_in_the_attention_config():
    text = (files("zoo.conf") / "model/attention/mha.yaml").read_text()
    listed = re.search(r"kernel:.*#(.*)", text).group(1)
    assert [name.strip() for name in listed.split("|")] == list(KERNEL_CHOICES)


def test_specs_declare_what_auto_and_zoo_info_need():
    assert KERNEL_SPECS["local"].linear_window and KERNEL_SPECS["flex"].linear_window
    assert not KERNEL_SPECS["flex"].supports_backward_on_cpu and not KERNEL_SPECS["flex"].supports_dropout
    assert all(spec.supports_bias for spec in KERNEL_SPECS.values())


# --- through a whole model ----------------------------------------------------------------------------


@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_models_with_a_sliding_window_agree_across_kernels(pos):
    overrides = [
        "model/attention=sliding_window", "model.attention.window=8", "model.attention.n_kv_heads=2",
        f"model/pos={pos}", "model.dim=32", "model.n_layers=2", "model.vocab_size=64",
    ]
    tokens = torch.randint(0, 64, (2, 90))
    torch.manual_seed(0)
    model = zoo.build(overrides)
    results = {}
    for kernel in ("eager", "local", "auto"):
        for layer in model.stack.layers:
            layer.attn.kernel = kernel
        model.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a model's positions are local: no fallback to SDPA
            logits = model(tokens)
        logits.square().mean().backward()
        results[kernel] = logits, [p.grad.clone() for p in model.parameters()]
    for kernel in ("local", "auto"):
        torch.testing.assert_close(results[kernel][0], results["eager"][0], atol=1e-5, rtol=1e-4)
        for got, want in zip(results[kernel][1], results["eager"][1]):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
