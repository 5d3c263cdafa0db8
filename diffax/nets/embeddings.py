"""Noise-level, class-label and position embeddings, and the conditioning contract shared by every network.

Noise level. Every network takes a (B,) float `noise_level`: whatever scalar the objective feeds it (diffusion
time t in [0, 1], log-SNR, or EDM's c_noise = log(sigma) / 4). It is multiplied by `noise_scale` and then embedded
with fixed sinusoids (DDPM / ADM / DiT) or random Fourier features (NCSN++):

    noise_scale = 1000   t in [0, 1], the DDPM convention (the embedding sees the integer-step range 0..1000)
    noise_scale = 1      EDM's c_noise = log(sigma) / 4 (about [-1.5, 1.2]) or log-SNR (about [-20, 20])

Conditioning `cond` (one argument, its kind told by its shape; see `split_condition`):

    None        unconditional; a class-conditional network then uses the null class
    (B,) int    class labels in [0, num_classes]; index `num_classes` is the learned null class of classifier-free
                guidance (Ho & Salimans 2022), see `drop_labels`
    (B, L, E)   an embedding sequence, read through cross-attention (networks built with `cross_attention=True`);
                its null is the zero sequence, see `drop_context`

Labels reach a network in one of two ways (`LabelConditioning`): 'embedding' adds a learned label vector to the
noise-level embedding (ADM, DiT); 'cross_attention' maps the label to a learned one-token context (B, 1, E) that
every attention block reads (LDM's class-conditional ImageNet model, Rombach et al. 2022: its ClassEmbedder). Both
tables have num_classes + 1 rows, the last the null class, so label dropout and guidance are the same for both.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
EmbeddingType = Literal["sinusoidal", "fourier"]
LabelConditioning = Literal["embedding", "cross_attention"]
LABEL_CONDITIONINGS = ("embedding", "cross_attention")


def sinusoidal_embedding(x: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Transformer sinusoids of a scalar (Vaswani et al. 2017; DDPM, Ho et al. 2020; ADM; DiT).

    emb = [cos(x * w_k), sin(x * w_k)],  w_k = max_period^(-k / (dim/2)),  k = 0 .. dim/2 - 1.

    Args:
      x: (B,) positions or scaled noise levels; computed in float32 whatever its dtype.
      dim: even embedding width.
    Returns:
      (B, dim) float32.
    """
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float32) / half)
    args = x.astype(jnp.float32)[:, None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def fourier_embedding(x: jax.Array, dim: int, scale: float = 16.0, seed: int = 0) -> jax.Array:
    """Random Fourier features (Tancik et al. 2020), the NCSN++ noise embedding (Song et al. 2021).

    emb = [cos(2 pi x w), sin(2 pi x w)],  w ~ N(0, scale^2)^(dim/2), drawn once from `seed`. The frequencies are
    a constant of the traced program (not a parameter), so optimizers and weight decay never see them.

    Args:
      x: (B,) scaled noise levels (NCSN++ feeds log(sigma)).
    Returns:
      (B, dim) float32.
    """
    freqs = scale * np.random.default_rng(seed).standard_normal(dim // 2).astype(np.float32)
    args = 2 * np.pi * x.astype(jnp.float32)[:, None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def sincos_2d_positions(height: int, width: int, dim: int) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding of a token grid (MAE, He et al. 2022; used by DiT).

    Half the channels encode the row index, half the column index, each with `sinusoidal_embedding`'s
    frequencies (sin first, as MAE/DiT).

    Returns:
      (height * width, dim) float32 numpy array (a compile-time constant), tokens in row-major order.
    """
    if dim % 4:
        raise ValueError(f"position embedding width {dim} is not divisible by 4")
    freqs = 1.0 / 10_000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    parts = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):
        args = pos[:, None] * freqs
        parts += [np.sin(args), np.cos(args)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def drop_labels(key: jax.Array, labels: jax.Array, p: float, num_classes: int) -> jax.Array:
    """Replaces each label by the null class `num_classes` with probability p (classifier-free guidance training).

    Args:
      labels: (B,) int in [0, num_classes).
    Returns:
      (B,) int, each entry `num_classes` with probability p, else unchanged.
    """
    drop = jax.random.bernoulli(key, p, labels.shape)
    return jnp.where(drop, num_classes, labels)


def drop_context(key: jax.Array, context: jax.Array, p: float) -> jax.Array:
    """Replaces each embedding sequence by the null context, zeros, with probability p (classifier-free guidance
    training on data-fed sequences, as SDXL zeroes dropped embeddings).

    Args:
      context: (B, L, E).
    Returns:
      (B, L, E), each sequence all zeros with probability p, else unchanged.
    """
    drop = jax.random.bernoulli(key, p, context.shape[:1])
    return jnp.where(drop[:, None, None], jnp.zeros((), context.dtype), context)


def null_condition(cond: jax.Array, num_classes: int | None) -> jax.Array:
    """The null of `cond` that guidance contrasts with: the null class `num_classes` for (B,) int labels, the zero
    sequence for (B, L, E) embeddings (what `drop_labels` and `drop_context` train)."""
    if jnp.issubdtype(cond.dtype, jnp.integer):
        if num_classes is None:
            raise ValueError("class labels need num_classes to name the null class")
        return jnp.full_like(cond, num_classes)
    return jnp.zeros_like(cond)


def split_condition(
    cond: jax.Array | None, *, batch: int, num_classes: int | None, cross_attention: bool,
    label_conditioning: LabelConditioning = "embedding",
) -> tuple[jax.Array | None, jax.Array | None]:
    """Tells labels from an embedding sequence and checks them against what the network was built for.

    Args:
      cond: None, (B,) int labels, or a (B, L, E) embedding sequence.
      batch: B, the batch size of x.
      label_conditioning: with 'cross_attention' the labels (or, for cond None, the null class) are read through
        cross-attention (`LabelContext`), so no data sequence is needed.
    Returns:
      (labels, context): (B,) int or None, and (B, L, E) or None.
    """
    if label_conditioning not in LABEL_CONDITIONINGS:
        raise ValueError(f"label_conditioning {label_conditioning!r}: expected one of {LABEL_CONDITIONINGS}")
    if label_conditioning == "cross_attention" and num_classes is None:
        raise ValueError("label_conditioning='cross_attention' needs num_classes")
    if cond is None:
        if cross_attention and label_conditioning != "cross_attention":
            raise ValueError("this network was built with cross_attention=True and needs cond of shape (B, L, E)")
        return None, None
    if cond.shape[0] != batch:
        raise ValueError(f"cond has batch size {cond.shape[0]}, expected {batch} like x")
    if cond.ndim == 1 and jnp.issubdtype(cond.dtype, jnp.integer):
        if num_classes is None:
            raise ValueError("got class labels as cond, but the network was built with num_classes=None")
        return cond, None
    if cond.ndim == 3:
        if not cross_attention:
            raise ValueError(f"got an embedding sequence {cond.shape} as cond, but cross_attention=False")
        return None, cond
    raise ValueError(f"cond of shape {cond.shape} and dtype {cond.dtype}: expected (B,) int labels or (B, L, E)")


class ConditioningEmbedding(nn.Module):
    """Noise level (and class label) -> one conditioning vector per example.

    emb = Dense(SiLU(Dense(phi(noise_scale * noise_level)))) + Embed(label), phi sinusoidal or Fourier: the
    DDPM / ADM / DiT time-embedding MLP, with ADM's / DiT's label table (num_classes + 1 rows, the last one the
    null class). Returns the pre-activation; networks apply SiLU before projecting it into their blocks.
    Computed in float32 whatever the network's compute dtype: it is one small vector per example.

    Attributes:
      features: output width (4x the base channels in UNets, the hidden size in DiT).
      frequency_dim: width of the fixed embedding phi.
      noise_scale: multiplier of noise_level before phi (1000 for t in [0, 1]; see the module docstring).
    """

    features: int
    frequency_dim: int
    embedding_type: EmbeddingType = "sinusoidal"
    noise_scale: float = 1000.0
    fourier_scale: float = 16.0
    num_classes: int | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, noise_level: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """noise_level (B,), labels (B,) int or None -> (B, features) float32."""
        scaled = self.noise_scale * noise_level.astype(jnp.float32)
        if self.embedding_type == "sinusoidal":
            phi = sinusoidal_embedding(scaled, self.frequency_dim)
        elif self.embedding_type == "fourier":
            phi = fourier_embedding(scaled, self.frequency_dim, self.fourier_scale)
        else:
            raise ValueError(f"embedding_type {self.embedding_type!r}: expected 'sinusoidal' or 'fourier'")
        dense = functools.partial(nn.Dense, self.features, param_dtype=self.param_dtype)
        emb = dense()(nn.silu(dense()(phi)))
        if self.num_classes is not None:
            if labels is None:
                labels = jnp.full(noise_level.shape, self.num_classes, jnp.int32)
            table = nn.Embed(self.num_classes + 1, self.features, embedding_init=nn.initializers.normal(0.02),
                             param_dtype=self.param_dtype)
            emb = emb + table(labels)
        return emb


class LabelContext(nn.Module):
    """Class label -> a one-token context (B, 1, features) for cross-attention: LDM's ClassEmbedder (Rombach et al.
    2022, its cin256 model), a learned table of num_classes + 1 rows, the last the null class (labels None: every
    example the null class). Initialized N(0, 1) like torch's nn.Embedding, which LDM uses: the context is read by
    the attention's key and value projections, so its scale sets the attention logits' from the start."""

    num_classes: int
    features: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, labels: jax.Array | None, batch: int) -> jax.Array:
        """labels (B,) int or None -> (B, 1, features) float32."""
        if labels is None:
            labels = jnp.full((batch,), self.num_classes, jnp.int32)
        table = nn.Embed(self.num_classes + 1, self.features, embedding_init=nn.initializers.normal(1.0),
                         param_dtype=self.param_dtype)
        return table(labels)[:, None, :]


def labels_and_context(cond: jax.Array | None, *, batch: int, num_classes: int | None, cross_attention: bool,
                       label_conditioning: LabelConditioning, context_features: int,
                       param_dtype: Dtype = jnp.float32) -> tuple[jax.Array | None, jax.Array | None]:
    """What a network's blocks read of `cond` (call inside its compact `__call__`): (labels for
    `ConditioningEmbedding` (B,) or None, context for cross-attention (B, L, E) or None). With label_conditioning
    'cross_attention' the labels become the context through a `LabelContext` of width `context_features`, named
    'label_context', and the embedding gets none."""
    labels, context = split_condition(cond, batch=batch, num_classes=num_classes, cross_attention=cross_attention,
                                      label_conditioning=label_conditioning)
    if label_conditioning == "cross_attention":
        return None, LabelContext(num_classes, context_features, param_dtype, name="label_context")(labels, batch)
    return labels, context
