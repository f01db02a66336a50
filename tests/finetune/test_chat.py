"""Instruction tuning: the loss mask covers exactly the assistant's tokens; packing keeps conversations whole; bad roles are one-line errors."""

import json

import pytest

from zoo.errors import ConfigError
from zoo.finetune.chat import ChatData, ChatTemplate, stdlib_conversations
from zoo.tokenizer import ByteTokenizer
from zoo.train import run

TOK = ByteTokenizer(n_sentinels=16)
CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"}, {"role": "assistant", "content": "Bye."}]


def test_the_mask_covers_exactly_the_assistants_content_and_its_eos():
    ids, assistant = ChatTemplate(TOK).encode(CONV)
    marked = bytes(i for i, a in zip(ids, assistant) if a and i < 256).decode()
    assert marked == "Hello.Bye."
    assert [i for i, a in zip(ids, assistant) if a and i >= 256] == [TOK.eos_id, TOK.eos_id]  # each reply's closing <eos>
    roles = [i for i in ids if i in TOK.sentinel_ids]
    assert roles == [TOK.sentinel_ids[0], TOK.sentinel_ids[1], TOK.sentinel_ids[2], TOK.sentinel_ids[1], TOK.sentinel_ids[2]]
    assert not any(a for i, a in zip(ids, assistant) if i in TOK.sentinel_ids)
    assert ChatTemplate(TOK).prompt(CONV[:2])[-1] == TOK.sentinel_ids[2]


def test_packed_rows_keep_conversations_whole_and_count_only_assistant_targets(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": CONV[1:3] if i % 2 else CONV}) + "\n" for i in range(12)))
    data = ChatData(path=str(path), validation_path=str(path))
    rows = data.rows(split="train", seq_len=63, tokenizer=TOK)
    template = ChatTemplate(TOK)
    lengths = [len(template.encode(c)[0]) for c in data.conversations["train"]]
    for r in range(rows["tokens"].shape[0]):
        tokens, segments, mask = rows["tokens"][r], rows["segment_ids"][r], rows["loss_mask"][r]
        # every conversation of a row is whole: it starts with a role token and has its full length
        for s in segments.unique().tolist():
            span = (segments == s).nonzero().flatten()
            real = tokens[span] != TOK.pad_id
            if real.any():
                assert tokens[span[0]] in TOK.sentinel_ids[:3] and int(real.sum()) in lengths
        # a counted target is an assistant token of the same conversation as its input
        targets = mask.nonzero().flatten() + 1
        assert (segments[targets] == segments[targets - 1]).all() and (tokens[targets] != TOK.pad_id).all()
    assert data.truncated == 0
    expected = sum(sum(template.encode(c)[1][1:]) for c in data.conversations["train"])  # a conversation's first token is never a target
    assert int(rows["loss_mask"].sum()) == expected


def test_an_unknown_role_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"messages\[1\].role='robot': one of system, user, assistant"):
        ChatTemplate(TOK).encode([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}])
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}) + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: messages\[1\].role='bot'") as e:
        ChatData(path=str(path)).conversations
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="tokenizer.n_sentinels"):
        ChatTemplate(ByteTokenizer(n_sentinels=0))


def test_the_builtin_set_asks_about_the_stdlib_and_answers_with_its_docs():
    conversations = dict(c[0][1:] + c[1][1:] for c in ((m[0], m[1]) for m in stdlib_conversations()))
    assert conversations["What does `json.dumps` do?"].startswith("Serialize ``obj`` to a JSON formatted ``str``")
    assert any(q.startswith("Explain the Python topic") for q in conversations)


def test_chat_fine_tuning_trains_and_zoo_generate_answers_in_the_template(tmp_path, tiny, base_run):
    from zoo.finetune.merge import main as merge
    from zoo.generate import run as generate

    tiny = [o for o in tiny if not o.startswith("data.")]
    result = run([*tiny, "task=chat", "data.max_conversations=200", f"trainer.init_from={base_run}", "adapter=lora", "trainer.seq_len=128"], out_dir=tmp_path / "run")
    assert result.status == "ok" and result.metrics["val_loss"] > 0
    assert merge([str(tmp_path / "run"), str(tmp_path / "merged")]) == 0
    import zoo

    gen_cfg = zoo.compose([f"checkpoint={tmp_path / 'merged'}", "chat=true", "prompt='What does json.dumps do?'", "max_new_tokens=4"], config_name="generate")
    text, out, _ = generate(gen_cfg)
    assert len(out.tokens[0]) >= 1
