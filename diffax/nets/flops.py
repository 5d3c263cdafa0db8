"""Forward FLOPs of a network from XLA's cost analysis, for model-FLOPs utilization (MFU) in benchmarks.

Nothing is allocated: the parameters are shapes from `jax.eval_shape` and the forward pass is only lowered and
compiled. XLA counts a multiply-add as 2 FLOPs, skips the taps of a convolution that fall on padding, and includes
elementwise work (norms, activations, softmax). A training step costs about 3x the forward.

The count always comes from the CPU compiler, whatever the default backend: GPU backends turn matmuls,
convolutions and fused attention into library calls that XLA's cost analysis does not count.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


# Options that compute the same function another way, set to the plain way: cuDNN attention and the Pallas norm
# kernels have no CPU lowering (XLA's versions count the same); the sub-pixel upsampling does fewer multiply-adds for
# the same convolution, and MFU counts the model's FLOPs, not those of how it is computed.
PLAIN_IMPLEMENTATION = {"attention_implementation": "xla", "norm_implementation": "xla", "subpixel_upsample": False,
                        "fold_attention_biases": False}


def cost_analysis_flops(compiled: jax.stages.Compiled) -> float:
    """The 'flops' entry of `compiled.cost_analysis()`, which is a dict or (older jax) a list of dicts."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        return float(sum(entry.get("flops", 0.0) for entry in analysis))
    return float(analysis.get("flops", 0.0))


def forward_flops_per_example(model: nn.Module, input_shape: Sequence[int],
                              cond: jax.Array | jax.ShapeDtypeStruct | None = None, *,
                              batch_size: int = 1, noise_conditioned: bool = True) -> float:
    """FLOPs of one forward pass (train=False) divided by the batch size.

    Args:
      model: a diffax network: `model.apply(variables, x, noise_level, cond, train=False)` for a score network, or
        with noise_conditioned False `model.apply(variables, x, train=False)` (a classifier; an autoencoder, whose
        forward is encode and decode).
      input_shape: one example's shape, (H, W, C) or (D,).
      cond: None, or an array / ShapeDtypeStruct for the whole batch: (batch_size,) int labels or
        (batch_size, L, E) embeddings (score networks).
      batch_size: the batch to compile for (per-example FLOPs barely depend on it).
    Returns:
      FLOPs per example.
    """
    model = model.clone(**{name: value for name, value in PLAIN_IMPLEMENTATION.items() if hasattr(model, name)})
    inputs = (jax.ShapeDtypeStruct((batch_size, *input_shape), jnp.float32),)
    if noise_conditioned:
        inputs += (jax.ShapeDtypeStruct((batch_size,), jnp.float32), cond)
    variables = jax.eval_shape(lambda key, *inputs: model.init(key, *inputs, train=False),
                               jax.random.key(0), *inputs)
    forward = jax.jit(lambda v, *inputs: model.apply(v, *inputs, train=False))
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        compiled = forward.lower(variables, *inputs).compile()
    return cost_analysis_flops(compiled) / batch_size
