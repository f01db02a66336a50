"""The continuation score (Objective.continuation): every objective that predicts text predicts the same
tokens, the end of each row, from the same context, its start; and its loss is what decoding the end
token by token from the start gives (no token sees itself or a later one)."""

import pytest
import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.finetune.classify import ClassificationObjective
from zoo.objectives import BlankInfillingObjective, CausalLMObjective, PrefixLMObjective, SpanCorruptionObjective
from zoo.testing import build_tiny
from zoo.tokenizer import ByteTokenizer

TOK = ByteTokenizer(n_sentinels=4)
PREFIX = 7
ROWS = torch.randint(0, 256, (3, 17), generator=torch.Generator().manual_seed(0))

CASES = {
    "causal_lm": (CausalLMObjective, ["model=causal"]),
    "prefix_lm": (PrefixLMObjective, ["model=prefix"]),
    "blank_infilling": (BlankInfillingObjective, ["model=prefix", "model/pos=rope_2d"]),
    "span_corruption": (SpanCorruptionObjective, ["model=encdec"]),
}


def case(name):
    objective, model = CASES[name]
    torch.manual_seed(0)
    return objective(tokenizer=TOK), build_tiny([*model, f"model.vocab_size={TOK.vocab_size}", "model.max_seq_len=64"]).eval()


@pytest.mark.parametrize("name", CASES)
def test_every_objective_predicts_the_rows_end(name):
    objective, model = case(name)
    x = objective.continuation_inputs({"tokens": ROWS}, prefix_len=PREFIX)
    assert torch.equal(x["targets"][x["loss_mask"]].view(3, -1), ROWS[:, PREFIX:])
    _, metrics = objective.continuation(model, {"tokens": ROWS}, prefix_len=PREFIX)
    assert int(metrics["n_tokens"]) == ROWS[:, PREFIX:].numel() and torch.isfinite(metrics["nll_sum"])


def decoded_nll(model, prompt: list[int], text: list[int], *, start: list[int] = (), start_id: int = 0) -> float:
    """Nats of ``text`` decoded token by token after ``prompt``, each from a full forward without a cache."""
    nll = 0.0
    for t, token in enumerate(text):
        logits = model.uncached_next_logits(prompt, [*start, *text[:t]], start_id=start_id)
        nll -= float(F.log_softmax(logits.float(), -1)[token])
    return nll


@pytest.mark.parametrize("name", ["causal_lm", "prefix_lm", "span_corruption"])
def test_the_loss_is_decoding_the_end_from_the_start(name):
    objective, model = case(name)
    with torch.no_grad():
        _, metrics = objective.continuation(model, {"tokens": ROWS[:1]}, prefix_len=PREFIX)
        prompt, text = ROWS[0, :PREFIX].tolist(), ROWS[0, PREFIX:].tolist()
        if name == "span_corruption":  # T5 continues a text as its one sentinel span at the end
            sentinel = TOK.sentinel_ids[0]
            expected = decoded_nll(model, [*prompt, sentinel, TOK.eos_id], text, start=[sentinel], start_id=TOK.bos_id)
        else:
            expected = decoded_nll(model, prompt, text)
    assert float(metrics["nll_sum"]) == pytest.approx(expected, rel=1e-4)


def test_glm_reads_the_start_bidirectionally_and_the_end_left_to_right():
    objective, model = case("blank_infilling")
    with torch.no_grad():
        _, whole = objective.continuation(model, {"tokens": ROWS[:1]}, prefix_len=PREFIX)
        changed = ROWS[:1].clone()
        changed[0, -1] = (changed[0, -1] + 1) % 256  # the last token: only its own term may change
        x = objective.continuation_inputs({"tokens": changed}, prefix_len=PREFIX)
        logits = model(x["tokens"], positions=x["positions"], prefix_len=x["prefix_len"])
        nll = F.cross_entropy(logits[0].float(), x["targets"][0], reduction="none")[x["loss_mask"][0]]
        y = objective.continuation_inputs({"tokens": ROWS[:1]}, prefix_len=PREFIX)
        before = F.cross_entropy(model(y["tokens"], positions=y["positions"], prefix_len=y["prefix_len"])[0].float(), y["targets"][0], reduction="none")[y["loss_mask"][0]]
    torch.testing.assert_close(nll[:-1], before[:-1])
    assert float(before.sum()) == pytest.approx(float(whole["nll_sum"]), rel=1e-5)


def test_an_objective_that_does_not_predict_text_says_so():
    _, model = case("causal_lm")
    with pytest.raises(ConfigError, match="predicts text"):
        ClassificationObjective().continuation(model, {"tokens": ROWS}, prefix_len=PREFIX)
    objective, _ = case("causal_lm")
    with pytest.raises(ConfigError, match="bench.continuation.prefix"):
        objective.continuation(model, {"tokens": ROWS}, prefix_len=ROWS.shape[1])
