import pytest
import torch

from zoo.norm import LayerNorm, RMSNorm


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_torch(bias):
    torch.manual_seed(0)
    ours, ref = LayerNorm(16, bias=bias), torch.nn.LayerNorm(16, bias=bias)
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
        if bias:
            ours.bias.normal_()
            ref.bias.copy_(ours.bias)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(ours(x), ref(x))


def test_layernorm_without_bias_has_no_bias_parameter():
    assert [n for n, _ in LayerNorm(8, bias=False).named_parameters()] == ["weight"]


def test_rmsnorm_formula():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
    x = torch.randn(4, 8) * 3 + 1
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_rmsnorm_keeps_bf16_dtype():
    assert RMSNorm(8)(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
