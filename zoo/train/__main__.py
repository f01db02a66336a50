"""``python -m zoo.train``: the same as ``zoo-train``."""

from zoo.train import main

if __name__ == "__main__":
    main()
