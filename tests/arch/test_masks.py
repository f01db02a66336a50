"""Causality and prefix visibility, for every position scheme and both reference kernels."""

import pytest
import torch

from zoo.errors import ConfigError
from zoo.testing import build_tiny, check_causal

POSITIONS = ["learned", "sinusoidal", "rope", "alibi", "t5", "none"]
KERNELS = ["eager", "sdpa"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("pos", POSITIONS)
def test_causal_decoder_never_sees_the_future(pos, kernel):
    model = build_tiny([f"model/pos={pos}", f"model.attention.kernel={kernel}"]).eval()
    check_causal(model)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("pos", ["learned", "rope", "alibi", "t5"])
def test_prefix_tokens_see_each_other_and_nothing_after(pos, kernel):
    model = build_tiny(["model=prefix", f"model/pos={pos}", f"model.attention.kernel={kernel}"]).eval()
    n = 10
    tokens = torch.randint(0, model.vocab_size, (2, n), generator=torch.Generator().manual_seed(0))
    prefix_len = torch.tensor([4, 7])  # one batch, two prefix lengths
    base = model(tokens, prefix_len=prefix_len)
    for b, p in enumerate(prefix_len.tolist()):
        for t in range(n):
            changed = tokens.clone()
            changed[b, t] = (changed[b, t] + 1) % model.vocab_size
            diff = (model(changed, prefix_len=prefix_len)[b] - base[b]).abs().amax(-1) > 1e-5
            seen_by = set(diff.nonzero().flatten().tolist())
            # token t is seen by every prefix position if it is in the prefix, and by all positions >= t
            expected = set(range(n)) if t < p else set(range(t, n))
            assert seen_by == expected, f"seq {b} (prefix {p}): token {t} seen by {sorted(seen_by)}"


def test_encoder_sees_both_directions():
    model = build_tiny(["model=encoder"]).eval()
    tokens = torch.randint(0, model.vocab_size, (1, 8))
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % model.vocab_size
    assert not torch.allclose(model(tokens)[0, 0], model(changed)[0, 0])


def test_encoder_cannot_generate():
    with pytest.raises(ConfigError, match="cannot generate"):
        build_tiny(["model=encoder"]).new_cache()


def test_encdec_decoder_is_causal_and_reads_the_encoder():
    model = build_tiny(["model=encdec"]).eval()
    check_causal(model)
    src = torch.randint(0, model.vocab_size, (1, 6))
    tgt = torch.randint(0, model.vocab_size, (1, 4))
    other = (src + 1) % model.vocab_size
    assert not torch.allclose(model(src, tgt), model(other, tgt))


def test_nope_in_a_bidirectional_stack_is_a_config_error():
    with pytest.raises(ConfigError, match="model/pos"):
        build_tiny(["model=encoder", "model/pos=none"])


def test_tied_and_untied_embeddings():
    tied = build_tiny(["model.tie_embeddings=true"])
    untied = build_tiny(["model.tie_embeddings=false"])
    assert tied.lm_head.weight is tied.embed.weight
    assert untied.lm_head.weight is not untied.embed.weight


def test_prefix_longer_than_the_sequence_is_refused():
    model = build_tiny(["model=prefix"])
    with pytest.raises(ValueError, match="prefix_len must lie in"):
        model(torch.zeros(2, 5, dtype=torch.long), prefix_len=torch.tensor([2, 6]))
