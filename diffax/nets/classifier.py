"""An image classifier whose penultimate layer is a feature space for sample-quality metrics (`diffax.evaluation`).

    h = Conv3x3(x)
    per level l: num_res_blocks pre-activation residual blocks (He et al. 2016, "Identity Mappings in Deep
                 Residual Networks", with GroupNorm, Wu & He 2018, and SiLU) of channels * channel_mult[l];
                 then 2x2 average pooling, except after the last level
    h = mean over H, W of SiLU(GroupNorm(h))                       global average pooling, (B, C)
    features = SiLU(Dense(feature_dim)(h))                         the penultimate layer, (B, feature_dim)
    logits = Dense(num_classes)(Dropout(features))                 (B, num_classes)

`Classifier.apply(variables, x, train=False, return_features=True)` returns the features: what a Fréchet
classifier distance compares in place of Inception's pool3 features (FID, Heusel et al. 2017). Unlike the score
networks it takes no noise level and no conditioning: `__call__(x, *, train)`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax.nets.layers import Dtype, PreActBlock, group_norm, xavier_init


class Classifier(nn.Module):
    """A small residual CNN classifier (module docstring).

    Attributes:
      num_classes: output classes (set from the data set by `diffax.experiment`).
      channels: channels of the first level.
      channel_mult: per level, a multiple of `channels`; each level after the first halves H and W (ceil).
      num_res_blocks: residual blocks per level.
      feature_dim: width of the penultimate (feature) layer.
      dropout: dropout in the residual blocks and before the logits (training only).
    """

    num_classes: int = 10
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    feature_dim: int = 128
    dropout: float = 0.0
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False) -> jax.Array:
        """x (B, H, W, C) in [-1, 1] -> logits (B, num_classes) float32, or with return_features the penultimate
        features (B, feature_dim) float32."""
        if x.ndim != 4:
            raise ValueError(f"Classifier input of shape {x.shape}: expected images (B, H, W, C)")
        h = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), kernel_init=xavier_init, dtype=self.dtype,
                    param_dtype=self.param_dtype)(x.astype(self.dtype))
        for level, mult in enumerate(self.channel_mult):
            if level > 0:
                h = nn.avg_pool(h, (2, 2), strides=(2, 2), padding="SAME")
            for _ in range(self.num_res_blocks):
                h = PreActBlock(self.channels * mult, self.dropout, self.norm_eps, self.dtype,
                                self.param_dtype)(h, train)
        h = nn.silu(group_norm(h.shape[-1], self.norm_eps, self.param_dtype)(h)).mean(axis=(1, 2))
        features = nn.silu(nn.Dense(self.feature_dim, kernel_init=xavier_init, param_dtype=self.param_dtype)(h))
        features = features.astype(jnp.float32)
        if return_features:
            return features
        features = nn.Dropout(self.dropout, deterministic=not train)(features)
        return nn.Dense(self.num_classes, kernel_init=xavier_init, param_dtype=self.param_dtype)(features)
