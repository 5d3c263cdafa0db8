"""diffax: diffusion models in JAX/Flax.

The math lives in pure functions of arrays: `schedules` (forward process), `objectives` (what the network
predicts and how the loss weights it), `sampling` (the reverse process), `likelihood` (bits/dim) and `mixture`
(exact denoisers for Gaussian-mixture data, the ground truth the tests and benchmarks check against).
Training and the modes run through `launch.py`; a trained run loads anywhere with `diffax.load_run(workdir)`
(`diffax.run`).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_run":  # Imported on first use: `import diffax` stays light for the math alone.
        from diffax.run import load_run

        return load_run
    raise AttributeError(f"module 'diffax' has no attribute {name!r}")
