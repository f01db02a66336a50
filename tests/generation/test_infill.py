"""GLM blank infilling at generation time (zoo/generation/infill.py, zoo/arch/session.py's InfillSession):
the layout training uses, the cache against full forwards, and what cannot infill refused in one line."""

import pytest
import torch
from tiny_models import perturbed, tiny

from zoo.errors import ConfigError
from zoo.generation import fill, generate
from zoo.objectives import BlankInfillingObjective
from zoo.objectives.blank_infilling import infilling_row, infilling_sentinels
from zoo.pos import Learned2DPositions, RoPE, RoPE2D
from zoo.tokenizer import ByteTokenizer

TOK = ByteTokenizer(n_sentinels=4)
MASK, START, END, PAD = infilling_sentinels(TOK)
IDS = dict(blank_id=MASK, start_id=START, pad_id=PAD)


def glm(pos=Learned2DPositions, **kw):
    return tiny("prefix", pos=pos, vocab=TOK.vocab_size, **kw)


def one_span_rows(length: int, *, seed: int, rows: int = 2) -> dict:
    """The objective's own batch of ``rows`` texts of ``length`` tokens, each with one span: a Poisson
    rate far above the tokens to blank makes the first draw cover them all."""
    objective = BlankInfillingObjective(mask_ratio=0.15, mean_span_length=50.0, tokenizer=TOK, seed=seed)
    x = objective.make_inputs({"tokens": torch.randint(0, 256, (rows, length + 1), generator=torch.Generator().manual_seed(seed))})
    assert all(len(s) == 1 for s in x["starts"])
    return x


def recorded_calls(model, monkeypatch) -> list[dict]:
    """Every forward's keyword arguments and tokens, as the session feeds them."""
    calls, forward = [], model.forward

    def spy(tokens, **kw):
        calls.append({"tokens": tokens.clone(), **{k: v.clone() for k, v in kw.items() if torch.is_tensor(v)}})
        return forward(tokens, **kw)

    monkeypatch.setattr(model, "forward", spy)
    return calls


def test_the_positions_fed_are_the_ones_training_builds(monkeypatch):
    """Part A of two texts of different lengths, batched (so one is left-padded): what the session feeds
    each row, padding left out, is the objective's row for the same text and span: Part A, [S], and
    the span's positions (the blank's index, 1 .. l + 1)."""
    model = glm()
    rows = [(one_span_rows(length, seed=length), r) for length, r in ((30, 0), (17, 1))]
    parts = [x["tokens"][r, : int(x["prefix_len"][r])].tolist() for x, r in rows]
    spans = [int(x["lengths"][r][0]) for x, r in rows]  # round(0.15 * length) tokens: 4 and 3
    calls = recorded_calls(model, monkeypatch)
    generate(model, parts, max_new_tokens=max(spans) + 1, **IDS)
    positions = torch.cat([c["positions"] for c in calls], dim=1)
    width = max(len(p) for p in parts)
    assert (calls[0]["prefix_len"] == width).all() and calls[0]["tokens"][:, -1].tolist() == [START, START]
    for i, ((x, r), part, span) in enumerate(zip(rows, parts, spans)):
        pads, a_len = width - len(part), len(part)
        fed = slice(pads, width + 1 + span)  # this row's Part A, [S] and its span
        expected = x["positions"][r, : a_len + 1 + span]
        assert torch.equal(positions[i, fed], expected), (positions[i, fed].tolist(), expected.tolist())
        assert calls[0]["tokens"][i, pads:].tolist() == x["tokens"][r, : a_len + 1].tolist()
        assert calls[0]["valid"][i].tolist() == [False] * pads + [True] * (a_len + 1)


def full_forward_infill(model, part_a: list[int], *, max_new_tokens: int, end_id: int) -> list[int]:
    """Greedy infilling without a cache: at each step the objective lays out the text with the span
    written so far (and one more token, whose place is the one predicted), and the model reads it all."""
    blank, span = part_a.index(MASK), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            text = torch.tensor([*part_a[:blank], *span, 0, *part_a[blank + 1 :]])
            row = infilling_row(text, torch.tensor([blank]), torch.tensor([len(span) + 1]), torch.tensor([0]), mask_id=MASK, start_id=START, end_id=END, pad_id=PAD)
            n = row.prefix_len + 1 + len(span)  # Part A, [S] and the span so far
            assert row.tokens[: row.prefix_len].tolist() == part_a
            logits = model(row.tokens[None, :n], positions=row.positions[None, :n], prefix_len=torch.tensor([row.prefix_len]))
            span.append(int(logits[0, -1].argmax()))
            if span[-1] == end_id:
                break
    return span


@pytest.mark.parametrize("pos", [Learned2DPositions, RoPE2D], ids=["learned_2d", "rope_2d"])
def test_cached_infilling_is_the_full_forward_greedy_infill(pos):
    """A batch of blanks at the start, inside and at the end of texts of different lengths: through
    the KV cache, token for token the full forward's greedy span (ended at [E] or by the budget)."""
    model = glm(pos)
    prompts = [[MASK, 5, 6, 7, 8], [9, 10, 11, MASK, 12, 13, 14, 15, 16, 17], [18, 19, MASK], [20, MASK, 21]]
    # an untrained model never writes [E]: stop at a token it does write, so one span ends early
    end = generate(model, prompts[:1], max_new_tokens=3, **IDS).tokens[0][-1]
    out = generate(model, prompts, max_new_tokens=8, eos_id=end, **IDS)
    assert out.tokens == [full_forward_infill(model, p, max_new_tokens=8, end_id=end) for p in prompts]
    assert len(out.tokens[0]) <= 3 and out.tokens[0][-1] == end


def test_a_draft_infills_the_same_span():
    """Speculative decoding opens an infilling session on both models: greedy, the target's span."""
    model = glm()
    prompts = [[1, 2, MASK, 3], [4, 5, 6, 7, MASK]]
    plain = generate(model, prompts, max_new_tokens=6, eos_id=END, **IDS)
    drafted = generate(model, prompts, max_new_tokens=6, eos_id=END, draft=perturbed(model, scale=0.3), n_draft=3, **IDS)
    assert drafted.tokens == plain.tokens and drafted.drafted > 0


def test_fill_puts_the_span_in_the_blank():
    assert fill([1, MASK, 2], [7, 8, END], blank_id=MASK, end_id=END) == [1, 7, 8, 2]
    assert fill([MASK], [7], blank_id=MASK, end_id=END) == [7]  # the budget ran out before [E]
    assert fill([1, MASK, 2, MASK], [7, END, 8, 9, END], blank_id=MASK, end_id=END) == [1, 7, 2, 8, 9]
    assert fill([MASK, 2, MASK], [END, 8], blank_id=MASK, end_id=END) == [2, 8]  # an empty span, then one cut short
    assert fill([MASK, 2, MASK], [7], blank_id=MASK, end_id=END) == [7, 2, MASK]  # the second blank never reached


def full_forward_blanks(model, part_a: list[int], *, max_new_tokens: int, end_id: int) -> list[int]:
    """Greedy infilling of several blanks without a cache: at each step Part A, then each span begun so far
    in the blanks' order as Part B holds spans in training (``[S]`` and its tokens at ``(the blank's index,
    1 ..)``), read whole; an ``[E]`` ends a span and the next blank's ``[S]`` follows."""
    blanks = [i for i, t in enumerate(part_a) if t == MASK]
    spans: list[list[int]] = [[]]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            tokens, positions = list(part_a), [[i, 0] for i in range(len(part_a))]
            for blank, span in zip(blanks, spans):
                tokens += [START, *span]
                positions += [[blank, 1 + k] for k in range(1 + len(span))]
            logits = model(torch.tensor([tokens]), positions=torch.tensor([positions]), prefix_len=torch.tensor([len(part_a)]))
            new.append(int(logits[0, -1].argmax()))
            if new[-1] != end_id:
                spans[-1].append(new[-1])
            elif len(spans) == len(blanks):
                break
            else:
                spans.append([])
    return new


@pytest.mark.parametrize("pos", [Learned2DPositions, RoPE2D], ids=["learned_2d", "rope_2d"])
def test_several_blanks_are_filled_in_order_as_part_b_holds_spans(pos):
    """Prompts with two, one and three blanks, batched: through the KV cache, token for token the full
    forward's greedy spans, each [E] beginning the next blank's span, a row ending at its last [E]."""
    model = glm(pos)
    prompts = [[1, MASK, 2, 3, MASK, 4], [5, MASK, 6], [MASK, 7, MASK, 8, 9, MASK]]
    end = generate(model, prompts[:1], max_new_tokens=2, eos_id=END, **IDS).tokens[0][-1]  # a token it writes early
    out = generate(model, prompts, max_new_tokens=12, eos_id=end, **IDS)
    expected = [full_forward_blanks(model, p, max_new_tokens=12, end_id=end) for p in prompts]
    assert out.tokens == expected
    assert expected[0].count(end) >= 1  # a span ended and the next began
    # a row ends at the [E] of its last blank, not before: short rows ended every span
    assert all(len(row) == 12 or row.count(end) == p.count(MASK) for row, p in zip(out.tokens, prompts))


def test_a_draft_fills_several_blanks_as_the_target_alone():
    """Speculative decoding across spans: a draft's guesses past an [E] (the next blank's [S]) are taken back
    with the span they began, so greedy decoding gives the target's own spans, whatever the draft guessed."""
    model = glm()
    prompts = [[1, MASK, 2, 3, MASK, 4], [5, MASK, 6], [MASK, 7, MASK, 8, 9, MASK]]
    end = generate(model, prompts[:1], max_new_tokens=2, eos_id=END, **IDS).tokens[0][-1]  # a token it writes early
    plain = generate(model, prompts, max_new_tokens=12, eos_id=end, **IDS)
    assert any(row.count(end) >= 2 for row in plain.tokens), "a row goes from one span to the next"
    for scale, n_draft in ((0.3, 3), (1.0, 4)):  # a draft that guesses well, and one that guesses badly
        drafted = generate(model, prompts, max_new_tokens=12, eos_id=end, draft=perturbed(model, scale=scale), n_draft=n_draft, **IDS)
        assert drafted.tokens == plain.tokens and drafted.drafted > drafted.accepted > 0


def test_what_cannot_infill_is_refused_in_one_line():
    prompts = [[1, MASK, 2]]
    cases = [
        (tiny("causal", vocab=TOK.vocab_size), prompts, {}, r"^model='causal': a prefix decoder trained with objective=blank_infilling"),
        (tiny("encdec", vocab=TOK.vocab_size), prompts, {}, r"^model='encdec': a prefix decoder"),
        (glm(RoPE), prompts, {}, r"^model/pos='RoPE': encodes one position per token; .* need model/pos=learned_2d or rope_2d$"),
        (glm(), [[1, 2, 3]], {}, r"^generate.prompts='blanks per prompt \[0\]': at least one blank"),
        (glm(), [[1, MASK, 2], [MASK, 3, MASK]], {"eos_id": None}, r"^generate.eos_id=None: the id of \[E\]"),
        (glm(), prompts, {"compiled": True}, r"^generate.compiled=True: false or null: InfillSession decodes on the eager cache"),
    ]
    for model, rows, extra, message in cases:
        with pytest.raises(ConfigError, match=message) as error:
            generate(model, rows, max_new_tokens=3, **{"eos_id": END, **IDS, **extra})
        assert "\n" not in str(error.value)
