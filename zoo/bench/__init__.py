"""Benchmarks (``zoo-bench``): speed and quality of every variant, side by side with the peers.

- :mod:`zoo.bench.flops`: parameters and analytic FLOPs per token, per component;
- :mod:`zoo.bench.timing`, :mod:`zoo.bench.speed`: training, prefill and cached-decode tokens/s,
  latency, peak memory, MFU against the device's measured matmul rate, sequence-length scaling;
- :mod:`zoo.bench.quality`, :mod:`zoo.bench.budget`, :mod:`zoo.bench.stats`: fixed-budget training
  over seeds through :func:`zoo.train.train`, extrapolation, MQAR, budget matching, t-based CIs;
- :mod:`zoo.bench.report`, :mod:`zoo.bench.plots`: ``results.jsonl``, ``summary.md``, plots, W&B;
- :mod:`zoo.bench.peers`, :mod:`zoo.bench.reference`: the same Llama built by zoo, a plain-PyTorch
  reference, HF ``transformers`` and ``x-transformers``, timed interleaved.

Python API: :func:`zoo.bench.run.run_variant` benchmarks one composed config. Hydra, matplotlib,
W&B and the peers are imported when used, not by ``import zoo.bench``.
"""


def main() -> None:
    """``zoo-bench [study=NAME] [overrides...]``."""
    from zoo.bench.cli import main as cli_main

    cli_main()


__all__ = ["main"]
