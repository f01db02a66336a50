"""``zoo-info``: the catalogue of every config group and option (plugins included) and what works with what.

The catalogue is read from the config search path and from what each component class declares, so
``docs/components.md`` (``zoo-info --markdown``) can never drift from the code.
"""

import argparse
import importlib
import sys
from dataclasses import dataclass
from importlib.resources import files

from omegaconf import OmegaConf

from zoo.config import CONF_MODULE, GROUPS, plugin_config_modules, register_plugins


@dataclass
class Option:
    group: str
    name: str
    target: str | None
    summary: str
    provider: str


def _summary_and_provider(group: str, name: str) -> tuple[str, str]:
    """The YAML's opening comment, whole (its lines joined), and which package ships it (zoo or a plugin)."""
    for provider, module in [("zoo", CONF_MODULE), *plugin_config_modules().items()]:
        path = files(module).joinpath(*group.split("/"), f"{name}.yaml")
        if path.is_file():
            return opening_comment(path.read_text()), provider
    return "", "?"


def opening_comment(yaml: str) -> str:
    """The comment lines before the first line of YAML (``# @package`` aside), as one line of text."""
    lines = []
    for line in yaml.splitlines():
        if line.startswith("# @package"):
            continue
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(line for line in lines if line)


def catalogue() -> list[Option]:
    """Every option of every group on the search path."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    register_plugins()
    GlobalHydra.instance().clear()
    options = []
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups = list(GROUPS) + sorted(
            g for g in _all_groups(loader) if g not in GROUPS and not g.startswith("hydra")
        )
        for group in groups:
            for name in sorted(loader.get_group_options(group)):
                summary, provider = _summary_and_provider(group, name)
                target = None
                try:
                    cfg = compose(config_name=f"{group}/{name}")
                    target = OmegaConf.select(cfg, group.replace("/", ".") + "._target_", default=None)
                except HydraException:
                    pass  # an overlay of the whole config (preset, experiment): it names no class
                options.append(Option(group, name, target, summary, provider))
    return options


def _all_groups(loader, parent: str = "") -> list[str]:
    found = []
    for group in loader.list_groups(parent):
        path = f"{parent}/{group}" if parent else group
        found.append(path)
        found += _all_groups(loader, path)
    return [g for g in found if loader.get_group_options(g)]


def _resolve(target: str):
    """The object a dotted ``_target_`` names (a class, or an attribute of one)."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"cannot import {target}")


def compatibility(options: list[Option]) -> dict[str, dict[str, str]]:
    """``{option: {architecture or property: verdict}}`` from the classes' declarations; the
    architectures are the ``model`` group's options (plugins included), each asked what it holds."""
    archs = [_resolve(o.target) for o in options if o.group == "model" and o.target is not None]
    names = [a.arch for a in archs]
    rows = {}
    for opt in options:
        if opt.target is None or opt.group not in ("model/residual", "model/pos", "model/attention", "model/ffn/router", "objective"):
            continue
        cls = _resolve(opt.target)
        row = {arch: "yes" for arch in names}
        compatible = getattr(cls, "compatible_archs", names)
        row.update({arch: "no" for arch in names if arch not in compatible})
        for arch in archs:
            if opt.group == "model/residual" and arch.cross_attends and not getattr(cls, "supports_cross_attention", True):
                row[arch.arch] = "no: no cross-attention slot"
            if opt.group in ("model/pos", "model/attention") and arch.has_bidirectional_stack and getattr(cls, "requires_causal", False):
                row[arch.arch] = "no: needs a causal mask"
        if opt.group == "model/pos":
            row["past max_seq_len"] = "yes" if getattr(cls, "extrapolates", True) else "no"
            row["2D (GLM)"] = "yes" if getattr(cls, "two_dimensional", False) else "no"
        if opt.group == "model/attention":
            row["KV cache"] = getattr(cls, "cache_summary", "yes")
        rows[f"{opt.group}={opt.name}"] = row
    return rows


def kernels() -> tuple[list[str], list[list[str]]]:
    """The attention kernels (``model.attention.kernel``) and what each declares it supports."""
    from zoo.attention.kernels import KERNEL_SPECS

    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    sinks = lambda s: ("yes" if s.sinks_on_cpu else "CUDA") if s.supports_sinks else "no"  # noqa: E731
    header = ["kernel", "score bias", "soft-cap", "sinks", "dropout", "backward on CPU", "CUDA only", "linear window", "sparse pattern", "what"]
    rows = [
        [
            name, yes(s.supports_bias), yes(s.supports_softcap), sinks(s), yes(s.supports_dropout), yes(s.supports_backward_on_cpu), yes(s.needs_cuda),
            yes(s.linear_window), yes(s.sparse_pattern), s.summary,
        ]
        for name, s in KERNEL_SPECS.items()
    ]
    return header, rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(options: list[Option]) -> str:
    out = [
        "# Components",
        "",
        "Generated by `zoo-info --markdown` from the config tree and the classes' declarations; do not edit.",
        "",
    ]
    for group in dict.fromkeys(o.group for o in options):
        out += [f"## `{group}`", ""]
        rows = [[f"`{o.name}`", f"`{o.target}`" if o.target else "", o.summary, o.provider] for o in options if o.group == group]
        out += [_table(["option", "class", "what", "from"], rows), ""]
    matrix = compatibility(options)
    columns = list(dict.fromkeys(k for row in matrix.values() for k in row))
    out += ["## Compatibility", "", "Which option works with which architecture, from what each class declares.", ""]
    out += [_table(["option", *columns], [[f"`{k}`", *(v.get(c, "") for c in columns)] for k, v in matrix.items()]), ""]
    header, rows = kernels()
    out += ["## Attention kernels (`model.attention.kernel`)", "", "`auto` picks the fastest correct kernel for the device, mode and mask.", ""]
    out += [_table(header, [[f"`{r[0]}`", *r[1:]] for r in rows]), ""]
    return "\n".join(out)


def text(options: list[Option]) -> str:
    width = max(len(o.name) for o in options) + 2
    out = []
    for group in dict.fromkeys(o.group for o in options):
        out.append(group)
        for o in (o for o in options if o.group == group):
            plugin = "" if o.provider == "zoo" else f" [plugin {o.provider}]"
            out.append(f"  {o.name:<{width}}{o.summary}{plugin}")
    matrix = compatibility(options)
    columns = list(dict.fromkeys(k for row in matrix.values() for k in row))
    key_width = max(len(k) for k in matrix) + 2
    out += ["", "compatibility".ljust(key_width) + "  ".join(f"{c:<10}" for c in columns)]
    for key, row in matrix.items():
        out.append(key.ljust(key_width) + "  ".join(f"{row.get(c, '').split(':')[0]:<10}" for c in columns))
    header, rows = kernels()
    out += ["", "  ".join(f"{h:<16}" for h in header[:-1])]
    out += ["  ".join(f"{c:<16}" for c in row[:-1]) for row in rows]
    return "\n".join(out)


def cost(overrides: list[str]) -> str:
    """Parameters and per-token FLOPs per component of the model ``overrides`` compose, at
    ``trainer.seq_len``, as the model counts them (the figures W&B and zoo-bench report)."""
    from zoo.arch.cost import cost_report
    from zoo.config import compose, instantiate_model

    cfg = compose(overrides)
    seq_len = int(cfg.trainer.seq_len)
    model = instantiate_model(cfg.model, device="meta")
    report = cost_report(model, seq_len=seq_len)
    lines = [f"{type_name(cfg.model)} at seq_len={seq_len}"]
    lines += [f"  {k:<24}{v:>16,.0f}" for k, v in report.items()]
    rows = model.layer_costs(seq_len=seq_len)
    header = ["layer", "kind", "window", "ffn", "pos", "params", "flops/token", "decode step flops", "KV cache bytes"]
    table = [
        [str(r["layer"]), r["kind"], str(r["window"] or "full"), r["ffn"], r["pos"], f"{r['params']:,}", f"{r['flops_per_token']:,.0f}",
         "-" if r["decode_flops"] is None else f"{r['decode_flops']:,.0f}", f"{r['kv_cache_bytes']:,}"]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(x) for x in column) for column in zip(header, *table)]
    lines += ["", "per layer (decode step and KV cache: token seq_len of one sequence, decoding)"]
    lines += ["  " + "  ".join(x.rjust(w) if j >= 5 else x.ljust(w) for j, (x, w) in enumerate(zip(row, widths))) for row in [header, *table]]
    return "\n".join(lines)


def type_name(model_cfg) -> str:
    return str(model_cfg._target_).rsplit(".", 1)[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="zoo-info", description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print docs/components.md")
    parser.add_argument(
        "--cost", nargs="*", metavar="OVERRIDE",
        help="parameters and FLOPs per token of the model these overrides compose (e.g. model/ffn=moe)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.cost is not None:
        sys.stdout.write(cost(args.cost) + "\n")
        return
    options = catalogue()
    sys.stdout.write((markdown(options) if args.markdown else text(options)) + "\n")


if __name__ == "__main__":
    main()
