"""GLM blank infilling (zoo/objectives/blank_infilling.py): the batch builder by hand and on random rows,
the document-level rows behind [gMASK], no leak from later Part B tokens, the loss on Part B only, and bad
settings refused."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.objectives import BlankInfillingObjective
from zoo.objectives.blank_infilling import SentenceTable, document_span, infilling_row, place_spans, sentence_bounds, span_lengths
from zoo.testing import build_tiny
from zoo.tokenizer import ByteTokenizer

TOK = ByteTokenizer(n_sentinels=4)
MASK, START, END, PAD = TOK.mask_id, TOK.sentinel_ids[0], TOK.sentinel_ids[1], TOK.pad_id
GMASK = TOK.sentinel_ids[2]
CONF = Path(__file__).resolve().parents[2] / "conf" / "objective"


def two_d_model(pos: str = "learned_2d", **kw):
    return build_tiny(["model=prefix", f"model/pos={pos}", f"model.vocab_size={TOK.vocab_size}", "model.max_seq_len=64"], **kw)


@pytest.mark.parametrize("order", [[1, 0], [0, 1]])
def test_figure_2_of_the_paper_by_hand(order):
    """GLM's Figure 2: x1..x6 with spans [x3] and [x5, x6]; positions 0-based (the figure counts from 1)."""
    x = torch.tensor([11, 12, 13, 14, 15, 16])
    row = infilling_row(x, torch.tensor([2, 4]), torch.tensor([1, 2]), torch.tensor(order), mask_id=MASK, start_id=START, end_id=END, pad_id=PAD)
    assert row.prefix_len == 5 and row.tokens[:5].tolist() == [11, 12, MASK, 14, MASK]
    assert row.positions[:5].tolist() == [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0]]
    assert row.targets[:5].tolist() == [PAD] * 5 and row.loss_mask.tolist() == [False] * 5 + [True] * 5
    if order == [1, 0]:  # the figure's order: [x5, x6] first
        assert row.tokens[5:].tolist() == [START, 15, 16, START, 13]
        assert row.targets[5:].tolist() == [15, 16, END, 13, END]
        # the figure: position 1 = 5 5 5 3 3, position 2 = 1 2 3 1 2 (1-based)
        assert row.positions[5:, 0].tolist() == [4, 4, 4, 2, 2] and row.positions[5:, 1].tolist() == [1, 2, 3, 1, 2]
    else:
        assert row.tokens[5:].tolist() == [START, 13, START, 15, 16]
        assert row.targets[5:].tolist() == [13, END, 15, 16, END]
        assert row.positions[5:, 0].tolist() == [2, 2, 4, 4, 4] and row.positions[5:, 1].tolist() == [1, 2, 1, 2, 3]


def test_part_b_follows_a_random_order():
    objective = BlankInfillingObjective(mask_ratio=0.5, mean_span_length=1.0, tokenizer=TOK, seed=0)
    x = objective.make_inputs({"tokens": torch.randint(0, 256, (64, 41))})
    firsts = [int(x["positions"][r, int(x["prefix_len"][r]), 0]) for r in range(64)]
    # the first span written is the text's first in some rows and not in others
    assert 0 < sum(f == int((x["tokens"][r] == MASK).nonzero()[0]) for r, f in enumerate(firsts)) < 64


def infill(x: dict, row: int, blank: int = MASK) -> list[int]:
    """The original text of ``row``, rebuilt from Part A with each ``blank`` replaced by the Part B span
    positioned at it (its tokens after ``[S]``)."""
    tokens, positions, a_len = x["tokens"][row].tolist(), x["positions"][row], int(x["prefix_len"][row])
    spans: dict[int, list[int]] = {}
    for i in range(a_len, len(tokens)):
        if x["loss_mask"][row, i]:
            at, k = positions[i].tolist()
            spans.setdefault(at, [])
            assert k == len(spans[at]) + 1, "intra-span ids count 1, 2, ... within a span"
            assert (tokens[i] == START) == (k == 1)
            spans[at].append(tokens[i])
    out = []
    for i, t in enumerate(tokens[:a_len]):
        out.extend(spans.pop(i)[1:] if t == blank else [t])
    assert not spans, "every span is positioned at a <mask>"
    return out


@pytest.mark.parametrize("length, ratio, rate", [(40, 0.15, 3.0), (64, 0.5, 1.0), (7, 0.15, 3.0), (33, 0.3, 6.0)])
def test_every_masked_token_is_in_part_b_exactly_once(length, ratio, rate):
    objective = BlankInfillingObjective(mask_ratio=ratio, mean_span_length=rate, tokenizer=TOK, seed=length)
    text = torch.randint(0, 256, (6, length + 1))
    x = objective.make_inputs({"tokens": text})
    n_masked = max(1, round(ratio * length))
    for row in range(6):
        starts, lengths, a_len = x["starts"][row], x["lengths"][row], int(x["prefix_len"][row])
        assert int(lengths.sum()) == n_masked and (lengths > 0).all()
        assert ((starts[1:] - (starts[:-1] + lengths[:-1])) >= 1).all(), "a kept token between two spans"
        part_a = x["tokens"][row, :a_len]
        assert int((part_a == MASK).sum()) == len(starts) and a_len == length - n_masked + len(starts)
        assert infill(x, row) == text[row, :-1].tolist()
        real = a_len + n_masked + len(starts)  # Part A, then each span with its [S]
        assert x["loss_mask"][row].tolist() == [False] * a_len + [True] * (real - a_len) + [False] * (x["tokens"].shape[1] - real)
        assert (x["tokens"][row, real:] == PAD).all() and (x["positions"][row, real:] == 0).all()
        assert x["positions"][row, :a_len].tolist() == [[i, 0] for i in range(a_len)]
        # targets: each Part B token predicts the next of its span, the last one [E]
        b_tokens, b_targets = x["tokens"][row, a_len:real], x["targets"][row, a_len:real]
        assert torch.equal(b_targets[:-1][b_tokens[1:] != START], b_tokens[1:][b_tokens[1:] != START])
        assert int((b_targets == END).sum()) == len(starts) and b_targets[-1] == END
    assert x["tokens"].shape[1] == max(length + 2 * len(s) for s in x["starts"])


@pytest.mark.parametrize("length", [2, 3, 40])
def test_document_rows_blank_the_end_behind_gmask(length):
    """GLM's document-level objective: one span ending the row, half to all but one of its tokens, behind
    [gMASK]; Part B writes it after [S] and ends it with [E]."""
    objective = BlankInfillingObjective(document_ratio=1.0, tokenizer=TOK, seed=length)
    text = torch.randint(0, 256, (32, length + 1))
    x = objective.make_inputs({"tokens": text})
    spans = []
    for row in range(32):
        (start,), (span,) = x["starts"][row].tolist(), x["lengths"][row].tolist()
        a_len = int(x["prefix_len"][row])
        assert start + span == length and (length + 1) // 2 <= span <= length - 1
        assert x["tokens"][row, :a_len].tolist() == [*text[row, :start].tolist(), GMASK] and MASK not in x["tokens"][row].tolist()
        assert x["tokens"][row, a_len].item() == START and x["targets"][row, a_len + span].item() == END
        assert infill(x, row, blank=GMASK) == text[row, :-1].tolist()
        spans.append(span)
    if length == 40:  # uniform over 20..39: the whole range is drawn
        assert min(spans) <= 22 and max(spans) >= 37
    g = torch.Generator().manual_seed(0)
    drawn = {int(document_span(4, generator=g)[1]) for _ in range(50)}
    assert drawn == {2, 3}, "50-100% of 4 tokens, one kept to read"


def test_a_document_ratio_mixes_the_two_kinds_of_row_and_zero_keeps_the_spans():
    text = {"tokens": torch.randint(0, 256, (400, 41))}
    x = BlankInfillingObjective(document_ratio=0.3, tokenizer=TOK, seed=5).make_inputs(text)
    documents = [GMASK in x["tokens"][r].tolist() for r in range(400)]
    assert 0.24 < sum(documents) / 400 < 0.36
    for r in range(400):  # a row is one kind or the other, never both
        assert (MASK in x["tokens"][r].tolist()) != documents[r]
    plain = BlankInfillingObjective(tokenizer=TOK, seed=5).make_inputs(text)
    zero = BlankInfillingObjective(document_ratio=0.0, tokenizer=TOK, seed=5).make_inputs(text)
    assert torch.equal(plain["tokens"], zero["tokens"]), "no draw is spent on documents without them"


def test_a_model_trained_on_documents_continues_behind_gmask():
    ids = [5, 6, 7]
    assert BlankInfillingObjective(tokenizer=TOK).continuation_prompt(ids)[0] == [*ids, MASK]
    documents = BlankInfillingObjective(document_ratio=0.5, tokenizer=TOK)
    prompt, how = documents.continuation_prompt(ids)
    assert prompt == [*ids, GMASK] and how["blank_id"] == GMASK
    x = documents.continuation_inputs({"tokens": torch.randint(0, 256, (2, 20))}, prefix_len=8)
    assert (x["tokens"][:, 8] == GMASK).all() and (x["tokens"][:, :8] != GMASK).all()


def test_span_lengths_follow_the_paper():
    """Poisson(3) lengths (zeros redrawn: mean 3 / (1 - e^-3) = 3.16; the last span of a row is cut to fit)."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.cat([span_lengths(150, mean_span_length=3.0, generator=g) for _ in range(40)])
    assert 2.9 < lengths.float().mean() < 3.3 and lengths.min() >= 1
    assert place_spans(3, torch.tensor([1, 1]), generator=g).tolist() == [0, 2]  # the only way: x . x
    with pytest.raises(ValueError, match="do not fit"):
        place_spans(3, torch.tensor([2, 1]), generator=g)


def test_draws_are_seeded_and_resumable():
    batch = {"tokens": torch.randint(0, 256, (4, 50))}
    objective = BlankInfillingObjective(tokenizer=TOK, seed=7)
    first = objective.make_inputs(batch)["tokens"]
    state = objective.state_dict()
    second = objective.make_inputs(batch)["tokens"]
    resumed = BlankInfillingObjective(tokenizer=TOK)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.make_inputs(batch)["tokens"], second) and not torch.equal(first, second)


@pytest.mark.parametrize("pos", ["learned_2d", "rope_2d"])
def test_no_leak_from_later_part_b_tokens(pos):
    """Changing a Part B token changes no logit of Part A nor of an earlier Part B position; a Part A
    token reaches every position (Part A is read bidirectionally, Part B reads it)."""
    model = two_d_model(pos).eval()
    objective = BlankInfillingObjective(mask_ratio=0.3, tokenizer=TOK, seed=1)
    x = objective.make_inputs({"tokens": torch.randint(0, 256, (2, 41))})
    kw = {"positions": x["positions"], "prefix_len": x["prefix_len"]}
    with torch.no_grad():
        base = model(x["tokens"], **kw)
        a_len, end = int(x["prefix_len"][0]), int(x["loss_mask"][0].nonzero().max()) + 1
        for t in range(a_len, end):
            changed = x["tokens"].clone()
            changed[0, t] = (changed[0, t] + 1) % 256
            out = model(changed, **kw)
            assert torch.allclose(out[0, :t], base[0, :t], atol=1e-5), f"a position before {t} sees token {t}"
            assert not torch.allclose(out[0, t], base[0, t], atol=1e-5)
            assert torch.equal(out[1], base[1])
        changed = x["tokens"].clone()
        changed[0, a_len - 1] = (changed[0, a_len - 1] + 1) % 256
        out = model(changed, **kw)
        assert not torch.isclose(out[0, : a_len - 1], base[0, : a_len - 1], atol=1e-5).all(-1).any()
        assert not torch.isclose(out[0, a_len:end], base[0, a_len:end], atol=1e-5).all(-1).any()


@pytest.mark.parametrize("pos", ["learned_2d", "rope_2d"])
def test_a_padded_row_scores_as_it_would_alone(pos):
    """Right padding to the batch's longest row changes none of a row's logits."""
    model = two_d_model(pos).eval()
    objective = BlankInfillingObjective(tokenizer=TOK, seed=3)
    x = objective.make_inputs({"tokens": torch.randint(0, 256, (4, 50))})
    with torch.no_grad():
        batch = model(x["tokens"], positions=x["positions"], prefix_len=x["prefix_len"])
        for row in range(4):
            real = int(x["loss_mask"][row].nonzero().max()) + 1
            alone = model(x["tokens"][row : row + 1, :real], positions=x["positions"][row : row + 1, :real], prefix_len=x["prefix_len"][row : row + 1])
            torch.testing.assert_close(alone[0], batch[row, :real], atol=1e-5, rtol=1e-5)


def test_loss_counts_part_b_only():
    model = two_d_model()
    objective = BlankInfillingObjective(tokenizer=TOK, seed=2)
    batch = {"tokens": torch.randint(0, 256, (3, 33))}
    x = BlankInfillingObjective(tokenizer=TOK, seed=2).make_inputs(batch)
    loss, metrics = objective(model, batch)
    logits = model(x["tokens"], positions=x["positions"], prefix_len=x["prefix_len"])
    nll = F.cross_entropy(logits.flatten(0, 1), x["targets"].flatten(), reduction="none").view_as(x["targets"])
    b_only = torch.cat([nll[r, int(x["prefix_len"][r]) : int(x["prefix_len"][r]) + int(x["loss_mask"][r].sum())] for r in range(3)])
    torch.testing.assert_close(loss, b_only.mean())
    assert metrics["n_tokens"] == len(b_only) == sum(int(le.sum()) + len(le) for le in x["lengths"])
    loss.backward()
    assert model.stack.pos.span_weight.grad[1:].abs().sum() > 0, "Part B's intra-span ids are trained"


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"mask_ratio": 0.0}, "objective.mask_ratio"),
        ({"mask_ratio": 0.6}, "objective.mask_ratio"),
        ({"mean_span_length": 0.0}, "objective.mean_span_length"),
        ({"mean_span_length": -3.0}, "objective.mean_span_length"),
        ({"document_ratio": -0.1}, "objective.document_ratio"),
        ({"document_ratio": 1.5}, "objective.document_ratio"),
    ],
)
def test_bad_settings_are_refused(kwargs, key):
    with pytest.raises(ConfigError) as error:
        BlankInfillingObjective(tokenizer=TOK, **kwargs)
    assert str(error.value).startswith(f"{key}=") and "\n" not in str(error.value)


def test_what_it_cannot_train_is_refused_in_one_line():
    batch = {"tokens": torch.randint(0, 256, (1, 20))}
    with pytest.raises(ConfigError, match=r"^tokenizer.n_sentinels=1: >= 2"):
        BlankInfillingObjective(tokenizer=ByteTokenizer(n_sentinels=1))
    with pytest.raises(ConfigError, match=r"^tokenizer.n_sentinels=2: >= 3 with objective.document_ratio > 0"):
        BlankInfillingObjective(document_ratio=0.5, tokenizer=ByteTokenizer(n_sentinels=2))
    with pytest.raises(ConfigError, match=r"^tokenizer=None: objective=blank_infilling needs a tokenizer"):
        BlankInfillingObjective().make_inputs(batch)
    with pytest.raises(ConfigError, match=r"^objective='blank_infilling': needs model=prefix, not model=causal"):
        BlankInfillingObjective(tokenizer=TOK)(build_tiny(["model=causal", f"model.vocab_size={TOK.vocab_size}"]), batch)
    for pos in ("rope", "learned", "alibi", "t5", "sinusoidal"):
        model = build_tiny(["model=prefix", f"model/pos={pos}", f"model.vocab_size={TOK.vocab_size}"])
        with pytest.raises(ConfigError, match=r"^model/pos='\w+': encodes one position per token; .* need model/pos=learned_2d or rope_2d$"):
            BlankInfillingObjective(tokenizer=TOK)(model, batch)


def test_the_config_builds_it():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    objective = instantiate(OmegaConf.load(CONF / "blank_infilling.yaml"))(tokenizer=TOK)
    assert objective.name == "blank_infilling" and (objective.mask_ratio, objective.mean_span_length) == (0.15, 3.0)


SMOKE = [
    "experiment=smoke",
    "model=prefix",
    "objective=blank_infilling",
    "data.corpus.sources=[pydoc]",
    "data.corpus.max_bytes=150000",
    "logger=none",
    "trainer.eval_every=0",
    "trainer.final_eval_batches=2",
    "trainer.quiet=true",
    "trainer.sample.max_new_tokens=4",
]


@pytest.mark.parametrize("pos", ["learned_2d", "rope_2d"])
def test_zoo_train_runs_it_end_to_end_and_the_loss_falls(tmp_path, pos):
    """``zoo-train experiment=smoke model=prefix model/pos=<2D> objective=blank_infilling``: 20 steps."""
    from zoo.train import run

    result = run([*SMOKE, f"model/pos={pos}", "trainer.max_steps=20", "optim.lr=1e-2"], out_dir=tmp_path)
    assert result.status == "ok" and len(result.history) == 20
    first, last = sum(result.history[:3]) / 3, sum(result.history[-3:]) / 3
    assert last < first - 0.5, result.history
    assert result.metrics["val_loss"] < first and "val_bpb" not in result.metrics


@pytest.mark.parametrize("pos", ["learned_2d", "rope_2d"])
def test_infilling_a_span_with_a_kv_cache_equals_the_full_forward(pos):
    """GLM's generation: read Part A and ``[S]``, then one span token at a time at its 2D position,
    through the cache; the logits are the full forward's."""
    model = two_d_model(pos).eval()
    x = BlankInfillingObjective(mask_ratio=0.3, tokenizer=TOK, seed=4).make_inputs({"tokens": torch.randint(0, 256, (1, 30))})
    a_len, end = int(x["prefix_len"][0]), int(x["loss_mask"][0].nonzero().max()) + 1
    tokens, positions, prefix = x["tokens"][:, :end], x["positions"][:, :end], x["prefix_len"]
    with torch.no_grad():
        full = model(tokens, positions=positions, prefix_len=prefix)
        cache = model.new_cache()
        steps = [model(tokens[:, : a_len + 1], positions=positions[:, : a_len + 1], prefix_len=prefix, cache=cache)]
        for t in range(a_len + 1, end):
            steps.append(model(tokens[:, t : t + 1], positions=positions[:, t : t + 1], prefix_len=prefix, cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


SMASK = TOK.sentinel_ids[3]


def test_sentence_bounds_split_at_line_breaks_and_stops_before_whitespace():
    text = "x = os.path.join(a)\nIt ends. Here? No!\nlast"
    row = torch.tensor(TOK.encode(text))
    starts, lengths = sentence_bounds(row, SentenceTable.of(TOK))
    pieces = [text[s : s + n] for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)]
    assert pieces == ["x = os.path.join(a)\n", "It ends.", " Here?", " No!\n", "last"]


@pytest.mark.parametrize("seed", range(5))
def test_sentence_rows_blank_whole_sentences_behind_smask(seed):
    """GLM's sentence-level objective: every span is a run of whole sentences, together at least mask_ratio
    of the row, behind [sMASK]; Part B writes them back."""
    lines = [f"line {i} says {'x' * (i % 7)}.\n" for i in range(12)]
    text = "".join(lines)[:120]
    tokens = torch.tensor(TOK.encode(text + "!"))[None].expand(4, -1)
    objective = BlankInfillingObjective(sentence_ratio=1.0, mask_ratio=0.15, tokenizer=TOK, seed=seed)
    x = objective.make_inputs({"tokens": tokens})
    bounds = {0} | {i + 1 for i, c in enumerate(text) if c == "\n"} | {len(text)}
    for row in range(4):
        starts, lengths = x["starts"][row].tolist(), x["lengths"][row].tolist()
        assert sum(lengths) >= round(0.15 * len(text))
        for start, n in zip(starts, lengths, strict=True):
            assert start in bounds and start + n in bounds, "a span starts and ends at sentence bounds"
        a_len = int(x["prefix_len"][row])
        assert x["tokens"][row, :a_len].tolist().count(SMASK) == len(starts) and MASK not in x["tokens"][row].tolist()
        assert infill(x, row, blank=SMASK) == tokens[row, :-1].tolist()


def test_a_row_that_is_one_sentence_takes_short_spans_and_ratios_mix():
    one = BlankInfillingObjective(sentence_ratio=1.0, tokenizer=TOK, seed=0).make_inputs({"tokens": torch.full((2, 41), ord("a"))})
    assert MASK in one["tokens"][0].tolist() and SMASK not in one["tokens"][0].tolist()
    text = torch.tensor(TOK.encode("ab.\n" * 10 + "z"))[None].expand(400, -1)
    x = BlankInfillingObjective(document_ratio=0.3, sentence_ratio=0.3, tokenizer=TOK, seed=5).make_inputs({"tokens": text})
    kinds = [{GMASK, SMASK, MASK} & set(x["tokens"][r].tolist()) for r in range(400)]
    assert all(len(k) == 1 for k in kinds), "a row is one kind"
    for blank in (GMASK, SMASK, MASK):
        assert 0.24 < sum(blank in k for k in kinds) / 400 < 0.46
    plain = BlankInfillingObjective(document_ratio=0.3, tokenizer=TOK, seed=5).make_inputs({"tokens": text})
    zero = BlankInfillingObjective(document_ratio=0.3, sentence_ratio=0.0, tokenizer=TOK, seed=5).make_inputs({"tokens": text})
    assert torch.equal(plain["tokens"], zero["tokens"]), "no draw is spent on sentences without them"


def test_sentence_settings_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^objective.sentence_ratio=0.6: in \[0, 1 - objective.document_ratio\] = \[0, 0.5\]"):
        BlankInfillingObjective(document_ratio=0.5, sentence_ratio=0.6, tokenizer=TOK)
    with pytest.raises(ConfigError, match=r"^tokenizer.n_sentinels=3: >= 4 with objective.sentence_ratio > 0"):
        BlankInfillingObjective(sentence_ratio=0.5, tokenizer=ByteTokenizer(n_sentinels=3))


def test_sentences_of_a_bpe_tokenizer_end_where_its_tokens_break_lines_or_stop(tmp_path):
    from zoo.tokenizer import BPETokenizer

    text = "The cat sat. The dog ran!\nA bird flew? Yes.\n" * 40
    tok = BPETokenizer.train(documents=[text], vocab_size=300, n_sentinels=4, cache_dir=tmp_path)
    row = torch.tensor(tok.encode(text[:200]))
    starts, lengths = sentence_bounds(row, SentenceTable.of(tok))
    pieces = [tok.decode(row[s : s + n].tolist()) for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)]
    assert "".join(pieces) == tok.decode(row.tolist())
    for piece in pieces[:-1]:  # every sentence but the row's cut last one ends with its stop or line break
        assert piece.rstrip(" ").endswith((".", "!", "?", "\n")), pieces
    assert len(pieces) >= 12
