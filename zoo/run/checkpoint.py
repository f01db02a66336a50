"""The checkpoint layout, and reading it back as data only.

A checkpoint is a folder ``<run>/checkpoints/step_<step:08d>/`` holding ``model.safetensors`` (the
weights), ``state.json`` (the training state), ``config.yaml`` (the resolved config) and optionally
``tokenizer/``, plus the training-only ``optimizer.safetensors`` and ``rng.safetensors``
(:mod:`zoo.train.checkpoint` writes them). ``checkpoints/latest.json`` points at the newest one.
A folder written by ``zoo-import`` (``model.safetensors`` and ``config.yaml``) is a checkpoint too.

Everything is read without running code from it: weights with safetensors, JSON with :mod:`json`,
the config through :func:`zoo.trust.load_config` and the tokenizer through
:func:`zoo.tokenizer.load_tokenizer` (both allowlists). A truncated or garbled file is a one-line
:class:`~zoo.errors.DamagedFile` naming the file and the last good checkpoint.
"""

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import ConfigError, DamagedFile

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
STATE = "state.json"
MODEL = "model.safetensors"
TRAINABLE = "trainable.safetensors"  # only the parameters that train (LoRA, a probe): the rest comes from trainer.init_from
CONFIG = "config.yaml"
TOKENIZER = "tokenizer"
#: prefixes of what an interrupted write leaves: a checkpoint folder or a file being replaced
TEMP_PREFIXES = (".tmp-", ".old-step-")
#: weights zoo never loads, because unpickling them can run code
PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') bytes to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text``: temp file in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def read_json(path: Path, *, remedy: str) -> dict:
    """A JSON object from ``path``; truncated or garbled, a :class:`DamagedFile` with ``remedy``."""
    try:
        value = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedFile(path, str(e), remedy) from None
    if not isinstance(value, dict):
        raise DamagedFile(path, f"a JSON {type(value).__name__}, not an object", remedy)
    return value


@dataclass
class Checkpoint:
    """A checkpoint folder found on disk, and its ``state.json`` (empty for a zoo-import folder)."""

    path: Path
    state: dict

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def is_training(self) -> bool:
        """Whether it can resume a run (it has a ``state.json``)."""
        return (self.path / STATE).exists()

    def config(self):
        """``config.yaml`` as a DictConfig, every ``_target_`` checked by :mod:`zoo.trust`."""
        from zoo.trust import load_config

        if not (self.path / CONFIG).exists():
            raise ConfigError("checkpoint", str(self.path), f"a checkpoint folder with its {CONFIG} (the run's resolved config)")
        return load_config(self.path / CONFIG)

    def tokenizer(self):
        """The tokenizer saved with the checkpoint (``tokenizer/``, or beside the weights), or ``None``."""
        from zoo.tokenizer import META_FILE, load_tokenizer

        for where in (self.path / TOKENIZER, self.path):
            if (where / META_FILE).exists():
                return load_tokenizer(where)
        return None


def last_good(root: Path, *, besides: Path | None = None) -> Path | None:
    """The newest checkpoint under ``root`` (a checkpoints folder) whose state and weights read whole."""
    for folder in sorted((p for p in Path(root).glob("step_*") if p.is_dir() and p != besides), reverse=True):
        try:
            read_json(folder / STATE, remedy="")
            _check_safetensors(folder / MODEL)
            return folder
        except (DamagedFile, OSError):
            continue
    return None


def _remedy(root: Path, besides: Path | None = None) -> str:
    good = last_good(root, besides=besides)
    if good is None:
        return "no whole checkpoint is left in that run; start it again"
    return f"the last good checkpoint is {good} (pass it as the checkpoint, or as trainer.resume)"


def find(path: str | Path) -> Checkpoint:
    """The checkpoint at ``path``: a checkpoint folder, a checkpoints folder (its ``latest.json``),
    or a run folder holding ``checkpoints/``. Raises ``FileNotFoundError`` naming what is missing,
    :class:`DamagedFile` when ``latest.json`` or ``state.json`` is garbled."""
    path = Path(path).expanduser()
    for root in (path, path / CHECKPOINTS):
        if (root / LATEST).exists():
            latest = read_json(root / LATEST, remedy=_remedy(root))
            name = latest.get("path")
            if not isinstance(name, str) or Path(name).name != name:  # a bare folder name, never a path out of the run
                raise DamagedFile(root / LATEST, f"path={name!r} is not a checkpoint folder name", _remedy(root))
            path = root / name
            break
    if (path / STATE).exists():
        return Checkpoint(path=path, state=read_json(path / STATE, remedy=_remedy(path.parent, besides=path)))
    if (path / MODEL).exists() and (path / CONFIG).exists():
        return Checkpoint(path=path, state={})
    pickles = sorted(p.name for pattern in PICKLES for p in path.glob(pattern)) if path.is_dir() else []
    if pickles:
        raise FileNotFoundError(f"no checkpoint at {path}: found only {pickles}, and zoo loads safetensors only, never pickles (unpickling can run code)")
    raise FileNotFoundError(f"no checkpoint at {path} (expected {STATE}, {MODEL} with {CONFIG}, {LATEST} or {CHECKPOINTS}/{LATEST})")


def _check_safetensors(path: Path) -> None:
    """Refuse a weights file whose header or body is cut short or garbled, without loading it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:  # SafetensorError, and OSError for an unreadable file
        raise DamagedFile(path, str(e).splitlines()[0] if str(e) else type(e).__name__, "") from None


def load_safetensors(path: Path, *, device: str = "cpu") -> dict:
    """Every tensor of a safetensors file; a damaged file is a :class:`DamagedFile` naming the last good checkpoint."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # SafetensorError on a bad header or a body shorter than the header says
        raise DamagedFile(path, str(e).splitlines()[0] if str(e) else type(e).__name__, _remedy(path.parent.parent, besides=path.parent)) from None


def load_weights(checkpoint: Checkpoint, model, *, device: str = "cpu") -> None:
    """Load ``model.safetensors`` into ``model``; every key must match (a tied matrix is stored once).
    A checkpoint of the trainable parameters only (``trainable.safetensors``: LoRA, a probe) must hold
    exactly those of ``model``, whose frozen rest comes from ``trainer.init_from``.

    Raises: :class:`DamagedFile` for a truncated or garbled file; ``ValueError`` naming the keys when
    the weights are another model's."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    if (checkpoint.path / TRAINABLE).exists():
        tensors = load_safetensors(checkpoint.path / TRAINABLE, device=device)
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        if set(tensors) != trainable:
            missing, unexpected = sorted(trainable - set(tensors))[:4], sorted(set(tensors) - trainable)[:4]
            raise ValueError(f"checkpoint {checkpoint.path} holds other trainable tensors: missing {missing}, unexpected {unexpected}")
        model.load_state_dict(tensors, strict=False)
        return
    path = checkpoint.path / MODEL
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device=device)
    except (SafetensorError, OSError) as e:
        raise DamagedFile(path, str(e).splitlines()[0] if str(e) else type(e).__name__, _remedy(path.parent.parent, besides=path.parent)) from None
    except RuntimeError as e:  # load_state_dict: shapes of another model
        raise ValueError(f"checkpoint {checkpoint.path} does not fit the model: {' '.join(str(e).split())[:400]}") from None
    if missing or unexpected:
        raise ValueError(f"checkpoint {checkpoint.path} does not fit the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")


def clean_stale(folder: Path) -> list[Path]:
    """Delete what interrupted writes left in ``folder`` (a run folder or its checkpoints folder): temp
    files and folders named :data:`TEMP_PREFIXES`. Call it only while holding the run's lock."""
    import shutil

    removed = []
    for sub in (Path(folder), Path(folder) / CHECKPOINTS):
        for stale in sub.glob(".*") if sub.is_dir() else ():
            if stale.name.startswith(TEMP_PREFIXES):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed
