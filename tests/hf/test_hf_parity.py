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
