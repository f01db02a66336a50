"""On a CUDA device: a model computes there what it computes on the CPU, FlexAttention trains there, and
zoo-train trains there compiled in bf16 (decoding there: ``tests/generation/test_static.py``). Skipped
without CUDA (``pytest -m gpu`` on a GPU machine; ``benchmarks/gpu_check.sh`` runs them with the rest of
the GPU check)."""

import pytest
import torch

import zoo
from zoo.config import compose

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

LLAMA = ["model=causal", "model/norm=rmsnorm", "model/ffn=swiglu", "model/pos=rope", "model.dim=128", "model.n_layers=2",
         "model.n_heads=4", "model.vocab_size=256", "model.max_seq_len=128"]  # fmt: skip


@pytest.fixture(autouse=True)
def exact_matmuls():
    """fp32 matmuls in fp32, not TF32, so CUDA and CPU logits compare at fp32 tolerances."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("attention", ["mha", "gqa", "sliding_window"])
def test_a_model_on_cuda_computes_its_cpu_logits(attention):
    torch.manual_seed(0)
    model = zoo.build([*LLAMA, f"model/attention={attention}"]).eval()
    tokens = torch.randint(256, (2, 100))
    with torch.no_grad():
        want = model(tokens)
        got = model.cuda()(tokens.cuda()).cpu()
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize(
    "arch, attention, inputs",
    [
        ("causal", ["model/attention=sliding_window", "model.attention.window=16"], {}),
        ("prefix", ["model/attention=fixed"], {"prefix_len": [40, 90]}),
        ("causal", ["model/attention=bigbird"], {"segments": [[0] * 50 + [1] * 78, [0] * 20 + [1] * 60 + [2] * 48]}),
    ],
    ids=["window", "prefix_fixed_pattern", "packed_bigbird"],
)
def test_flex_attention_trains_on_cuda(arch, attention, inputs):
    """auto picks FlexAttention for long windows and sparse patterns on CUDA; its backward gives the dense
    kernel's gradients, under a causal mask, under a prefix (whose queries see later prefix keys) and on
    packed documents (whose positions restart at each one)."""
    torch.manual_seed(0)
    overrides = [f"model={arch}", *LLAMA[1:], *attention]
    models = {kernel: zoo.build([*overrides, f"model.attention.kernel={kernel}"]).cuda() for kernel in ("flex", "sdpa")}
    models["flex"].load_state_dict(models["sdpa"].state_dict())
    tokens = torch.randint(256, (2, 128), device="cuda")
    inputs = {name: torch.tensor(value, device="cuda") for name, value in inputs.items()}
    grads = {}
    for kernel, model in models.items():
        model(tokens, **inputs).float().square().mean().backward()
        grads[kernel] = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(grads["flex"], grads["sdpa"], atol=1e-4, rtol=1e-3)


def test_flex_adds_attention_sinks_on_cuda_as_eager_does():
    """FlexAttention adds sinks through its log-sum-exp (CUDA only in torch 2.13): the outputs and every
    gradient, the sinks' own included, equal the eager reference's, with a sliding window."""
    torch.manual_seed(0)
    overrides = [*LLAMA, "model/attention=sinks", "model.attention.window=16"]
    models = {kernel: zoo.build([*overrides, f"model.attention.kernel={kernel}"]).cuda() for kernel in ("flex", "eager")}
    with torch.no_grad():
        for layer in models["eager"].stack.layers:
            layer.attn.sinks.copy_(torch.linspace(-1.0, 2.0, layer.attn.n_heads))
    models["flex"].load_state_dict(models["eager"].state_dict())
    tokens = torch.randint(256, (2, 128), device="cuda")
    grads = {}
    for kernel, model in models.items():
        model(tokens).float().square().mean().backward()
        grads[kernel] = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(grads["flex"], grads["eager"], atol=1e-4, rtol=1e-3)


def test_zoo_train_trains_compiled_in_bf16_on_cuda(tmp_path):
    from zoo.train import train

    cfg = compose(["experiment=smoke", "logger=none", "trainer.device=cuda", "trainer.compile=true", "trainer.max_steps=30"])
    result = train(cfg, out_dir=tmp_path / "run")
    assert result.status == "ok" and result.history[-1] < result.history[0], result.history
    assert (tmp_path / "run" / "checkpoints").exists()
