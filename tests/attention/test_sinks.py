"""Attention sinks (``model/attention=sinks``): a learned logit per head in each softmax's denominator (gpt-oss)."""

import pytest
import torch

from zoo.attention.kernels import KERNEL_SPECS, auto_kernel, eager, pick_kernel
from zoo.attention.mask import Mask
from zoo.errors import ConfigError
from zoo.pos import ALiBi
from zoo.testing import build_tiny

SCALE = 8**-0.5


def qkv(seed: int = 0, n: int = 24, kv_heads: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, n, 8, generator=g), torch.randn(2, kv_heads, n, 8, generator=g), torch.randn(2, kv_heads, n, 8, generator=g)


def no_bias(q_pos, k_pos):
    return None


def positions(n: int) -> torch.Tensor:
    return torch.arange(n)[None].expand(2, -1)


def test_eager_sinks_equal_transformers_gpt_oss_attention():
    """transformers' gpt-oss eager attention, an independent implementation, under a causal mask with
    grouped KV heads and sinks on both sides of zero."""
    gpt_oss = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")
    q, k, v = qkv(1)
    sinks = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    n = q.shape[2]
    module = torch.nn.Module()
    module.sinks, module.num_key_value_groups, module.training = torch.nn.Parameter(sinks), 2, False
    additive = torch.zeros(n, n).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))[None, None]
    theirs, _ = gpt_oss.eager_attention_forward(module, q, k, v, additive, scaling=SCALE)
    pos = positions(n)
    ours = eager(q, k, v, mask=Mask(causal=True), q_pos=pos, k_pos=pos, bias=no_bias, scale=SCALE, sinks=sinks)
    torch.testing.assert_close(ours.transpose(1, 2), theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 5])
def test_a_sink_is_a_key_every_query_sees_that_reads_a_zero_value(window):
    """Written out another way: one more key, visible to every query, scored ``sink`` whatever the query,
    with a value of zeros; ALiBi's bias applies to the real keys only."""
    q, k, v = qkv(2)
    n, sinks = q.shape[2], torch.tensor([0.5, -1.0, 2.0, 0.0])
    pos = positions(n)
    alibi = ALiBi(32, n_heads=4, head_dim=8, max_seq_len=64, causal=True).bias
    mask = Mask(causal=True, window=window)
    out = eager(q, k, v, mask=mask, q_pos=pos, k_pos=pos, bias=alibi, scale=SCALE, sinks=sinks)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = (q @ kk.transpose(-1, -2)) * SCALE + alibi(pos, pos)
    s = s.masked_fill(~mask.allows(pos, pos)[:, None], float("-inf"))
    s = torch.cat([s, sinks.view(1, 4, 1, 1).expand(2, 4, n, 1)], -1)
    expected = s.softmax(-1) @ torch.cat([vv, torch.zeros(2, 4, 1, 8)], 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_sinks_far_below_every_score_change_nothing_and_high_ones_mute_the_head():
    q, k, v = qkv(3)
    pos = positions(q.shape[2])
    kw = dict(mask=Mask(causal=True), q_pos=pos, k_pos=pos, bias=no_bias, scale=SCALE)
    plain = eager(q, k, v, **kw)
    torch.testing.assert_close(eager(q, k, v, sinks=torch.full((4,), -1e4), **kw), plain)
    assert eager(q, k, v, sinks=torch.full((4,), 1e4), **kw).abs().max() < 1e-6
    assert not torch.allclose(eager(q, k, v, sinks=torch.zeros(4), **kw), plain, atol=1e-3)


def test_flex_refuses_sinks_on_cpu_in_one_line():
    """torch 2.13's compiled CPU FlexAttention returns no log-sum-exp, which sinks need (tests/test_cuda.py holds
    flex to eager on CUDA)."""
    with pytest.raises(ConfigError, match=r"model.attention.kernel.*flex.*sinks on CPU.*eager or auto") as error:
        pick_kernel("flex", window=None, device=torch.device("cpu"), backward=False, dropout=0.0, n=4, m=4, sinks=True)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kernel", [name for name, spec in KERNEL_SPECS.items() if not spec.supports_sinks])
def test_kernels_without_sinks_refuse_in_one_line(kernel):
    with pytest.raises(ConfigError, match=rf"model.attention.kernel.*{kernel}.*sinks=true.*eager or flex") as error:
        build_tiny(["model/attention=sinks", f"model.attention.kernel={kernel}"])
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="cannot add attention sinks"):
        pick_kernel(kernel, window=None, device=torch.device("cpu"), backward=False, dropout=0.0, n=4, m=4, sinks=True)


def test_auto_picks_a_kernel_with_sinks():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_kernel("auto", window=None, device=cpu, backward=True, dropout=0.0, n=64, m=64, sinks=True) is eager
    assert auto_kernel(window=64, device=cpu, backward=False, dropout=0.0, n=4096, m=4096, sinks=True, head_dim=64) == "eager"
    if "flex" in KERNEL_SPECS and KERNEL_SPECS["flex"].available():
        assert auto_kernel(window=None, device=cuda, backward=True, dropout=0.0, n=64, m=64, sinks=True, head_dim=64) == "flex"
        assert auto_kernel(window=None, device=cuda, backward=True, dropout=0.0, n=64, m=64, sinks=True, head_dim=8) == "eager"


def test_a_sink_model_learns_its_sinks_and_decodes_as_it_reads():
    """The sinks are parameters that train, one per query head, and a cached decode equals the full forward."""
    model = build_tiny(["model/attention=sinks", "model.attention.n_kv_heads=1"], seed=0)
    attn = model.stack.layers[0].attn
    assert attn.sinks.shape == (attn.n_heads,) and not attn.sinks.any()
    tokens = torch.randint(0, model.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    model(tokens).logsumexp(-1).mean().backward()
    assert attn.sinks.grad is not None and attn.sinks.grad.abs().sum() > 0
    with torch.no_grad():
        for layer in model.stack.layers:
            layer.attn.sinks.copy_(torch.linspace(-1.0, 2.0, layer.attn.n_heads))
    model.eval()
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache()
        steps = [model(tokens[:, :5], cache=cache)] + [model(tokens[:, i : i + 1], cache=cache) for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
