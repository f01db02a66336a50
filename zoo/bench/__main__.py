"""``python -m zoo.bench``, the same as ``zoo-bench``."""

from zoo.bench import main

main()
