"""``study=uptrain`` (U-PaLM, arXiv:2210.11399): a prefix decoder from scratch against a causal decoder,
pretrained per seed in the job (``bench.pretrain``), continued as a prefix decoder, at equal tokens."""

import pytest
from omegaconf import OmegaConf

import zoo
from zoo.bench.report import differences_table, write_report
from zoo.bench.run import run_variant
from zoo.config import compose_aside

STUDY = ["study=uptrain", "model=prefix", "objective=prefix_lm"]


def variant(name: str, *extra: str) -> tuple[list[str], object]:
    overrides = [*STUDY, f"study/uptrain_variant@_global_={name}", *extra]
    return overrides, zoo.compose(overrides, config_name="bench")


def tokens(cfg) -> int:
    return int(cfg.trainer.max_steps) * int(cfg.trainer.batch_size) * int(cfg.trainer.seq_len)


def test_both_variants_train_the_same_model_on_equal_tokens():
    _, scratch = variant("scratch")
    overrides, causal = variant("causal")
    extra = list(causal.bench.pretrain.overrides)
    replaced = {o.split("=")[0] for o in extra}
    stage = compose_aside([*(o for o in overrides if o.split("=")[0] not in replaced), *extra])
    assert tokens(scratch) == tokens(stage) + tokens(causal)
    assert stage.model._target_ == "zoo.arch.CausalLM" and stage.objective._target_.endswith("CausalLMObjective")
    assert causal.model._target_ == scratch.model._target_ == "zoo.arch.PrefixLM"
    same = lambda node: {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}  # noqa: E731
    assert same(stage.model) == same(scratch.model) == same(causal.model)
    for key in ("data", "tokenizer", "optim"):
        assert stage[key] == scratch[key] == causal[key], key
    assert not scratch.bench.pretrain.overrides and causal.trainer.init_from is None  # the job points it at the pretraining


TINY = [
    "logger=none", "data.corpus.sources=[pydoc]", "data.corpus.max_bytes=150000", "model.dim=32", "model.n_layers=1", "model.n_heads=2",
    "model.max_seq_len=32", "trainer.seq_len=32", "trainer.batch_size=4", "trainer.final_eval_batches=2", "bench.seeds=[0,1]",
]  # fmt: skip


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = []
    for name, extra in (("scratch", ["trainer.max_steps=5"]), ("causal", ["trainer.max_steps=2", "bench.pretrain.overrides=['model=causal','objective=causal_lm','trainer.max_steps=3']"])):
        overrides, cfg = variant(name, *TINY, *extra)
        out += run_variant(cfg, out_dir=tmp_path_factory.mktemp(name), variant=f"uptrain={name}", overrides=overrides)
    return out


def test_each_seed_continues_its_own_causal_decoder_as_a_prefix_decoder(rows):
    causal = [r for r in rows if r["variant"] == "uptrain=causal"]
    assert [r["status"] for r in rows] == ["ok"] * 4 and len(causal) == 2
    for row in causal:
        assert row["pretrain"]["seeds"] == {0: 100, 1: 101} and row["pretrain"]["steps"] == 3
        assert f"/pretrain/seed{row['seed']}/checkpoints/" in row["init"]["from"] and row["init"]["new"] == row["init"]["dropped"] == 0
        assert "zoo.arch.CausalLM" in open(f"{row['init']['from']}/config.yaml").read()
        assert "zoo.arch.PrefixLM" in open(f"{row['checkpoint']}/config.yaml").read()
        assert row["steps"] == 2 and row["start"]["adapter"] == "FullFineTuning"
        assert row["curve"][0][0] > row["pretrain"]["tokens"] == 3 * 4 * 32  # drawn after the pretraining's tokens


def test_the_report_pairs_the_variants_and_says_how_the_causal_one_started(rows, tmp_path):
    table = differences_table(rows)
    line = next(x for x in table.splitlines() if x.startswith("| uptrain=causal |"))
    assert "n/a (different data)" not in line  # same seeds, same batches: a paired interval
    summary = write_report(rows, tmp_path, title="uptrain")["summary"].read_text()
    started = next(x for x in summary.splitlines() if x.startswith("Started from"))
    assert "uptrain=scratch: scratch" in started and "uptrain=causal: its own pretraining per seed (model=causal objective=causal_lm" in started


def test_pretraining_with_a_source_of_its_own_is_refused(tmp_path):
    from zoo.errors import ConfigError

    overrides, cfg = variant("causal", *TINY, f"trainer.init_from={tmp_path}")
    with pytest.raises(ConfigError, match="bench.pretrain.overrides"):
        run_variant(cfg, out_dir=tmp_path / "job", variant="v", overrides=overrides)
