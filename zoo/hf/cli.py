"""``zoo-import PATH OUT``: a local Hugging Face checkpoint folder as a zoo folder.

Writes ``OUT/config.yaml`` (the composition) and ``OUT/model.safetensors`` (zoo's names); with
``--check`` it also loads the checkpoint with ``transformers`` and compares logits.
"""

import argparse
import sys

from zoo.config import DTYPES
from zoo.errors import ConfigError


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="zoo-import", description=__doc__.split("\n")[0].replace("``", ""))
    parser.add_argument("path", help="local checkpoint folder (config.json + safetensors), e.g. from save_pretrained")
    parser.add_argument("out", help="folder to write config.yaml and model.safetensors to")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on top of the checkpoint's composition")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast the weights (default: float32)")
    parser.add_argument("--check", action="store_true", help="compare logits with the transformers model (needs transformers)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest logit difference --check accepts")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from zoo.hf import convert, load
    from zoo.hf.checkpoint import read_config
    from zoo.hf.convert import family_for

    try:
        out = convert(args.path, args.out, overrides=args.overrides, dtype=DTYPES.get(args.dtype))
        print(f"wrote {out / 'config.yaml'} and {out / 'model.safetensors'}")
        if not args.check:
            return 0
        from zoo.hf.parity import load_hf, report

        family = family_for(read_config(args.path))
        result = report(load(out).float(), load_hf(args.path, auto_class=family.auto_class))
    except ConfigError as e:
        print(f"zoo-import: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"zoo-import: --check needs transformers (pip install 'transformer-zoo[hf]'): {e}", file=sys.stderr)
        return 2
    print("parity: " + ", ".join(f"{k}={v:.3g}" for k, v in result.items()))
    ok = max(result["max_abs_diff"], result["max_abs_diff_cached"]) <= args.tolerance and result["greedy_equal"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
