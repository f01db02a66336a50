"""Objectives: model inputs, targets and loss masks on hand-built batches, and the arch check."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.objectives import (
    BlankInfillingObjective,
    CausalLMObjective,
    MaskedLMObjective,
    PrefixLMObjective,
    SpanCorruptionObjective,
    check_compatible,
    random_spans_noise_mask,
    replace_spans,
)
from zoo.tokenizer import ByteTokenizer

TOK = ByteTokenizer(n_sentinels=16)
CONF = Path(__file__).resolve().parents[1] / "conf" / "objective"


class NextToken(nn.Module):
    """Predicts ``token + 1`` (mod vocab) with confidence; records how it was called."""

    def __init__(self, arch: str, vocab: int = TOK.vocab_size, aux: float | None = None) -> None:
        super().__init__()
        self.arch, self.aux, self.calls = arch, aux, []
        self.table = nn.Parameter(5.0 * torch.eye(vocab).roll(1, dims=1))

    def forward(self, *inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        self.calls.append((inputs, kwargs))
        return self.table[inputs[-1]]

    def aux_loss(self):
        return None if self.aux is None else torch.tensor(self.aux)


def expected_ce(logits, targets, mask):
    logp = F.log_softmax(logits.float(), -1).gather(-1, targets[..., None])[..., 0]
    return -(logp[mask]).mean()


def test_causal_lm_targets_and_mask():
    model = NextToken("causal")
    batch = {"tokens": torch.tensor([[5, 6, 0, 8, 9]]), "loss_mask": torch.tensor([[True, False, True, True]])}
    objective = CausalLMObjective(tokenizer=TOK)
    x = objective.make_inputs(batch)
    assert x["tokens"].tolist() == [[5, 6, 0, 8]] and x["targets"].tolist() == [[6, 0, 8, 9]]
    loss, metrics = objective(model, batch)
    assert torch.allclose(loss, expected_ce(model.table[x["tokens"]], x["targets"], batch["loss_mask"]))
    # predictions 6, 7, 1, 9: right at t = 0 and 3, both counted; t = 1 (wrong) is masked out
    assert metrics["n_tokens"] == 3 and metrics["n_bytes"] == 3
    assert metrics["accuracy"].item() == pytest.approx(2 / 3)
    assert metrics["nll_sum"].item() == pytest.approx(3 * loss.item(), rel=1e-6)
    assert "aux_loss" not in metrics


def test_aux_loss_is_added_and_reported():
    batch = {"tokens": torch.tensor([[1, 2, 3]])}
    plain, _ = CausalLMObjective()(NextToken("causal"), batch)
    loss, metrics = CausalLMObjective()(NextToken("causal", aux=0.25), batch)
    assert loss.item() == pytest.approx(plain.item() + 0.25)
    assert metrics["aux_loss"].item() == 0.25 and metrics["loss"].item() == pytest.approx(plain.item())
    assert "n_bytes" not in metrics  # no tokenizer: no bytes to count


def test_prefix_lm_counts_only_after_the_prefix():
    model = NextToken("prefix")
    tokens = torch.arange(18).view(2, 9)
    loss_mask = torch.ones(2, 8, dtype=torch.bool)
    loss_mask[1, 5] = False
    objective = PrefixLMObjective(prefix_fraction=(0.5, 0.5))
    x = objective.make_inputs({"tokens": tokens, "loss_mask": loss_mask})
    assert x["prefix_len"].tolist() == [4, 4]
    # position 3, the prefix's last, predicts token 4, the first it cannot see
    assert x["loss_mask"].int().tolist() == [[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 1, 1]]
    loss, metrics = objective(model, {"tokens": tokens, "loss_mask": loss_mask})
    assert torch.equal(model.calls[0][1]["prefix_len"], torch.tensor([4, 4]))
    assert metrics["n_tokens"] == 9 and metrics["accuracy"] == 1


def test_prefix_lengths_are_random_in_range_and_resumable():
    batch = {"tokens": torch.zeros(256, 9, dtype=torch.long)}
    objective = PrefixLMObjective(prefix_fraction=(0.25, 0.75), seed=3)
    first = objective.make_inputs(batch)["prefix_len"]
    assert first.min() == 2 and first.max() == 6
    state = objective.state_dict()
    second = objective.make_inputs(batch)["prefix_len"]
    resumed = PrefixLMObjective(prefix_fraction=(0.25, 0.75))
    resumed.load_state_dict(state)
    assert torch.equal(resumed.make_inputs(batch)["prefix_len"], second) and not torch.equal(first, second)
    with pytest.raises(ConfigError, match="objective.prefix_fraction"):
        PrefixLMObjective(prefix_fraction=(0.8, 0.2))


def test_replace_spans_by_hand():
    tokens = torch.arange(1, 11)[None]
    spans = torch.tensor([[0, 0, 1, 1, 0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    sentinels = torch.tensor([100, 101, 102])
    assert replace_spans(tokens, spans, sentinels).tolist() == [[1, 2, 100, 5, 6, 7, 101, 9, 10]]
    assert replace_spans(tokens, ~spans, sentinels).tolist() == [[100, 3, 4, 101, 8, 102]]


def run_lengths(row):
    """Lengths of the runs of ``True`` in a bool row."""
    out, n = [], 0
    for bit in row.tolist() + [False]:
        if bit:
            n += 1
        elif n:
            out, n = out + [n], 0
    return out


def test_t5_noise_mask():
    g = torch.Generator().manual_seed(0)
    noise = random_spans_noise_mask(100, noise_density=0.15, mean_span_length=3, batch_size=64, generator=g)
    assert noise.sum(1).eq(15).all()
    assert not noise[:, 0].any() and noise[:, -1].all(), "kept first, noise last, as T5"
    spans = [tuple(run_lengths(row)) for row in noise]
    assert all(len(s) == 5 for s in spans), "round(15 / 3) spans"
    assert all(len(run_lengths(~row)) == 5 for row in noise), "as many kept spans"
    assert len(set(spans)) > 32, "span lengths are random"


def reconstruct(src, tgt):
    spans, current = {}, None
    for t in tgt:
        if t == TOK.eos_id:
            break
        if t in TOK.sentinel_ids:
            current = spans.setdefault(t, [])
        else:
            current.append(t)
    out = []
    for t in src:
        if t == TOK.eos_id:
            break
        out += spans[t] if t in TOK.sentinel_ids else [t]
    return out


def test_span_corruption_reconstructs_the_original():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (16, 65), generator=g)
    objective = SpanCorruptionObjective(tokenizer=TOK)
    x = objective.make_inputs({"tokens": tokens}, generator=torch.Generator().manual_seed(2))
    # 10 noise tokens in 3 spans: src 65 - 10 + 3 + <eos>, targets 10 + 3 + <eos>
    assert x["src"].shape == (16, 59) and x["targets"].shape == (16, 14)
    for row, src, tgt in zip(tokens.tolist(), x["src"].tolist(), x["targets"].tolist()):
        assert reconstruct(src, tgt) == row
        assert [t for t in src if t in TOK.sentinel_ids] == TOK.sentinel_ids[:3] == [t for t in tgt if t in TOK.sentinel_ids]
        assert tgt[0] == TOK.sentinel_ids[0] and src[-1] == tgt[-1] == TOK.eos_id
    assert torch.equal(x["tgt_in"][:, 0], torch.full((16,), TOK.bos_id)) and torch.equal(x["tgt_in"][:, 1:], x["targets"][:, :-1])
    assert x["loss_mask"].all()


def test_span_corruption_calls_the_encoder_decoder():
    model = NextToken("encdec")
    loss, metrics = SpanCorruptionObjective(tokenizer=TOK)(model, {"tokens": torch.randint(0, 256, (2, 33))})
    (src, tgt_in), _ = model.calls[0]
    assert src.shape == (2, 33 - 5 + 2 + 1) and tgt_in.shape == (2, 5 + 2 + 1)
    assert metrics["n_tokens"] == 16 and torch.isfinite(loss)


def test_span_corruption_needs_enough_sentinels():
    objective = SpanCorruptionObjective(tokenizer=ByteTokenizer(n_sentinels=2))
    with pytest.raises(ConfigError, match="tokenizer.n_sentinels"):
        objective.make_inputs({"tokens": torch.zeros(1, 65, dtype=torch.long)})
    with pytest.raises(ConfigError, match="tokenizer"):
        SpanCorruptionObjective().make_inputs({"tokens": torch.zeros(1, 65, dtype=torch.long)})


def test_mlm_selects_15_percent_and_corrupts_80_10_10():
    g = torch.Generator().manual_seed(0)
    original = torch.randint(0, 256, (16, 401), generator=g)
    original[:, ::50] = TOK.eos_id
    x = MaskedLMObjective(tokenizer=TOK).make_inputs({"tokens": original})
    inputs, targets, selected = x["tokens"], x["targets"], x["loss_mask"]
    assert torch.equal(targets, original[:, :-1])
    assert selected.sum(1).eq(60).all(), "round(0.15 * 400) per row"
    assert not selected[targets == TOK.eos_id].any(), "specials are never selected"
    assert torch.equal(inputs[~selected], targets[~selected])
    masked = (inputs == TOK.mask_id) & selected
    changed = (inputs != targets) & ~masked & selected
    n = selected.sum().item()
    assert 0.75 < masked.sum() / n < 0.85
    assert 0.06 < changed.sum() / n < 0.14
    assert (inputs[changed] < TOK.n_regular).all()
    assert not (inputs == TOK.mask_id)[~selected].any()


def test_mlm_loss_counts_only_selected_positions():
    model = NextToken("encoder")
    batch = {"tokens": torch.randint(0, 256, (2, 41))}
    objective = MaskedLMObjective(tokenizer=TOK, seed=5)
    loss, metrics = objective(model, batch)
    x = MaskedLMObjective(tokenizer=TOK, seed=5).make_inputs(batch)
    assert torch.allclose(loss, expected_ce(model.table[x["tokens"]], x["targets"], x["loss_mask"]))
    assert metrics["n_tokens"] == 2 * 6


@pytest.mark.parametrize(
    "objective, arch",
    [(CausalLMObjective, "causal"), (PrefixLMObjective, "prefix"), (MaskedLMObjective, "encoder"), (SpanCorruptionObjective, "encdec"), (BlankInfillingObjective, "prefix")],
)
def test_compatibility(objective, arch):
    check_compatible(objective, arch)
    for other in {"causal", "prefix", "encoder", "encdec"} - {arch}:
        with pytest.raises(ConfigError, match=rf"^objective='{objective.name}': needs model={arch}, not model={other}"):
            check_compatible(objective(tokenizer=TOK), other)


def test_an_incompatible_model_is_refused_before_it_runs():
    model = NextToken("causal")
    with pytest.raises(ConfigError, match="objective='span_corruption'"):
        SpanCorruptionObjective(tokenizer=TOK)(model, {"tokens": torch.zeros(1, 33, dtype=torch.long)})
    assert model.calls == []


@pytest.mark.parametrize(
    "arch, option",
    [("causal", "causal_lm"), ("prefix", "prefix_lm"), ("encoder", "mlm"), ("encdec", "span_corruption")],
)
def test_configs_train_zoo_models(arch, option):
    zoo = pytest.importorskip("zoo")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    objective = instantiate(OmegaConf.load(CONF / f"{option}.yaml"))(tokenizer=TOK)
    assert objective.name == option
    torch.manual_seed(0)
    model = zoo.build([f"model={arch}", "model.dim=32", "model.n_layers=1", "model.n_heads=2", f"model.vocab_size={TOK.vocab_size}", "model.max_seq_len=64"])
    tokens = torch.tensor([list(b"def packed(row): return row[1:]  # a line of Python source code!")])
    loss, metrics = objective(model, {"tokens": tokens[:, :49], "loss_mask": torch.ones(1, 48, dtype=torch.bool)})
    loss.backward()
    assert torch.isfinite(loss) and metrics["n_tokens"] > 0
    assert abs(loss.item() - torch.log(torch.tensor(float(TOK.vocab_size))).item()) < 1.5, "about uniform at init"
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("objective_cls, arch", [(CausalLMObjective, "causal"), (PrefixLMObjective, "prefix")])
def test_packed_rows_are_scored_document_by_document(objective_cls, arch):
    """``data.boundaries=mask``: the loss of a packed row is that of its documents, each run alone."""
    import zoo
    from zoo.data import PackedDataset

    eos, g = 63, torch.Generator().manual_seed(0)
    documents = [torch.cat([torch.randint(0, 63, (n,), generator=g), torch.tensor([eos])]) for n in (11, 20, 7)]
    stream = torch.cat(documents).int()
    batch = PackedDataset(stream=stream, seq_len=len(stream) - 1, eos_id=eos)[0]  # one row holding them all
    torch.manual_seed(0)
    model = zoo.build(["model.dim=32", "model.n_layers=2", "model.vocab_size=64", f"model={arch}"]).eval()
    objective = objective_cls(prefix_fraction=(0.0, 0.0)) if arch == "prefix" else objective_cls()
    with torch.no_grad():
        _, metrics = objective(model, batch)
        prefix = {"prefix_len": torch.tensor([1])} if arch == "prefix" else {}
        alone = sum(F.cross_entropy(model(doc[None, :-1], **prefix)[0], doc[1:], reduction="sum") for doc in documents)
    assert metrics["n_tokens"] == sum(len(doc) - 1 for doc in documents)
    torch.testing.assert_close(metrics["nll_sum"], alone)
