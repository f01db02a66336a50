"""The run layer every entry point shares (zoo-train, zoo-bench, zoo-generate).

- :mod:`zoo.run.checkpoint`: the checkpoint layout on disk and finding the latest one; files read
  as data only, a damaged one a one-line error naming the last good checkpoint.
- :mod:`zoo.run.folder`: a run folder belongs to one run (a lock, and no silent overwrite).
- :mod:`zoo.run.entry`: entry-point set-up and the exit policy (a user's mistake is one line and
  status 2, Ctrl-C stops without a traceback).
- :mod:`zoo.run.naming`: readable run and job names, and a sweep's W&B group.
- :mod:`zoo.run.launchers`: which plugin each Hydra launcher needs, and torch threads per job.
- :mod:`zoo.run.tracking`: W&B imported offline by default, and a sweep's or study's summary table.

Only the standard library, torch and safetensors at import time; Hydra and W&B are imported by the
functions that need them. Nothing here imports zoo.train, zoo.bench or zoo.generation.
"""
