"""Seeds trained stacked under vmap give the losses of separate runs, to float tolerance."""

import pytest

import zoo
from zoo.bench.quality import convergence, train_seed
from zoo.bench.seeds import applies, train_together

SMALL = [
    "tokenizer=byte", "data.corpus.max_bytes=200000", "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=32",
    "trainer.seq_len=32", "trainer.batch_size=4", "trainer.max_steps=6", "trainer.eval_every=0", "trainer.final_eval_batches=2",
    "sched.warmup_steps=2", "optim.grad_clip=0.05", "trainer.ckpt_every=0",
]  # fmt: skip  (a tight clip, so per-seed clipping is exercised)


@pytest.mark.parametrize(
    "options",
    [
        ["model/ffn=gelu"], ["model/ffn=swiglu"],
        ["model/pos=t5"],  # a learned score bias under vmap
        # short documents: rows cross boundaries, whose attention and targets are masked, and the positions
        # restart at each (learned positions read them under vmap)
        ["data.corpus.sources=[pydoc]", "model/pos=learned"],
        # a sparse pattern long enough for the gathered kernel alone, which reads positions: SDPA under vmap
        ["model/attention=strided", "model.attention.pattern.stride=4"],
        # a task (MQAR): the loss only on the answers
        ["data=mqar", "data.n_pairs=4", "data.vocab_size=32"],
        # a scalar parameter (DyT's alpha), stacked to one value per seed
        ["model/norm=dyt"],
        # attention sinks: eager with a sink logit per head, stacked to one vector per seed
        ["model/attention=sinks"],
    ],
)  # fmt: skip
def test_stacked_seeds_match_separate_runs(tmp_path, options):
    text = [o for o in SMALL if not o.startswith(("tokenizer", "data."))] if "data=mqar" in options else SMALL
    cfg = zoo.compose([*text, *options])
    assert applies(cfg) is None
    rows, models = train_together(cfg, seeds=[0, 1])
    for row in rows:
        alone = train_seed(cfg, seed=row["seed"], out_dir=tmp_path / f"s{row['seed']}")
        assert row["status"] == alone["status"] == "ok"
        assert [y for _, y in row["curve"]] == pytest.approx([y for _, y in alone["curve"]], rel=1e-4)
        assert row["val_loss"] == pytest.approx(alone["val_loss"], rel=1e-4)
        assert row["data"] == alone["data"]
    assert rows[0]["curve"][-1][1] != pytest.approx(rows[1]["curve"][-1][1], rel=1e-6)  # two seeds, two runs


def test_stacked_learning_rates_match_separate_runs(tmp_path):
    # one seed at two rates, stacked (a learning-rate screen), against each rate trained alone
    cfg = zoo.compose(SMALL)
    rates = [1e-3, 8e-3]
    rows, _ = train_together(cfg, seeds=[0, 0], lrs=rates)
    for row, lr in zip(rows, rates, strict=True):
        alone = train_seed(zoo.compose([*SMALL, f"optim.lr={lr}"]), seed=0, out_dir=tmp_path / f"lr{lr}")
        assert [y for _, y in row["curve"]] == pytest.approx([y for _, y in alone["curve"]], rel=1e-4)
        assert row["val_loss"] == pytest.approx(alone["val_loss"], rel=1e-4)
    assert rows[0]["val_loss"] != pytest.approx(rows[1]["val_loss"], rel=1e-4)  # the rates made a difference
    with pytest.raises(ValueError, match="one learning rate per stacked member"):
        train_together(cfg, seeds=[0, 1], lrs=[1e-3])


def test_what_does_not_stack_says_why():
    assert "objective" in applies(zoo.compose([*SMALL, "objective=prefix_lm"]))
    assert applies(zoo.compose([*SMALL, "trainer.grad_accum=2"])) is not None
    # the loop loads initial weights and applies adapters; stacked seeds would train from scratch, in full
    assert "adapter" in applies(zoo.compose([*SMALL, "adapter=lora"]))
    assert "initial weights" in applies(zoo.compose([*SMALL, "trainer.init_from=runs/base"]))


def test_convergence_flags_a_loss_still_falling():
    flat = [3.0 - 1.0 * min(i, 50) / 50 for i in range(200)]  # plateaued after step 50
    falling = [3.0 - 1.0 * i / 200 for i in range(200)]  # 0.25 nats over the last quarter
    assert not convergence(flat)["not_converged"]
    assert convergence(falling)["not_converged"] and convergence(falling)["last_quarter_drop"] == pytest.approx(0.25, abs=0.01)
