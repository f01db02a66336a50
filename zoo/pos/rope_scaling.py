"""Scaled rotary embeddings: RoPE stretched past the length a model was trained at (``model/pos``).

Each is :class:`~zoo.pos.rope.RoPE` with other frequencies (YaRN also with a temperature), so every
kernel, cache and architecture that takes RoPE takes them. ``original_max_seq_len`` is the length the
unscaled model was trained at (``null``: ``model.max_seq_len``); ``factor`` how many times longer the
scaled one reads. A frequency ``f`` has wavelength ``2 pi / f`` tokens: the schemes differ in which
wavelengths they stretch.
"""

import math

import torch

from zoo.errors import ConfigError
from zoo.pos.rope import RoPE, rotation_tables


def _check_factor(factor: float) -> None:
    if not factor >= 1.0:
        raise ConfigError("model.pos.factor", factor, "must be at least 1 (how many times longer the scaled model reads)")


class LinearRoPE(RoPE):
    """Position interpolation (Chen et al. 2023, arXiv:2306.15595): every frequency divided by ``factor``.

    Positions ``0..factor * L`` land where ``0..L`` were during training, at the price of finer
    spacing between neighbours.

    Args:
        factor: the stretch; 1 is plain RoPE.
        (the rest as :class:`~zoo.pos.rope.RoPE`)
    """

    def __init__(self, dim: int, *, factor: float = 2.0, **rope) -> None:
        _check_factor(factor)
        super().__init__(dim, **rope)
        self.factor = factor
        self.inv_freq = self.inv_freq / factor


def llama3_frequencies(
    inv_freq: torch.Tensor, *, factor: float, low_freq_factor: float, high_freq_factor: float, original_max_seq_len: int
) -> torch.Tensor:
    """Llama 3.1's scaled frequencies (Grattafiori et al. 2024, arXiv:2407.21783).

    Wavelengths shorter than ``L / high_freq_factor`` stay (they resolve local order and were seen
    whole in training), those longer than ``L / low_freq_factor`` are divided by ``factor`` (position
    interpolation), and between the two the frequency blends linearly in ``L / wavelength``.
    """
    wavelength = 2 * math.pi / inv_freq
    # 0 at the long end (interpolated), 1 at the short end (kept)
    keep = ((original_max_seq_len / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0, 1)
    return (1 - keep) * inv_freq / factor + keep * inv_freq


class Llama3RoPE(RoPE):
    """RoPE with Llama 3.1's frequency scaling (:func:`llama3_frequencies`, arXiv:2407.21783).

    Args:
        factor: the stretch of the long wavelengths (8 in Llama 3.1).
        low_freq_factor: wavelengths above ``original_max_seq_len / low_freq_factor`` are fully stretched (1).
        high_freq_factor: wavelengths below ``original_max_seq_len / high_freq_factor`` are kept (4).
        original_max_seq_len: the training length of the unscaled model (8192); ``None``: ``max_seq_len``.
        (the rest as :class:`~zoo.pos.rope.RoPE`)
    """

    def __init__(
        self,
        dim: int,
        *,
        factor: float = 8.0,
        low_freq_factor: float = 1.0,
        high_freq_factor: float = 4.0,
        original_max_seq_len: int | None = None,
        max_seq_len: int,
        **rope,
    ) -> None:
        _check_factor(factor)
        if not high_freq_factor > low_freq_factor:
            raise ConfigError(
                "model.pos.high_freq_factor", high_freq_factor, f"must exceed model.pos.low_freq_factor={low_freq_factor}"
            )
        super().__init__(dim, max_seq_len=max_seq_len, **rope)
        self.factor, self.low_freq_factor, self.high_freq_factor = factor, low_freq_factor, high_freq_factor
        self.original_max_seq_len = original_max_seq_len or max_seq_len
        self.inv_freq = llama3_frequencies(
            self.inv_freq,
            factor=factor,
            low_freq_factor=low_freq_factor,
            high_freq_factor=high_freq_factor,
            original_max_seq_len=self.original_max_seq_len,
        )


def yarn_frequencies(
    inv_freq: torch.Tensor, *, factor: float, original_max_seq_len: int, theta: float, beta_fast: float, beta_slow: float, truncate: bool
) -> torch.Tensor:
    """YaRN's "NTK-by-parts" frequencies (Peng et al. 2023, arXiv:2309.00071, eq. 18-19).

    A frequency that turns more than ``beta_fast`` times over the training length is kept, one that
    turns fewer than ``beta_slow`` times is divided by ``factor``, and between them the two blend
    linearly over the channel index. ``truncate`` rounds the blend's channel bounds outwards (as the
    paper's code does; ``transformers`` lets a config turn it off).
    """
    rot_dim = 2 * inv_freq.shape[0]

    def channel(turns: float) -> float:  # the channel whose frequency turns `turns` times over the training length
        return rot_dim * math.log(original_max_seq_len / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = channel(beta_fast), channel(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rot_dim - 1)
    if low == high:
        high += 0.001  # a ramp of zero width
    ramp = ((torch.arange(rot_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp.to(inv_freq.device)
    return inv_freq / factor * (1 - keep) + inv_freq * keep


def yarn_temperature(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention factor ``0.1 ln(factor) + 1`` (arXiv:2309.00071, eq. 22): its ``sqrt(1/t)``.

    ``mscale`` multiplies the logarithm (DeepSeek's configs spell the factor as a ratio of two).
    """
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


class YaRNRoPE(RoPE):
    """YaRN (Peng et al. 2023, arXiv:2309.00071): :func:`yarn_frequencies` and a softmax temperature.

    The temperature multiplies cos and sin by ``attention_factor``, so every score grows by its
    square: the attention sharpens back to what it was at the training length.

    Args:
        factor: the stretch (4 for Qwen2.5's 128k).
        original_max_seq_len: the training length of the unscaled model; ``None``: ``max_seq_len``.
        beta_fast, beta_slow: turns over the training length above which a frequency is kept, below
            which it is fully stretched (32 and 1 in the paper).
        attention_factor: the cos/sin multiplier; ``None``: :func:`yarn_temperature` of ``factor``.
        truncate: round the blend's channel bounds to whole channels.
        (the rest as :class:`~zoo.pos.rope.RoPE`)
    """

    def __init__(
        self,
        dim: int,
        *,
        factor: float = 4.0,
        original_max_seq_len: int | None = None,
        beta_fast: float = 32.0,
        beta_slow: float = 1.0,
        attention_factor: float | None = None,
        truncate: bool = True,
        max_seq_len: int,
        theta: float = 10000.0,
        **rope,
    ) -> None:
        _check_factor(factor)
        if not beta_fast > beta_slow > 0:
            raise ConfigError("model.pos.beta_fast", beta_fast, f"must exceed model.pos.beta_slow={beta_slow}, itself above 0")
        super().__init__(dim, max_seq_len=max_seq_len, theta=theta, **rope)
        self.factor = factor
        self.original_max_seq_len = original_max_seq_len or max_seq_len
        self.attention_factor = yarn_temperature(factor) if attention_factor is None else attention_factor
        self.inv_freq = yarn_frequencies(
            self.inv_freq,
            factor=factor,
            original_max_seq_len=self.original_max_seq_len,
            theta=theta,
            beta_fast=beta_fast,
            beta_slow=beta_slow,
            truncate=truncate,
        )

    def rotation(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = super().rotation(positions)
        return cos * self.attention_factor, sin * self.attention_factor


class DynamicNTKRoPE(RoPE):
    """Dynamic NTK-aware scaling (bloc97 and emozilla 2023; YaRN paper, arXiv:2309.00071, section 3.3).

    Up to ``original_max_seq_len`` it is plain RoPE; past it, each forward raises the base to
    ``theta * (factor * s / L - (factor - 1)) ** (r / (r - 2))`` for the longest position ``s`` it
    sees, so the lowest frequency spans the whole input while the highest barely moves. Cached keys
    keep the rotation of the forward that wrote them (as in ``transformers``): cached decoding then
    differs from a full forward once the input passes ``original_max_seq_len``.

    Args:
        factor: how fast the base grows with length.
        original_max_seq_len: the length below which nothing changes; ``None``: ``max_seq_len``.
        (the rest as :class:`~zoo.pos.rope.RoPE`)
    """

    def __init__(
        self,
        dim: int,
        *,
        factor: float = 2.0,
        original_max_seq_len: int | None = None,
        max_seq_len: int,
        theta: float = 10000.0,
        **rope,
    ) -> None:
        _check_factor(factor)
        super().__init__(dim, max_seq_len=max_seq_len, theta=theta, **rope)
        self.factor, self.theta = factor, theta
        self.original_max_seq_len = original_max_seq_len or max_seq_len

    def frequencies(self, length: int) -> torch.Tensor:
        """The frequencies ``(r/2,)`` of a forward whose longest position is ``length - 1``."""
        if length <= self.original_max_seq_len:
            return self.inv_freq
        r = self.rot_dim
        theta = self.theta * (self.factor * length / self.original_max_seq_len - (self.factor - 1)) ** (r / (r - 2))
        return theta ** (-torch.arange(0, r, 2, dtype=torch.float32, device=self.inv_freq.device) / r)

    def rotation(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rotation_tables(positions[:, :, None, None].float() * self.frequencies(int(positions.max()) + 1))
