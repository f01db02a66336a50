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
    from zoo.run.naming import register_resolvers

    register_plugins()
    register_resolvers()
    os.environ.setdefault("WANDB_MODE", "offline")


#: Hydra flags after which the argument is theirs, not an override
_FLAG_VALUES = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "--experimental-rerun", "-c", "--cfg", "-p", "--package")
#: flags that make Hydra print something and stop: nothing to check
_INFO_FLAGS = ("-h", "--help", "-i", "--info", "--hydra-help", "--shell-completion", "-sc", "--version", "--cfg", "-c")


def check_overrides(argv: list[str], *, config_name: str) -> None:
    """Compose the command line's overrides before Hydra does, so that an unknown option or a typo
    key is one :class:`ConfigError` line (the allowed options, the nearest key), not Hydra's several
    lines and status 1. A sweep (``a=x,y``) is checked value by value."""
    if any(a in _INFO_FLAGS or a.split("=")[0] in _INFO_FLAGS for a in argv):
        return
    overrides, skip = [], False
    for arg in argv:
        if skip or arg.startswith("-"):
            skip = not skip and arg in _FLAG_VALUES
            continue
        if not arg.lstrip("+~").startswith(("hydra.", "hydra/")):
            overrides.append(arg)
    if not overrides:
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from zoo.config import compose

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # Hydra's grammar error: a malformed override
        raise ConfigError("overrides", " ".join(overrides), " ".join(str(e).split())[:300]) from None
    choices = [[o.input_line] if not o.is_sweep_override() else [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in parsed]
    first = [c[0] for c in choices]
    compose(first, config_name=config_name)
    for i, values in enumerate(choices):
        for value in values[1:]:
            compose([*first[:i], value, *first[i + 1 :]], config_name=config_name)


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
