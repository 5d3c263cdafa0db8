"""diffax: diffusion models in JAX/Flax.

The math lives in pure functions of arrays: `schedules` (forward process), `objectives` (what the network
predicts and how the loss weights it), `sampling` (the reverse process), `likelihood` (bits/dim) and `mixture`
(exact denoisers for Gaussian-mixture data, the ground truth the tests and benchmarks check against).
"""

__version__ = "0.1.0"
