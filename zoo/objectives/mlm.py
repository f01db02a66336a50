"""Masked language modelling for encoders (``objective=mlm``)."""

import torch

from zoo.data.packing import Batch
from zoo.errors import ConfigError
from zoo.objectives.base import Metrics, Objective, add_aux_loss, documents, masked_cross_entropy


class MaskedLMObjective(Objective):
    """BERT's masked LM (Devlin et al. 2018, arXiv:1810.04805): predict selected tokens from both sides.

    In each row of ``tokens[:, :-1]`` (the model's ``n`` positions), ``round(mask_prob * n)``
    positions are selected among the regular (non-special) tokens; of those, ``mask_token_prob``
    become ``<mask>``, ``random_token_prob`` a uniformly random regular token, and the rest stay. The
    loss counts the selected positions only; the batch's ``loss_mask`` (about next tokens) does not
    apply.

    Args:
        mask_prob: share of positions selected (BERT: 0.15).
        mask_token_prob: of the selected, share replaced by ``<mask>`` (BERT: 0.8).
        random_token_prob: of the selected, share replaced by a random token (BERT: 0.1).
        tokenizer: the run's tokenizer (``mask_id``, ``n_regular``); required.
        seed: as :class:`~zoo.objectives.base.Objective`.
    """

    name = "mlm"
    compatible_archs = ("encoder",)

    def __init__(
        self,
        *,
        mask_prob: float = 0.15,
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
        tokenizer=None,
        seed: int = 0,
    ) -> None:
        super().__init__(tokenizer=tokenizer, seed=seed)
        if not 0 < mask_prob < 1:
            raise ConfigError("objective.mask_prob", mask_prob, "in (0, 1)")
        if mask_token_prob < 0 or random_token_prob < 0 or mask_token_prob + random_token_prob > 1:
            raise ConfigError("objective.random_token_prob", random_token_prob, f">= 0, with mask_token_prob + random_token_prob <= 1 (mask_token_prob={mask_token_prob})")
        self.mask_prob, self.mask_token_prob, self.random_token_prob = mask_prob, mask_token_prob, random_token_prob

    def make_inputs(self, batch: Batch, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``tokens (b, n)`` (corrupted), ``targets (b, n)`` (original), ``loss_mask (b, n)`` (selected), and
        ``segments (b, n)`` when the batch has ``segment_ids``."""
        tok = self._needs_tokenizer()
        original = batch["tokens"][:, :-1]
        b, n = original.shape
        g = self.next_generator() if generator is None else generator
        # select by rank of a random score, so every row has the same count; specials rank last
        score = torch.rand(b, n, generator=g).to(original.device)
        special = original >= tok.n_regular
        score = score.masked_fill(special, 2.0)
        chosen = score.argsort(dim=1)[:, : max(1, round(self.mask_prob * n))]
        selected = torch.zeros_like(special).scatter_(1, chosen, True) & ~special
        u = torch.rand(b, n, generator=g).to(original.device)
        to_mask = selected & (u < self.mask_token_prob)
        to_random = selected & (u >= self.mask_token_prob) & (u < self.mask_token_prob + self.random_token_prob)
        random_tokens = torch.randint(0, tok.n_regular, (b, n), generator=g).to(original.device)
        tokens = torch.where(to_mask, tok.mask_id, torch.where(to_random, random_tokens, original))
        x = {"tokens": tokens, "targets": original, "loss_mask": selected}
        if "segment_ids" in batch:
            x["segments"] = batch["segment_ids"][:, :-1]
        return x

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        self.check(model)
        x = self.make_inputs(batch)
        loss, metrics = masked_cross_entropy(model(x["tokens"], **documents(x)), x["targets"], x["loss_mask"])
        return add_aux_loss(model, loss, metrics), metrics

    def __repr__(self) -> str:
        return f"MaskedLMObjective(mask_prob={self.mask_prob}, mask_token_prob={self.mask_token_prob}, random_token_prob={self.random_token_prob}, seed={self.seed})"
