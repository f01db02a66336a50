"""Soft-capping (zoo/softcap.py): of attention scores in the kernels that can express it, and of final logits."""

import pytest
import torch

from zoo.attention.kernels import KERNEL_SPECS, eager, pick_kernel
from zoo.attention.mask import Mask
from zoo.errors import ConfigError
from zoo.pos import ALiBi
from zoo.softcap import SoftCap
from zoo.testing import build_tiny

CAP = 2.0


def qkv(seed: int = 0, n: int = 24):
    g = torch.Generator().manual_seed(seed)
    # large queries: uncapped scores reach well past the cap, so capping changes the result
    q = 4 * torch.randn(2, 4, n, 8, generator=g)
    return q, torch.randn(2, 2, n, 8, generator=g), torch.randn(2, 2, n, 8, generator=g)


def reference(q, k, v, *, mask, q_pos, k_pos, bias, scale, cap):
    """Written out independently of the kernels: capped scaled scores, then bias, mask, softmax."""
    k, v = k.repeat_interleave(q.shape[1] // k.shape[1], 1), v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    s = (q @ k.transpose(-1, -2)) * scale
    s = cap * torch.tanh(s / cap)
    b = bias(q_pos, k_pos)
    s = s if b is None else s + b
    s = s.masked_fill(~mask.allows(q_pos, k_pos)[:, None], float("-inf"))
    return s.softmax(-1) @ v


def no_bias(q_pos, k_pos):
    return None


@pytest.mark.parametrize("bias", ["none", "alibi"])
@pytest.mark.parametrize("window", [None, 5])
def test_eager_soft_caps_scores(bias, window):
    q, k, v = qkv()
    pos = torch.arange(q.shape[2])[None].expand(2, -1)
    fn = no_bias if bias == "none" else ALiBi(32, n_heads=4, head_dim=8, max_seq_len=64, causal=True).bias
    kw = dict(mask=Mask(causal=True, window=window), q_pos=pos, k_pos=pos, bias=fn, scale=8**-0.5)
    out = eager(q, k, v, softcap=CAP, **kw)
    torch.testing.assert_close(out, reference(q, k, v, cap=CAP, **kw), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, eager(q, k, v, **kw), atol=1e-3)


def test_flex_soft_caps_like_eager():
    pytest.importorskip("torch.nn.attention.flex_attention")
    q, k, v = qkv(1, n=64)
    pos = torch.arange(64)[None].expand(2, -1)
    kw = dict(mask=Mask(causal=True, window=7), q_pos=pos, k_pos=pos, bias=no_bias, scale=8**-0.5, softcap=CAP)
    with torch.no_grad():
        torch.testing.assert_close(KERNEL_SPECS["flex"].fn(q, k, v, **kw), eager(q, k, v, **kw), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", [name for name, spec in KERNEL_SPECS.items() if not spec.supports_softcap])
def test_kernels_that_cannot_soft_cap_refuse_in_one_line(kernel):
    with pytest.raises(ConfigError, match=rf"model.attention.kernel.*{kernel}.*softcap=50.0.*eager or flex") as error:
        build_tiny(["model/attention=softcap", f"model.attention.kernel={kernel}"])
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="cannot soft-cap"):
        pick_kernel(kernel, window=None, device=torch.device("cpu"), backward=False, dropout=0.0, n=4, m=4, softcap=CAP)


def test_auto_picks_a_kernel_that_soft_caps():
    cpu = torch.device("cpu")
    assert pick_kernel("auto", window=None, device=cpu, backward=True, dropout=0.0, n=64, m=64, softcap=CAP) is eager


def test_soft_capped_attention_model_is_bounded_by_its_cap():
    """With cap 1e-3 every score is nearly 0: attention becomes a plain average of the visible values."""
    capped = build_tiny(["model/attention=softcap", "model.attention.softcap=0.001"], seed=0).eval()
    attn = capped.stack.layers[0].attn
    q, k, v = qkv(2)
    pos = torch.arange(q.shape[2])[None].expand(2, -1)
    out = attn.attend(q, k, v, mask=Mask(causal=True), q_pos=pos, k_pos=pos, bias=no_bias)
    mean = v.repeat_interleave(2, 1).cumsum(2) / torch.arange(1, q.shape[2] + 1)[:, None]
    torch.testing.assert_close(out, mean, atol=1e-3, rtol=1e-3)


def test_logit_softcap_caps_the_final_logits():
    plain = build_tiny(["model.dim=32"], seed=4).eval()
    capped = build_tiny(["model.logit_softcap=0.5"], seed=4).eval()
    capped.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, plain.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(capped(tokens), 0.5 * torch.tanh(plain(tokens) / 0.5))
        assert capped(tokens).abs().max() < 0.5


@pytest.mark.parametrize(("key", "value"), [("model.logit_softcap", 0.0), ("model.attention.softcap", -1.0)])
def test_a_non_positive_cap_is_refused(key, value):
    overrides = ["model/attention=softcap"] if key.startswith("model.attention") else []
    with pytest.raises(ConfigError, match=rf"{key}.*positive"):
        build_tiny([*overrides, f"{key}={value}"])


def test_softcap_module_matches_its_formula():
    x = torch.linspace(-100, 100, 11)
    torch.testing.assert_close(SoftCap(30.0)(x), 30.0 * torch.tanh(x / 30.0))
