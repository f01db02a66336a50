"""Resuming a run: which checkpoint it continues, that the config is the one it trained under, and
the weights, optimizer, data position, RNG and objective draws put back as they were."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from zoo.config import resolved_config
from zoo.errors import ConfigError
from zoo.train import checkpoint as ckpt
from zoo.train.components import Components
from zoo.train.distributed import Dist
from zoo.train.settings import Settings


def resumes_here(settings: Settings, out_dir: Path) -> bool:
    """Whether the run continues the checkpoints of its own folder (``auto``, or a path inside it)."""
    if settings.resume is None:
        return False
    if settings.resume == "auto":
        return True
    target, folder = Path(settings.resume).expanduser().resolve(), out_dir.resolve()
    return target == folder or folder in target.parents


def find_resume(settings: Settings, out_dir: Path) -> ckpt.Checkpoint | None:
    if settings.resume is None:
        return None
    try:
        found = ckpt.find(out_dir if settings.resume == "auto" else settings.resume)
    except FileNotFoundError as e:
        if settings.resume == "auto":
            return None
        raise ConfigError("trainer.resume", settings.resume, str(e)) from None
    if not found.is_training:
        raise ConfigError("trainer.resume", settings.resume, f"a training checkpoint ({found.path} has no {ckpt.STATE}: it holds weights only)")
    found.config()  # its targets checked before anything of it is used (zoo.trust)
    return found


#: what a resumed run must share with the checkpoint's run: what it trains on and how it reads it
SAME_ON_RESUME = ("model", "data", "tokenizer", "objective", "trainer.batch_size", "trainer.seq_len", "trainer.grad_accum")


def check_same_config(resume: ckpt.Checkpoint, cfg: DictConfig) -> None:
    """Refuse a resume under a different config, listing every key that differs (before any heavy work)."""
    saved = OmegaConf.to_container(resume.config(), resolve=True)
    now = resolved_config(cfg)
    differ = []
    for key in SAME_ON_RESUME:
        a, b = OmegaConf.select(OmegaConf.create(saved), key, default=None), OmegaConf.select(OmegaConf.create(now), key, default=None)
        a = OmegaConf.to_container(a) if OmegaConf.is_config(a) else a
        b = OmegaConf.to_container(b) if OmegaConf.is_config(b) else b
        differ += [k for k in _diff(a, b, key) if not k.startswith("model.vocab_size ")]  # set from the tokenizer when the run starts
    if differ:
        raise ConfigError("trainer.resume", str(resume.path), f"a checkpoint of this same config; these keys differ: {', '.join(differ[:12])}")


def _diff(a, b, key: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for sub in sorted(set(a) | set(b), key=str) for k in _diff(a.get(sub), b.get(sub), f"{key}.{sub}")]
    return [] if a == b else [f"{key} ({a!r} -> {b!r})"]


def restore_weights(resume: ckpt.Checkpoint, parts: Components) -> None:
    """The checkpoint's weights, into the whole model before any wrapper shards it."""
    try:
        ckpt.load_weights(resume, parts.model)
    except ConfigError:  # a damaged file names itself and the last good checkpoint
        raise
    except (ValueError, RuntimeError, KeyError) as e:  # a checkpoint of another model
        raise ConfigError("trainer.resume", str(resume.path), f"a checkpoint of this same config ({str(e).splitlines()[0]})") from None


def restore(resume: ckpt.Checkpoint, parts: Components, optimizer, objective, dist: Dist) -> None:
    """Optimizer, RNG, data position and objective draws as they were at the checkpoint."""
    try:
        ckpt.load_optimizer(resume, optimizer)
        parts.train_loader.load_state_dict(resume.state["loader"])
    except ConfigError:  # a damaged file names itself and the last good checkpoint
        raise
    except (ValueError, RuntimeError, KeyError) as e:  # a checkpoint of another model, data or batch size
        raise ConfigError("trainer.resume", str(resume.path), f"a checkpoint of this same config ({str(e).splitlines()[0]})") from None
    ckpt.load_rng(resume, rank=dist.rank)
    objective.step = int(resume.state["objective"]["step"])
