"""Scaled RoPE: each scheme's frequencies do what its paper says (HF parity is in tests/hf)."""

import pytest
import torch

from zoo.errors import ConfigError
from zoo.pos import DynamicNTKRoPE, Llama3RoPE, LinearRoPE, RoPE, YaRNRoPE

SIZES = dict(n_heads=2, head_dim=32, max_seq_len=64, causal=True)


def test_linear_rope_at_factor_times_a_position_is_rope_at_that_position():
    plain, linear = RoPE(64, **SIZES), LinearRoPE(64, factor=4.0, **SIZES)
    pos = torch.arange(0, 40)[None]
    for a, b in zip(linear.rotation(pos * 4), plain.rotation(pos)):
        torch.testing.assert_close(a, b)


def test_llama3_keeps_short_wavelengths_and_stretches_long_ones():
    plain = RoPE(64, theta=5e5, **SIZES)
    scaled = Llama3RoPE(64, theta=5e5, factor=8.0, original_max_seq_len=64, **{**SIZES, "max_seq_len": 512})
    wavelength = 2 * torch.pi / plain.inv_freq
    short, long = wavelength < 64 / 4, wavelength > 64 / 1
    assert short.any() and long.any() and (~short & ~long).any()
    torch.testing.assert_close(scaled.inv_freq[short], plain.inv_freq[short])
    torch.testing.assert_close(scaled.inv_freq[long], plain.inv_freq[long] / 8)
    between = scaled.inv_freq[~short & ~long] / plain.inv_freq[~short & ~long]
    assert ((between > 1 / 8) & (between < 1)).all() and (between.diff() <= 0).all()


def test_yarn_sharpens_every_score_by_the_square_of_its_attention_factor():
    yarn = YaRNRoPE(64, factor=4.0, original_max_seq_len=16, **SIZES)
    plain = RoPE(64, **SIZES)
    assert yarn.attention_factor == pytest.approx(0.1 * torch.log(torch.tensor(4.0)).item() + 1)
    assert yarn.inv_freq[0] == plain.inv_freq[0] and yarn.inv_freq[-1] == pytest.approx(plain.inv_freq[-1] / 4)
    q, k = torch.randn(1, 1, 2, 32), torch.randn(1, 1, 2, 32)
    zero = torch.zeros(1, 1, dtype=torch.long)
    score = (yarn.rotate(q, zero) * yarn.rotate(k, zero)).sum()  # at one position nothing turns
    assert score == pytest.approx(yarn.attention_factor**2 * (q * k).sum().item(), rel=1e-5)


def test_dynamic_ntk_is_rope_up_to_its_training_length_and_slows_past_it():
    plain, dynamic = RoPE(64, **SIZES), DynamicNTKRoPE(64, factor=2.0, **SIZES)
    short = torch.arange(64)[None]
    for a, b in zip(dynamic.rotation(short), plain.rotation(short)):
        torch.testing.assert_close(a, b)
    longer = dynamic.frequencies(256)
    assert longer[0] == plain.inv_freq[0] and (longer[1:] < plain.inv_freq[1:]).all()


@pytest.mark.parametrize(
    "cls, kwargs, key",
    [
        (LinearRoPE, dict(factor=0.5), "model.pos.factor"),
        (Llama3RoPE, dict(low_freq_factor=4.0, high_freq_factor=1.0), "model.pos.high_freq_factor"),
        (YaRNRoPE, dict(beta_fast=1.0, beta_slow=32.0), "model.pos.beta_fast"),
    ],
)
def test_bad_settings_name_their_key(cls, kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cls(64, **SIZES, **kwargs)
