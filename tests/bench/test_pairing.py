"""Common random numbers: one seed gives every variant the same batches and the same shared weights;
the paired interval and test on hand-made numbers (and against scipy where it is installed)."""

import math

import pytest
import torch

import zoo
from zoo.bench.report import compared_on, difference_eval_se, differences_table, noise_notes
from zoo.bench.stats import paired, t_p_value, unpaired
from zoo.config import instantiate_model


def test_t_p_value_by_hand():
    # P(|T| >= t) for df = 2 has the closed form 1 - t / sqrt(2 + t^2); for df = 1 it is 1 - 2 atan(t) / pi
    for t in (0.3, 1.0, 2.5, 7.0):
        assert t_p_value(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)
        assert t_p_value(-t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, rel=1e-10)
    assert t_p_value(4.3027, 2) == pytest.approx(0.05, abs=1e-4)  # the tabulated 95% quantile
    assert t_p_value(1.959964, math.inf) == pytest.approx(0.05, abs=1e-6)


def test_paired_interval_by_hand():
    a, b = [1.80, 1.66, 1.93], [1.75, 1.62, 1.90]  # seed luck (0.27 apart) shared; differences 0.05, 0.04, 0.03
    d = paired(a, b)
    assert d.mean == pytest.approx(0.04)
    assert d.half_width == pytest.approx(4.3027 * 0.01 / math.sqrt(3), rel=1e-4)
    t = 0.04 / (0.01 / math.sqrt(3))
    assert d.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-8)
    assert d.beyond_noise and d.paired
    w = unpaired(a, b)  # the same runs unpaired: the seed luck stays in, the difference drowns
    assert w.half_width > 10 * d.half_width and not w.beyond_noise
    with pytest.raises(ValueError):
        paired([1.0, 2.0], [1.0])


def test_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    a, b = [2.1, 1.9, 2.4, 2.0, 2.2], [2.0, 1.95, 2.2, 1.9, 2.15]
    assert paired(a, b).p_value == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
    assert unpaired(a, b).p_value == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    for t, df in ((0.7, 3), (2.2, 7.4), (12.0, 2)):
        assert t_p_value(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9)


def rows(data_b: dict) -> list[dict]:
    same = {"corpus": "x", "batch_size": 16}
    out = []
    for variant, losses, data in (("ref", [1.80, 1.66, 1.93], same), ("b", [1.75, 1.62, 1.90], data_b)):
        out += [{"variant": variant, "seed": s, "status": "ok", "val_loss": v, "data": data} for s, v in enumerate(losses)]
    return out


def cells(table: str, variant: str) -> list[str]:
    return [c.strip() for c in next(line for line in table.splitlines() if line.startswith(f"| {variant} |")).strip("|").split("|")]


def test_differences_table_pairs_only_same_data():
    table = differences_table(rows({"corpus": "x", "batch_size": 16}))
    b = cells(table, "b")
    assert b[2] == "-0.0400" and b[3] == "0.025" and b[6] == "**beyond noise**"
    other = cells(differences_table(rows({"corpus": "y", "batch_size": 16})), "b")  # different data: Welch only
    assert other[3].startswith("n/a") and other[6] == "within noise"


def test_variants_pair_on_the_continuation_loss_where_it_was_scored():
    same = rows({"corpus": "x", "batch_size": 16})
    assert compared_on(same) == ("val_loss", "val loss")  # own objectives' losses: one objective in the study
    for r in same:  # each objective's own loss differs in kind; the continuation is the same tokens for all
        r["continuation"] = {"loss": r["val_loss"] + (0.5 if r["variant"] == "b" else 0.0)}
    key, title = compared_on(same)
    assert key == "continuation.loss"
    assert cells(differences_table(same, key=key, title=title), "b")[2] == "+0.4600"


def test_evaluation_noise_of_a_difference_cancels_the_splits_own_variation():
    # the batches differ by 1-3 nats (easy and hard files); the variant is 0.1 better on each, +-0.01
    ref_batches = [2.0, 3.0, 4.0, 5.0]
    b_batches = [1.91, 2.89, 3.91, 4.89]
    rs = []
    for variant, batches in (("ref", ref_batches), ("b", b_batches)):
        for seed, shift in enumerate((0.0, 0.05)):
            losses = [x + shift for x in batches]
            rs.append({"variant": variant, "seed": seed, "status": "ok", "val_loss": sum(losses) / 4, "data": {"corpus": "x"},
                       "val_batch_losses": losses, "val_loss_se": (sum((x - 3.5 - shift) ** 2 for x in ref_batches) / 3 / 4) ** 0.5})  # fmt: skip
    b_rows = [r for r in rs if r["variant"] == "b"]
    se = difference_eval_se(b_rows, [r for r in rs if r["variant"] == "ref"])
    assert se == pytest.approx(0.01 / math.sqrt(3), rel=1e-6)  # s.d. of (-0.09, -0.11, -0.09, -0.11), over sqrt(4)
    note = next(n for n in noise_notes(rs) if n.startswith("b:"))
    assert "evaluation noise (s.e. over validation batches) 0.65" in note and "its difference to ref (same batches) 0.0058" in note
    assert difference_eval_se([{**b_rows[0], "data": {"corpus": "y"}}], [r for r in rs if r["variant"] == "ref"]) is None


def compose(ffn: str):
    return zoo.compose([f"model/ffn={ffn}", "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=32", "model.vocab_size=64"])


def test_shared_parameters_start_equal_across_variants():
    built = {}
    for ffn in ("gelu", "swiglu"):
        torch.manual_seed(3)
        built[ffn] = dict(instantiate_model(compose(ffn).model).named_parameters())
    gelu, swiglu = built["gelu"], built["swiglu"]
    shared = [n for n in gelu if n in swiglu and gelu[n].shape == swiglu[n].shape]
    assert any("attn.q_proj" in n for n in shared) and any("embed" in n for n in shared)
    for name in shared:
        assert torch.equal(gelu[name], swiglu[name]), name
    assert not torch.equal(gelu["stack.layers.1.attn.q_proj.weight"], gelu["stack.layers.0.attn.q_proj.weight"])
    torch.manual_seed(4)  # another seed: other values
    other = dict(instantiate_model(compose("gelu").model).named_parameters())
    assert not torch.equal(other["stack.layers.0.attn.q_proj.weight"], gelu["stack.layers.0.attn.q_proj.weight"])


def test_a_seed_gives_two_variants_the_same_batches():
    from zoo.train.components import build
    from zoo.train.distributed import Dist
    from zoo.train.settings import Settings

    streams = {}
    for ffn in ("gelu", "swiglu"):
        cfg = zoo.compose([f"model/ffn={ffn}", "tokenizer=byte", "data.corpus.max_bytes=200000", "trainer.seq_len=32", "trainer.batch_size=4", "model.max_seq_len=32", "trainer.seed=5"])
        parts = build(cfg, settings=Settings.from_config(cfg.trainer), dist=Dist(), tokenizer=None)
        train = iter(parts.train_loader)
        streams[ffn] = ([next(train)["tokens"] for _ in range(3)], next(iter(parts.val_loader))["tokens"])
    (train_a, val_a), (train_b, val_b) = streams["gelu"], streams["swiglu"]
    assert all(torch.equal(x, y) for x, y in zip(train_a, train_b))
    assert torch.equal(val_a, val_b) and not torch.equal(train_a[0], train_a[1])
