import pytest
import torch
import torch.nn.functional as F

from zoo.ffn import GeGLU, GeLUMLP, ReGLU, ReLUMLP, SwiGLU


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("glu", [SwiGLU, GeGLU, ReGLU])
@pytest.mark.parametrize("dim", [64, 96, 256, 768])
def test_gated_default_is_parameter_matched_to_4x_mlp(glu, dim):
    mlp, gated = GeLUMLP(dim, bias=False), glu(dim, bias=False)
    assert abs(n_params(gated) - n_params(mlp)) / n_params(mlp) < 0.005


def test_mlp_default_hidden_is_4x():
    assert ReLUMLP(32).up_proj.out_features == 128


@pytest.mark.parametrize(
    "cls, act",
    [(SwiGLU, F.silu), (GeGLU, F.gelu), (ReGLU, F.relu)],
)
def test_glu_formula(cls, act):
    torch.manual_seed(0)
    ffn = cls(16, hidden_dim=24)
    x = torch.randn(2, 3, 16)
    expected = ffn.down_proj(act(ffn.gate_proj(x)) * ffn.up_proj(x))
    torch.testing.assert_close(ffn(x), expected)


@pytest.mark.parametrize("cls, act", [(ReLUMLP, F.relu), (GeLUMLP, F.gelu)])
def test_mlp_formula(cls, act):
    torch.manual_seed(0)
    ffn = cls(16, hidden_dim=24, bias=True)
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(ffn(x), ffn.down_proj(act(ffn.up_proj(x))))


def test_gelu_tanh_approximation_differs_from_exact():
    torch.manual_seed(0)
    exact, approx = GeLUMLP(8), GeLUMLP(8, approximate="tanh")
    approx.load_state_dict(exact.state_dict())
    x = torch.randn(4, 8) * 3
    assert not torch.equal(exact(x), approx(x))
    torch.testing.assert_close(exact(x), approx(x), atol=1e-2, rtol=0)
