"""The error types a user's input raises: a configuration mistake, or a file zoo refuses.

Entry points catch :class:`ConfigError` (and so its subclasses) and print its message as one line
without a traceback: a bad config or a damaged file is the user's input, not a bug in zoo.
"""

from pathlib import Path


class ConfigError(ValueError):
    """A configuration value that cannot work, named by its config key.

    Args:
        key: the dotted config key, e.g. ``model.attention.n_kv_heads``.
        value: the offending value.
        allowed: what would be accepted, in words (``"one of: mha, mqa"``, ``"> 0"``).
    """

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")


class FileError(ConfigError):
    """A file read from disk that zoo refuses, named with the key and value inside it that are wrong.

    Args:
        path: the file.
        key: the key inside the file (``model.norm._target_``, ``class``), or ``None`` for the file as a whole.
        value: the offending value.
        allowed: what would be accepted, or what to do.
    """

    def __init__(self, path: str | Path, key: str | None, value: object, allowed: str) -> None:
        super().__init__(key or "file", value, allowed)
        self.path = Path(path)
        self.args = (f"{path}: {key}={value!r}: {allowed}" if key else f"{path}: {allowed}",)


class DamagedFile(FileError):
    """A file zoo wrote (a checkpoint's, a cache's) that is truncated or garbled.

    Args:
        path: the file.
        detail: what reading it found, in a few words.
        remedy: what to do (resume from the last good checkpoint, delete the cache entry).
    """

    def __init__(self, path: str | Path, detail: str, remedy: str) -> None:
        detail = " ".join(str(detail).split())[:160]
        super().__init__(path, None, None, f"damaged or truncated ({detail}); {remedy}")
