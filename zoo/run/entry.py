"""Entry-point set-up and exit policy, shared by zoo-train, zoo-bench and zoo-generate.

Exit statuses: 0 done; 1 a run failed or diverged (a sweep: any job did); 2 the user's input was
wrong (a config mistake, a refused or damaged file), said in one line before any heavy work; 130
interrupted (Ctrl-C), said in one line. A bug in zoo keeps its traceback.
"""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from zoo.errors import ConfigError, FileError

EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 1, 2, 130


def setup() -> None:
    """What every Hydra entry point needs before Hydra starts: the plugins' configs on the search
    path, zoo's resolvers, and W&B offline unless the user chose (before anything imports wandb)."""
    from zoo.config import register_plugins
    from zoo.train.sweep import register_resolvers

    register_plugins()
    register_resolvers()
    os.environ.setdefault("WANDB_MODE", "offline")


def describe(error: ConfigError) -> str:
    """The one line for a user's mistake: a file names itself, a config value is a config error."""
    text = " ".join(str(error).split())
    return text if isinstance(error, FileError) else f"config error: {text}"


@contextmanager
def exit_policy(program: str) -> Iterator[None]:
    """Run the ``with`` block; a :class:`ConfigError` prints one line and exits 2, Ctrl-C one line and 130."""
    try:
        yield
    except ConfigError as e:
        print(f"{program}: {describe(e)}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
