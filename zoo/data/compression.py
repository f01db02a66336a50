"""File compressors as a fixed reference point for a model's bits per byte on a corpus.

A language model's validation loss in bits per byte is only meaningful next to something that knows
the same text: here zlib (``-9``) and lzma (preset 9, extreme) *given the training split*, i.e. the
bits the compressor spends on the validation text after it has already seen the training text::

    conditional_bits(val | train) = 8 * (len(compress(train + val)) - len(compress(train)))

divided by the UTF-8 bytes of the validation documents. lzma's 64 MB window reaches back over the
whole training split of the default corpus; zlib's 32 KB window barely does, so its figure is close
to compressing the validation split alone. Both are computed once per corpus fingerprint and cached
as a small JSON file beside the tokenised splits.
"""

import json
import lzma
import os
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

#: documents are joined with this separator, as the packer joins them with ``<eos>``
SEPARATOR = b"\n"

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "zlib": lambda data: zlib.compress(data, 9),
    "lzma": lambda data: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME),
}


def _joined(documents: Sequence[str]) -> bytes:
    return b"".join(doc.encode("utf-8", errors="surrogatepass") + SEPARATOR for doc in documents)


def conditional_bpb(train: Sequence[str], validation: Sequence[str], *, compress: Callable[[bytes], bytes]) -> float:
    """Bits per byte ``compress`` spends on ``validation`` once it has read ``train``.

    Args:
        train: the training documents (the context the compressor reads first).
        validation: the documents measured; their UTF-8 bytes, separators excluded, are the denominator.
        compress: ``bytes -> bytes``.
    """
    train_bytes, val_bytes = _joined(train), _joined(validation)
    n_bytes = sum(len(doc.encode("utf-8", errors="surrogatepass")) for doc in validation)
    if n_bytes == 0:
        raise ValueError("the validation split has no text to measure")
    extra = len(compress(train_bytes + val_bytes)) - len(compress(train_bytes))
    return 8 * extra / n_bytes


def reference_bpb(corpus, *, cache_dir: str | Path | None = None) -> dict[str, float]:
    """``{"zlib": .., "lzma": ..}``: each compressor's bits per byte on ``corpus``'s validation split
    given its training split (module docstring), read from ``<cache_dir>/<fingerprint>-compressors.json``
    when an earlier run computed it (a few seconds per MB of text otherwise).

    Args:
        corpus: a corpus (:mod:`zoo.data.corpus`): ``documents(split)`` and ``fingerprint``.
        cache_dir: the cache folder; ``None``: computed every time.
    """
    path = Path(cache_dir).expanduser() / f"{corpus.fingerprint}-compressors.json" if cache_dir is not None else None
    if path is not None and path.exists():
        cached = json.loads(path.read_text())
        if set(cached) == set(COMPRESSORS):
            return cached
    train, validation = corpus.documents("train"), corpus.documents("validation")
    result = {name: conditional_bpb(train, validation, compress=fn) for name, fn in COMPRESSORS.items()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # written aside then renamed: a concurrent run never reads a half-written file
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(result, f)
        os.replace(tmp, path)
    return result
