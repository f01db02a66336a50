"""The one error type a user's configuration mistake raises.

Entry points catch it and print its message without a traceback: a bad config is the user's
input, not a bug in zoo.
"""


class ConfigError(ValueError):
    """A configuration value that cannot work, named by its config key.

    Args:
        key: the dotted config key, e.g. ``model.attention.n_kv_heads``.
        value: the offending value.
        allowed: what would be accepted, in words (``"one of: mha, mqa"``, ``"> 0"``).
    """

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")
