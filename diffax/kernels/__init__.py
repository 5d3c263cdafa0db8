"""Optional Pallas kernels. Each module holds a kernel beside the XLA (jnp) reference formula it computes; the
networks use the reference unless a recipe opts in (e.g. `model.kwargs.norm_implementation='pallas'`), and the
tests check each kernel, interpreted on a CPU, against its reference. A kernel stays only while it measures as a
win on a shipped recipe (benchmarks/NOTES.md).

Imports go one way: kernels import jax alone, never `diffax.nets` (the networks import the kernels).

    adaln   DiT's modulated layer norm, forward and backward (`diffax.kernels.adaln`)
"""
