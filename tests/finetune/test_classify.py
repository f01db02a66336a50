"""Classification: the head pools the right token under either padding; labels are checked; the built-in task is labelled by compile()."""

import json

import pytest
import torch

import zoo
from zoo.errors import ConfigError
from zoo.finetune.classify import ClassificationObjective, LastToken, MeanPool, macro_f1
from zoo.finetune.compile_task import compiles, corrupt, functions
from zoo.finetune.labelled import LabelledData, LabelledFiles
from zoo.tokenizer import ByteTokenizer
from zoo.train import run


class Rows(LabelledData):
    def __init__(self, rows, **kwargs):
        super().__init__(**kwargs)
        self._given = rows

    def rows(self):
        return self._given


TEXTS = [("def f(x):\n    return x\n", "compiles"), ("def g(:\n", "error"), ("x = 1", "compiles"), ("((", "error")]


def test_last_token_pools_the_last_real_token_on_either_side():
    hidden = torch.arange(2 * 5, dtype=torch.float).reshape(2, 5, 1)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert LastToken()(hidden, right).flatten().tolist() == [2.0, 9.0]
    assert LastToken()(hidden, left).flatten().tolist() == [4.0, 9.0]


@pytest.mark.parametrize(
    "model, pool",
    [(["model=causal"], "last"), (["model=prefix"], "last"), (["model=prefix", "model/pos=rope_2d"], "last"), (["model=encoder"], "mean"),
     (["model=encoder"], "first"), (["model=encdec"], "mean")],
)  # fmt: skip
def test_a_row_classifies_the_same_padded_left_or_right(model, pool):
    tokenizer = ByteTokenizer(n_sentinels=16)
    torch.manual_seed(0)
    model = zoo.build(["experiment=smoke", *model, "model.vocab_size=276"]).eval()
    objective = ClassificationObjective(pool=pool)
    data = {side: Rows({"train": TEXTS, "validation": TEXTS}, padding=side) for side in ("right", "left")}
    objective.prepare(model, data=data["right"])
    logits = {}
    for side, d in data.items():
        batch = d.batch(TEXTS, seq_len=40, tokenizer=tokenizer)
        assert batch["valid"][:, -1 if side == "left" else 0].all()
        hidden = model.features(batch["tokens"], positions=(batch["valid"].cumsum(1) - 1).clamp(min=0), valid=batch["valid"])
        logits[side] = model.classifier(hidden, batch["valid"])
        alone = d.batch(TEXTS[2:3], seq_len=len(TEXTS[2][0]), tokenizer=tokenizer)  # no padding at all
        single = model.classifier(model.features(alone["tokens"], valid=alone["valid"]), alone["valid"])
        torch.testing.assert_close(logits[side][2:3], single, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits["left"], logits["right"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch, pool", [("causal", LastToken), ("prefix", LastToken), ("encoder", MeanPool), ("encdec", MeanPool)])
def test_auto_pools_as_the_model_reads(arch, pool):
    model = zoo.build(["experiment=smoke", f"model={arch}", "model.vocab_size=276"])
    ClassificationObjective().prepare(model, data=Rows({"train": TEXTS, "validation": TEXTS}))
    assert type(model.classifier.pool) is pool


def test_only_the_head_and_nothing_else_trains_under_a_frozen_body():
    from zoo.finetune.adapters import Frozen

    model = zoo.build(["experiment=smoke", "model.vocab_size=276"])
    Frozen().apply(model)
    objective = ClassificationObjective()
    objective.prepare(model, data=Rows({"train": TEXTS, "validation": TEXTS}))
    batch = objective_batch = Rows({"train": TEXTS, "validation": TEXTS}).batch(TEXTS, seq_len=24, tokenizer=ByteTokenizer(n_sentinels=16))
    loss, metrics = objective(model, objective_batch)
    loss.backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {"classifier.out_proj.weight", "classifier.out_proj.bias"}
    assert metrics["n_tokens"] == len(batch["labels"])


def test_macro_f1_is_the_mean_of_per_class_f1():
    confusion = torch.tensor([[3, 1], [2, 4]])  # rows: true class, columns: predicted
    f1_a, f1_b = 2 * 3 / (2 * 3 + 2 + 1), 2 * 4 / (2 * 4 + 1 + 2)
    assert macro_f1(confusion) == pytest.approx((f1_a + f1_b) / 2)
    assert macro_f1(torch.tensor([[5, 0], [5, 0]])) == pytest.approx((2 * 5 / 15 + 0) / 2)  # always one class


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_files_read_their_columns_and_errors_name_the_key(tmp_path):
    rows = [{"body": f"text {i}", "y": i % 3} for i in range(30)]
    data = LabelledFiles(path=str(_write(tmp_path / "a.jsonl", rows)), text_column="body", label_column="y")
    assert data.classes == [0, 1, 2] and len(data._rows["train"]) + len(data._rows["validation"]) == 30
    (tmp_path / "b.csv").write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)))
    assert LabelledFiles(path=str(tmp_path / "b.csv")).classes == [0, 1]
    with pytest.raises(ConfigError, match=r"data.label_column='label': a column of .*\['body', 'y'\]"):
        LabelledFiles(path=str(tmp_path / "a.jsonl"), text_column="body").classes
    with pytest.raises(ConfigError, match=r"data.label_column=0.5: class labels"):
        LabelledFiles(path=str(_write(tmp_path / "c.jsonl", [{"text": "a", "label": 0.5}]))).classes
    with pytest.raises(ConfigError, match="validation labels that are training classes"):
        LabelledFiles(
            path=str(_write(tmp_path / "d.jsonl", rows[:10])), validation_path=str(_write(tmp_path / "e.jsonl", [{"body": "z", "y": 7}])), text_column="body", label_column="y"
        ).classes
    with pytest.raises(ConfigError, match="data.path"):
        LabelledFiles(path=str(tmp_path / "missing.csv"))


def test_compile_task_labels_are_pythons_own():
    source = "def f(a, b):\n    return (a + b)\n\nclass C:\n    def m(self):\n        return [1, 2]\n"
    assert functions(source, max_chars=100) == ["def f(a, b):\n    return (a + b)\n", "def m(self):\n    return [1, 2]\n"]
    import random

    broken = [corrupt("def f(a, b):\n    return (a + b)\n", random.Random(i)) for i in range(20)]
    assert sum(not compiles(b) for b in broken) >= 10  # one edit usually breaks it, but the label is compile()'s
    from zoo.finetune.compile_task import CompileTask

    task = CompileTask(max_chars=128, max_bytes=300_000, max_examples=300)
    assert task.classes == ["compiles", "error"]
    for split, rows in task._rows.items():
        assert rows and all((label == "compiles") == compiles(text) for text, label in rows), split
    assert 0.25 < task.stats["train_error"] / len(task._rows["train"]) < 0.75


def test_a_classifier_fine_tunes_with_lora_and_reports_accuracy_and_f1(tmp_path, tiny, base_run):
    tiny = [o for o in tiny if not o.startswith("data.")]
    cls = ["task=compile", "data.max_bytes=300000", "data.max_chars=96", "trainer.seq_len=96", "data.padding=left"]
    result = run([*tiny, *cls, f"trainer.init_from={base_run}", "adapter=lora", "adapter.rank=2"], out_dir=tmp_path)
    assert result.status == "ok" and 0 <= result.metrics["val_accuracy"] <= 1 and 0 <= result.metrics["val_macro_f1"] <= 1
    assert result.metrics["parameters_trainable"] == 2 * 2 * (2 * 32 * 2) + 32 * 2 + 2  # adapters + the head
    assert "n_classes: 2" in (result.checkpoint / "config.yaml").read_text()
    assert "val_zlib_bpb" not in result.metrics  # a compressor is a reference for a text's likelihood, not a label's


def test_package_task_is_balanced_labelled_by_source_and_split_by_text():
    import sysconfig
    from pathlib import Path

    from zoo.finetune.package_task import PackageTask

    task = PackageTask(packages=["json", "email"], max_chars=256)
    assert task.classes == ["email", "json"]
    rows = task._rows
    assert not {t for t, _ in rows["train"]} & {t for t, _ in rows["validation"]}
    root = Path(sysconfig.get_paths()["stdlib"])
    sources = {p: "".join(f.read_text(encoding="utf-8") for f in (root / p).rglob("*.py")) for p in task.packages}
    for split, split_rows in rows.items():
        counts = [sum(label == p for _, label in split_rows) for p in task.packages]
        assert counts[0] == counts[1] > 0, split  # balanced: chance is one half
        for text, label in split_rows:  # every line of the function is in its package's code
            assert all(line.strip() in sources[label] for line in text.splitlines()), (label, text)


def test_package_task_refuses_what_is_not_a_package():
    from zoo.finetune.package_task import PackageTask

    with pytest.raises(ConfigError, match=r"data.packages=\['json', 'os'\]: two or more distinct packages .*not packages: os"):
        PackageTask(packages=["json", "os"])
    with pytest.raises(ConfigError, match="data.packages"):
        PackageTask(packages=["json"])
