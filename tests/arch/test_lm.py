"""The language models of zoo/arch/lm.py: settings of the whole model."""

import torch

from zoo.testing import build_tiny


def test_scale_embed_multiplies_the_token_embeddings_by_sqrt_dim():
    """Gemma's scaled embedding equals a plain model whose (untied) embedding matrix is scaled instead."""
    scaled = build_tiny(["model.scale_embed=true", "model.tie_embeddings=false"], seed=1).eval()
    plain = build_tiny(["model.tie_embeddings=false"], seed=1).eval()
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        plain.embed.weight.mul_(scaled.dim**0.5)
    tokens = torch.randint(0, plain.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scaled(tokens), plain(tokens))
        assert (scaled(tokens) - build_tiny(["model.tie_embeddings=false"], seed=1).eval()(tokens)).abs().max() > 1e-3
