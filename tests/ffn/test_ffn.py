import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.ffn import GeGLU, GeLUMLP, ReGLU, ReLUMLP, SquaredReLUMLP, SwiGLU
from zoo.testing import TINY


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


@pytest.mark.parametrize("cls, act", [(ReLUMLP, F.relu), (GeLUMLP, F.gelu), (SquaredReLUMLP, lambda x: F.relu(x) ** 2)])
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


def test_squared_relu_gradient_is_zero_below_zero_and_2x_above():
    x = torch.tensor([-3.0, -0.5, -1e-4, 0.0, 1e-4, 0.5, 3.0], requires_grad=True)
    SquaredReLUMLP(4).activation(x).sum().backward()
    negative = x.detach() <= 0
    assert torch.equal(x.grad[negative], torch.zeros(int(negative.sum())))
    torch.testing.assert_close(x.grad[~negative], 2 * x.detach()[~negative])


def test_a_model_with_relu2_builds_and_trains():
    torch.manual_seed(0)
    model = zoo.build(["model/ffn=relu2", *TINY])
    ffns = [layer.ffn for layer in model.stack.layers]
    assert all(type(ffn) is SquaredReLUMLP and ffn.up_proj.out_features == 4 * 32 for ffn in ffns)
    assert all(ffn.up_proj.bias is None for ffn in ffns)
    tokens = torch.randint(0, model.vocab_size, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses

