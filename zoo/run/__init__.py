"""The run layer every entry point shares (zoo-train, zoo-bench, zoo-generate).

- :mod:`zoo.run.checkpoint`: the checkpoint layout on disk and finding the latest one; files read
  as data only, a damaged one a one-line error naming the last good checkpoint.
- :mod:`zoo.run.folder`: a run folder belongs to one run (a lock, and no silent overwrite).
- :mod:`zoo.run.entry`: entry-point set-up and the exit policy (a user's mistake is one line and
  status 2, Ctrl-C stops without a traceback).

Only the standard library, torch and safetensors here; Hydra and W&B stay in the entry points.
"""
