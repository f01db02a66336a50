"""Logit parity of imported checkpoints: every family, full forward, cached decoding and greedy tokens.

Each case builds a tiny random ``transformers`` model from a config (no download), imports it, and
holds the zoo model to it within float32 tolerance.
"""

import pytest
import torch

pytest.importorskip("transformers")

from hf_cases import CASES, TOL, inputs  # noqa: E402

from zoo.generation import generate  # noqa: E402
from zoo.hf import from_pretrained, import_config  # noqa: E402
from zoo.hf.parity import greedy, hf_greedy, hf_logits, incremental_logits, zoo_logits  # noqa: E402


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request):
    hf = CASES[request.param]()
    return hf, from_pretrained(hf)


def test_full_forward_logits_match(pair):
    hf, model = pair
    tokens, src = inputs(hf)
    expected = hf_logits(hf, tokens, src=src)
    assert expected.abs().max() > 0.1, "a near-zero model would hide mapping mistakes"
    assert (zoo_logits(model, tokens, src=src) - expected).abs().max() <= TOL


def test_cached_decoding_logits_match(pair):
    hf, model = pair
    tokens, src = inputs(hf)
    expected = hf_logits(hf, tokens, src=src)
    assert (incremental_logits(model, tokens, prefill=5, src=src) - expected).abs().max() <= TOL


def test_greedy_generation_matches(pair):
    hf, model = pair
    tokens, src = inputs(hf, length=6)
    if src is not None:
        tokens = torch.zeros(tokens.shape[0], 1, dtype=torch.long)  # T5 decodes from the pad token
    expected = hf_greedy(hf, tokens, steps=20, src=src)
    assert torch.equal(greedy(model, tokens, steps=20, src=src), expected)
    # zoo's own decode loop too: it batches, pads and caches on its own
    prompts = tokens if src is None else src
    assert generate(model, prompts, max_new_tokens=20).tokens == expected.tolist()


def test_composition_names_the_family_options():
    choices = import_config(CASES["mistral-window-4"]()).hydra.runtime.choices
    assert (choices["model/attention"], choices["model/pos"], choices["model/ffn"]) == ("sliding_window", "rope", "swiglu")


def test_kernels_agree_on_an_imported_model():
    hf = CASES["bloom-6-heads"]()
    tokens, _ = inputs(hf)
    eager = from_pretrained(hf, overrides=["model.attention.kernel=eager"])
    assert (zoo_logits(eager, tokens) - hf_logits(hf, tokens)).abs().max() <= TOL


@torch.no_grad()
def hf_incremental_logits(hf, tokens: torch.Tensor, *, prefill: int) -> torch.Tensor:
    """``transformers``' own cached decoding: the prompt at once, then one token at a time."""
    import inspect

    key = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"  # 5.25 renamed it
    out = hf(input_ids=tokens[:, :prefill], use_cache=True)
    chunks = [out.logits]
    for i in range(prefill, tokens.shape[1]):
        out = hf(input_ids=tokens[:, i : i + 1], use_cache=True, **{key: getattr(out, key)})
        chunks.append(out.logits)
    return torch.cat(chunks, dim=1)


def test_dynamic_ntk_rope_matches_in_full_forward_and_in_cached_decoding():
    """Dynamic NTK rotates each forward by its longest position: past the training length (8 here), cached
    decoding differs from a full forward, in transformers as in zoo, so each is held to its counterpart."""
    from hf_cases import LLAMA, hf_model

    rope = {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 4.0}
    hf = hf_model("LlamaConfig", "LlamaForCausalLM", **LLAMA, max_position_embeddings=8, rope_parameters=rope)
    model = from_pretrained(hf)
    tokens, _ = inputs(hf)
    assert (zoo_logits(model, tokens) - hf_logits(hf, tokens)).abs().max() <= TOL
    cached = incremental_logits(model, tokens, prefill=5)
    assert (cached - hf_incremental_logits(hf, tokens, prefill=5)).abs().max() <= TOL
    assert (cached - zoo_logits(model, tokens)).abs().max() > 1e-3, "the scaling never engaged"
