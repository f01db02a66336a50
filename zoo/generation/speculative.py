"""Speculative decoding (Leviathan et al. 2023, arXiv:2211.17192; Chen et al. 2023, arXiv:2302.01318).

A small draft model proposes ``n_draft`` tokens one by one; the target model scores them all in one
forward pass and keeps the longest prefix it agrees with, plus one token of its own. Greedy: a draft
token is kept when it is the target's argmax, so the output is the target's greedy output exactly.
Sampling: draft token ``x`` is kept with probability ``min(1, p(x) / q(x))``, and on rejection a
token is drawn from ``norm(max(0, p - q))``, so every token is distributed as the target's ``p``.

In a batch every row keeps the same number of tokens (the fewest any unfinished row accepted), so
the caches stay one length; cutting a row's accepted run short at a point decided by the tokens so
far leaves its distribution unchanged. Rejected tokens are dropped from both caches with
``truncate``; rolling (sliding-window) caches are built with room to take them back.

Letters: ``b`` batch, ``g`` draft tokens this round, ``v`` vocabulary.
"""

from collections.abc import Sequence

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.generation.infill import filling
from zoo.generation.prompts import evaluating
from zoo.generation.result import Generation, trim_at_eos
from zoo.generation.sampling import draw, probabilities, restrict, seeded_generator


def speculative_generate(
    target: nn.Module,
    draft: nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    n_draft: int = 4,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    start_id: int = 0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    allowed_first: Sequence[Sequence[int] | None] | None = None,
    blank_id: int | None = None,
) -> Generation:
    """:func:`zoo.generation.generate` with a draft model; see there for the arguments.

    Returns: a :class:`Generation` whose ``acceptance_rate`` is the share of draft tokens accepted.
    """
    if n_draft < 1:
        raise ConfigError("generate.n_draft", n_draft, ">= 1 draft tokens per round")
    if getattr(draft, "vocab_size", None) != getattr(target, "vocab_size", None):
        raise ConfigError(
            "generate.draft", f"vocab_size={getattr(draft, 'vocab_size', None)}",
            f"the draft must share the target's vocabulary (vocab_size={getattr(target, 'vocab_size', None)})",
        )
    greedy = temperature == 0
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    with evaluating(target, draft), torch.inference_mode():
        room = max_new_tokens + n_draft + 1
        t = target.open_session(prompts, pad_id=pad_id, start_id=start_id, room=room, rollback=n_draft + 1, **filling(blank_id, eos_id))
        d = draft.open_session(prompts, pad_id=pad_id, start_id=start_id, room=room, rollback=n_draft + 1, **filling(blank_id, eos_id))
        ends_needed = torch.as_tensor(t.ends_needed, device=t.device)  # a row filling several blanks ends at its last [E]
        gen = seeded_generator(seed, generator, t.device)
        b = len(prompts)
        # Prefill both models with the whole prompt in one pass (a prefix LM's prompt must be read whole);
        # afterwards each round feeds the previous round's last token with the new drafts.
        # both restricted alike, so the accepted tokens stay distributed as the restricted target's
        first_t, first_d = (restrict(session.feed(session.prompt)[:, -1], allowed_first) for session in (t, d))
        pend_t = pend_d = t.prompt.new_empty(b, 0)
        done = torch.zeros(b, dtype=torch.bool, device=t.device)
        ended = torch.zeros(b, dtype=torch.long, device=t.device)
        chunks: list[torch.Tensor] = []
        produced = drafted = accepted = calls = 0
        while produced < max_new_tokens:
            g = min(n_draft, max_new_tokens - produced - 1)
            base_d = d.fed
            drafts, qs = [], []
            feed = pend_d
            for i in range(g):
                logits = first_d if i == 0 and feed.shape[1] == 0 else d.feed(feed)[:, -1]
                if greedy:
                    x = logits.argmax(dim=-1)
                else:
                    qs.append(probabilities(logits, **sampling))
                    x = draw(qs[-1], generator=gen)
                drafts.append(x)
                feed = x[:, None]
            proposal = torch.stack(drafts, dim=1) if g else pend_t.new_empty(b, 0)  # (b, g)
            base_t = t.fed
            if pend_t.shape[1]:
                scores = t.feed(torch.cat([pend_t, proposal], dim=1))  # (b, g + 1, v)
            else:  # the first round: the prefill already scored the first draft
                scores = torch.cat([first_t[:, None], t.feed(proposal)], dim=1) if g else first_t[:, None]
            calls += 1
            if greedy:
                best = scores.argmax(dim=-1)  # (b, g + 1)
                agree = best[:, :g] == proposal
            else:
                p = probabilities(scores, **sampling)
                if g:
                    q = torch.stack(qs, dim=1)
                    px = p[:, :g].gather(-1, proposal[..., None])[..., 0]
                    qx = q.gather(-1, proposal[..., None])[..., 0]
                    u = torch.rand(b, g, generator=gen, device=t.device)
                    agree = u * qx < px  # accept with probability min(1, p(x) / q(x))
                else:
                    agree = proposal.bool()
            n_row = agree.long().cumprod(dim=1).sum(dim=1)  # (b,) accepted drafts per row
            active = ~done
            n = int(n_row[active].min())
            accepted += int(n_row[active].sum())
            drafted += g * int(active.sum())
            if greedy:
                last = best[:, n]
            elif n == g:
                last = draw(p[:, g], generator=gen)  # every draft accepted: one more token from the target
            else:
                residual = (p[:, n] - q[:, n]).clamp(min=0)
                mass = residual.sum(dim=-1, keepdim=True)
                # p == q leaves no residual (and then nothing is ever rejected): fall back to p
                residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), p[:, n])
                last = torch.where(n_row > n, proposal[:, n], draw(residual, generator=gen))
            emitted = torch.cat([proposal[:, :n], last[:, None]], dim=1)  # (b, n + 1)
            t.truncate(base_t + pend_t.shape[1] + n)  # the pending token and the accepted drafts
            pend_t = last[:, None]
            if g:
                keep = min(n, g - 1)  # the draft never fed its own last proposal
                d.truncate(base_d + pend_d.shape[1] + keep)
                pend_d = emitted[:, keep:]
            else:
                pend_d = torch.cat([pend_d, pend_t], dim=1)
            chunks.append(emitted.masked_fill(done[:, None], pad_id))
            produced += n + 1
            if eos_id is not None:
                ended += ((emitted == eos_id) & ~done[:, None]).sum(dim=1)
                done |= ended >= ends_needed
                if bool(done.all()):
                    break
        out = torch.cat(chunks, dim=1)[:, :max_new_tokens] if chunks else pend_t.new_empty(b, 0)
        return Generation(tokens=trim_at_eos(out, eos_id, ends=ends_needed.expand(b).tolist()), drafted=drafted, accepted=accepted, target_calls=calls)
