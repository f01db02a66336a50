import pytest
import torch
import torch.nn.functional as F

from zoo.config import group_options
from zoo.norm import DyT, LayerNorm, RMSNorm
from zoo.testing import build_tiny, check_gradients, sample_batch


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


def randomised_dyt(dim, *, bias=True):
    norm = DyT(dim, alpha_init=1.3, bias=bias)
    with torch.no_grad():
        norm.alpha.uniform_(0.2, 2)
        norm.weight.uniform_(0.5, 2)
        if bias:
            norm.bias.normal_()
    return norm


@pytest.mark.parametrize("bias", [True, False])
def test_dyt_formula(bias):
    torch.manual_seed(0)
    norm = randomised_dyt(8, bias=bias)
    x = torch.randn(3, 4, 8) * 3 + 1
    expected = norm.weight * torch.tanh(norm.alpha * x) + (norm.bias if bias else 0)
    torch.testing.assert_close(norm(x), expected)


def test_dyt_starts_at_alpha_init_with_unit_weight_and_zero_bias():
    norm = DyT(8, alpha_init=0.3)
    x = torch.randn(2, 8)
    torch.testing.assert_close(norm(x), torch.tanh(0.3 * x))


def test_dyt_gradient_reaches_alpha():
    torch.manual_seed(0)
    norm = randomised_dyt(8)
    x = torch.randn(5, 8)
    norm(x).sum().backward()
    with torch.no_grad():  # d/d(alpha) of weight * tanh(alpha x) is weight * (1 - tanh^2(alpha x)) * x
        expected = (norm.weight * (1 - torch.tanh(norm.alpha * x) ** 2) * x).sum()
    torch.testing.assert_close(norm.alpha.grad, expected)


def test_dyt_keeps_bf16_dtype():
    torch.manual_seed(0)
    norm, x = randomised_dyt(8), torch.randn(4, 8) * 3
    y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), norm(x), atol=3e-2, rtol=2e-2)


def test_dyt_without_bias_has_no_bias_parameter():
    assert [n for n, _ in DyT(8, bias=False).named_parameters()] == ["alpha", "weight"]


@pytest.mark.parametrize("residual", group_options("model/residual"))
def test_dyt_model_trains_under_every_residual_wiring(residual):
    model = build_tiny(["model/norm=dyt", f"model/residual={residual}"])
    assert all(isinstance(norm, DyT) for layer in model.stack.layers for norm in layer.norms)
    dyts = [m for m in model.modules() if isinstance(m, DyT)]
    check_gradients(model)
    tokens = sample_batch(model, batch=4, length=16).inputs["tokens"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(4):
        logits = model(tokens=tokens)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert all(m.alpha.item() != 0.5 for m in dyts), "an alpha did not train"
