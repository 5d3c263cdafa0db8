"""Dropout with 16-bit keep decisions, two from each 32-bit random draw (a speed option, off unless a recipe asks).

    u = 16 bits of a draw,  keep = u >= round(rate * 2^16),  y = where(keep, x / P(keep), 0)
    P(keep) = 1 - round(rate * 2^16) / 2^16                      (exact, so E[y] = x)

Why not `nn.Dropout`: it draws 32 random bits for every element, and with JAX's partitionable threefry each 32-bit
draw is one threefry2x32 hash (20 rounds of integer work) whose two words are XOR-ed together. A UNet with dropout
in every ResBlock hashes once per activation of those blocks, and on a GPU the hashing is a visible part of a short
step (benchmarks/NOTES.md, "Closed-form GroupNorm gradients and paired dropout masks"). Here each hash decides two
channels: channel c takes the low 16 bits of draw c and channel c + ceil(C / 2) the high 16 bits. The rate is
rounded to a multiple of 2^-16 (0.1 -> 0.100006); `nn.Dropout` compares a float32 uniform, whose resolution is
2^-23. Draws are indexed by element, as `jax.random.bits`, so a sharded batch gives the same mask as an unsharded
one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

LEVELS = 1 << 16


class PairedDropout(nn.Module):
    """Inverted dropout over x (..., C), the 'dropout' rng; the identity when `deterministic` or rate 0."""

    rate: float
    deterministic: bool = False
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x (..., C) -> (..., C) in x's dtype."""
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"dropout rate {self.rate}: expected 0 <= rate < 1")
        threshold = round(self.rate * LEVELS)
        if self.deterministic or threshold == 0:
            return x
        channels = x.shape[-1]
        draws = jax.random.bits(self.make_rng(self.rng_collection), (*x.shape[:-1], (channels + 1) // 2), jnp.uint32)
        decisions = jnp.concatenate([draws & (LEVELS - 1), draws >> 16], axis=-1)[..., :channels]
        keep_probability = 1.0 - threshold / LEVELS
        return jnp.where(decisions >= threshold, x / jnp.asarray(keep_probability, x.dtype), jnp.zeros_like(x))
