"""Corpora: deterministic documents, a stable fingerprint, disjoint splits, local loading only."""

import hashlib

import pytest

from zoo.data import HFDiskCorpus, StdlibCorpus, TextCorpus, split_of
from zoo.errors import ConfigError


@pytest.fixture(scope="module")
def stdlib():
    return StdlibCorpus(max_bytes=300_000, val_percent=10)


def test_stdlib_is_deterministic(stdlib):
    again = StdlibCorpus(max_bytes=300_000, val_percent=10)
    assert again.fingerprint == stdlib.fingerprint
    assert again.names("train") == stdlib.names("train")
    assert again.documents("validation") == stdlib.documents("validation")
    assert len(stdlib.fingerprint) == 16 and int(stdlib.fingerprint, 16) >= 0


def test_stdlib_splits_are_disjoint_by_document(stdlib):
    train, val = stdlib.names("train"), stdlib.names("validation")
    assert train and val
    assert not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    # the split is a function of the name alone, by SHA-256 (Python's hash() changes per process)
    def held_out(name):
        return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % 10_000 < 10 * 100

    assert not any(held_out(n) for n in train) and all(held_out(n) for n in val)
    assert all(split_of(n, val_percent=10) == "validation" for n in val)


def test_stdlib_respects_cap_and_exclusions(stdlib):
    docs = stdlib.documents("train") + stdlib.documents("validation")
    assert sum(len(d.encode()) for d in docs) <= 300_000
    names = stdlib.names("train") + stdlib.names("validation")
    assert len(names) > 10 and all(n.startswith(("python/", "pydoc/")) for n in names)
    assert not any(part in {"test", "tests", "idlelib", "site-packages", "pydoc_data"} for n in names for part in n.split("/")[1:-1])


def test_stdlib_sources_and_content():
    prose = StdlibCorpus(sources=["pydoc"], max_bytes=None, val_percent=0)
    from pydoc_data.topics import topics

    assert prose.names("train") == sorted(f"pydoc/{k}" for k in topics)
    assert prose.documents("train")[prose.names("train").index("pydoc/assert")] == topics["assert"]
    assert prose.documents("validation") == []
    with pytest.raises(ConfigError, match="data.corpus.sources"):
        StdlibCorpus(sources=["wikipedia"])


def test_fingerprint_is_stable_across_processes_and_tracks_content(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "b.md").write_text("beta\n")
    corpus = TextCorpus(path=tmp_path, val_percent=0)
    # sha256 over (split, name, text), not Python's per-process salted hash()
    expected = hashlib.sha256(b"train\0a.txt\0alpha\n\0train\0b.md\0beta\n\0").hexdigest()[:16]
    assert corpus.fingerprint == expected
    (tmp_path / "b.md").write_text("beta!\n")
    assert TextCorpus(path=tmp_path, val_percent=0).fingerprint != corpus.fingerprint


def test_text_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    files = {"a.txt": "first file", "b.md": "# second", "sub/c.py": "x = 3\n", "d.json": "{}"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    corpus = TextCorpus(path=tmp_path, val_percent=30)
    names = corpus.names("train") + corpus.names("validation")
    assert sorted(names) == ["a.txt", "b.md", "sub/c.py"]
    assert corpus.names("validation"), "a corpus of several documents always holds one out"
    by_name = dict(zip(names, corpus.documents("train") + corpus.documents("validation")))
    assert by_name == {n: files[n] for n in ["a.txt", "b.md", "sub/c.py"]}
    only_py = TextCorpus(path=tmp_path, patterns=["*.py"], val_percent=0)
    assert only_py.documents("train") == ["x = 3\n"]


def test_text_single_file_is_split_at_blank_lines(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("one\nline\n\ntwo\n\n\n\nthree")
    corpus = TextCorpus(path=path, val_percent=0)
    assert corpus.documents("train") == ["one\nline", "two", "three"]


def test_missing_path_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.corpus\.path="):
        TextCorpus(path=tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"^data\.corpus\.path="):
        HFDiskCorpus(path=tmp_path / "nope")
    with pytest.raises(ConfigError, match="split"):
        TextCorpus(path=tmp_path).documents("test")


def test_hf_disk_dataset(tmp_path):
    from datasets import Dataset

    texts = [f"row {i} " * (i + 1) for i in range(20)]
    Dataset.from_dict({"text": texts, "id": list(range(20))}).save_to_disk(str(tmp_path / "ds"))
    corpus = HFDiskCorpus(path=tmp_path / "ds", val_percent=20)
    train, val = corpus.documents("train"), corpus.documents("validation")
    assert val and sorted(train + val) == sorted(texts)
    assert corpus.fingerprint == HFDiskCorpus(path=tmp_path / "ds", val_percent=20).fingerprint
    with pytest.raises(ConfigError, match="data.corpus.text_field"):
        HFDiskCorpus(path=tmp_path / "ds", text_field="content").documents("train")


def test_hf_disk_dataset_dict_keeps_its_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"text": ["a", "b", "c"]}), "validation": Dataset.from_dict({"text": ["z"]})}).save_to_disk(str(tmp_path / "dd"))
    corpus = HFDiskCorpus(path=tmp_path / "dd")
    assert corpus.documents("train") == ["a", "b", "c"]
    assert corpus.documents("validation") == ["z"]
