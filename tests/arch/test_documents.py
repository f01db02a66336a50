"""Document masking of packed rows (``segments``): a packed row gives what its documents give one by one."""

import warnings

import pytest
import torch

import zoo
from zoo.arch.stack import document_positions
from zoo.attention.kernels import KERNEL_SPECS

LENGTHS = [30, 45, 21]  # three documents in one row of 96 tokens
SMALL = ["model.dim=32", "model.n_layers=2", "model.n_heads=4", "model.vocab_size=64", "model.max_seq_len=96"]
WINDOW = ["model/attention=sliding_window", "model.attention.window=8"]


def packed_row(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Tokens ``(2, 96)`` and document ids of two packed rows, and each document alone ``(1, length)``."""
    g = torch.Generator().manual_seed(seed)
    rows, segments, documents = [], [], []
    for lengths in (LENGTHS, LENGTHS[::-1]):
        docs = [torch.randint(0, 64, (1, n), generator=g) for n in lengths]
        documents += docs
        rows.append(torch.cat(docs, dim=1))
        segments.append(torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], dim=1))
    return torch.cat(rows), torch.cat(segments), documents


def assert_packed_equals_alone(model: torch.nn.Module) -> None:
    tokens, segments, documents = packed_row()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # local attention stays banded: no fallback to SDPA
        packed = model(tokens, segments=segments)
    alone = torch.cat([model(doc) for doc in documents], dim=1).view_as(packed)
    torch.testing.assert_close(packed, alone, atol=2e-5, rtol=1e-4)
    # and the mask matters: across documents the logits differ
    assert not torch.allclose(model(tokens)[:, LENGTHS[0] :], packed[:, LENGTHS[0] :], atol=1e-3)


@pytest.mark.parametrize("pos", ["rope", "learned", "sinusoidal", "alibi", "t5", "none"])
@pytest.mark.parametrize("kernel", ["eager", "sdpa", "auto"])
def test_packed_row_equals_its_documents_alone(kernel, pos):
    torch.manual_seed(0)
    model = zoo.build([*SMALL, f"model/pos={pos}", f"model.attention.kernel={kernel}"]).eval()
    with torch.no_grad():
        assert_packed_equals_alone(model)


@pytest.mark.parametrize("pos", ["rope", "learned", "alibi", "t5"])
@pytest.mark.parametrize("kernel", ["eager", "sdpa", "local", "auto"])
@pytest.mark.parametrize("arch", ["causal", "encoder"])
def test_sliding_window_packed_row_equals_its_documents_alone(arch, kernel, pos):
    torch.manual_seed(0)
    model = zoo.build([*SMALL, *WINDOW, f"model={arch}", f"model/pos={pos}", f"model.attention.kernel={kernel}"]).eval()
    with torch.no_grad():
        assert_packed_equals_alone(model)


def test_gradients_of_a_packed_row_equal_those_of_its_documents():
    """Training: the local kernel's backward keeps documents apart too."""
    torch.manual_seed(0)
    model = zoo.build([*SMALL, *WINDOW, "model.attention.kernel=local"])
    tokens, segments, documents = packed_row()
    model(tokens, segments=segments).square().sum().backward()
    packed = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    sum(model(doc).square().sum() for doc in documents).backward()
    for got, want in zip(packed, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_flex_packed_row_equals_its_documents_alone():
    if not KERNEL_SPECS["flex"].available():
        pytest.skip("no FlexAttention in this torch")
    torch.manual_seed(0)
    model = zoo.build([*SMALL, *WINDOW, "model.attention.kernel=flex"]).eval()
    tokens, segments, documents = packed_row()
    try:
        with torch.no_grad():
            packed = model(tokens, segments=segments)
    except Exception as error:  # no C++ compiler, no AVX2...
        pytest.skip(f"FlexAttention does not compile here: {type(error).__name__}: {error}")
    with torch.no_grad():
        alone = torch.cat([model.eval()(doc) for doc in documents], dim=1).view_as(packed)
    torch.testing.assert_close(packed, alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_prefix_decoder_keeps_documents_apart_and_row_positions(kernel):
    """The prefix is the row's first tokens (positions do not restart): no token sees another document."""
    torch.manual_seed(0)
    model = zoo.build([*SMALL, "model=prefix", f"model.attention.kernel={kernel}"]).eval()
    tokens, segments, _ = packed_row()
    prefix_len = torch.tensor([40, 10])  # inside the second document, inside the first
    with torch.no_grad():
        base = model(tokens, segments=segments, prefix_len=prefix_len)
        for t in (5, 35, 70):
            changed = tokens.clone()
            changed[:, t] = (changed[:, t] + 1) % 64
            moved = (model(changed, segments=segments, prefix_len=prefix_len) - base).abs().amax(-1) > 1e-5
            for row in range(2):
                seen_by = moved[row].nonzero().flatten()
                same_document = segments[row, seen_by] == segments[row, t]
                in_prefix = t < prefix_len[row]
                assert same_document.all(), f"row {row}: token {t} seen from another document"
                assert in_prefix or (seen_by >= t).all(), f"row {row}: token {t} seen before it"


def test_document_positions_restart_at_each_document():
    segments = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 1, 1, 1, 1, 1]])
    assert document_positions(segments).tolist() == [[0, 1, 2, 0, 1, 0], [0, 0, 1, 2, 3, 4]]


def test_segments_with_a_kv_cache_are_refused():
    model = zoo.build(SMALL).eval()
    tokens, segments, _ = packed_row()
    with pytest.raises(ValueError, match="segments"):
        model(tokens, segments=segments, cache=model.new_cache())
