"""The Pallas adaLN kernels (diffax.kernels.adaln), interpreted on a CPU, against their XLA reference formulas."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax.kernels import adaln

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def inputs(shape, offset=0.0, dtype=jnp.float32, seed=0):
    kx, ks, kc, kg = jax.random.split(jax.random.key(seed), 4)
    x = (offset + 3 * jax.random.normal(kx, shape)).astype(dtype)
    shift, scale = jax.random.normal(ks, (shape[0], shape[2])), jax.random.normal(kc, (shape[0], shape[2]))
    return x, shift, scale, jax.random.normal(kg, shape).astype(dtype)


# (3, 128, 24) gives the kernels several rows a program, a row length that is not a power of two and several
# partial sums of dshift and dscale an example; the offset 30 tests the reference's one-pass variance.
@pytest.mark.parametrize("shape, offset", [((2, 5, 16), 30.0), ((3, 128, 24), 0.0)])
def test_kernels_match_the_reference_formulas(shape, offset):
    x, shift, scale, dy = inputs(shape, offset)
    y, mean, rstd = adaln.forward(x, shift, scale, 1e-6, jnp.float32)
    ref_y, ref_mean, ref_rstd = adaln.forward_reference(x, shift, scale, 1e-6, jnp.float32)
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rstd, ref_rstd, rtol=1e-4)
    grads = adaln.backward(x, dy, ref_mean, ref_rstd, scale)
    for grad, ref_grad in zip(grads, adaln.backward_reference(x, dy, ref_mean, ref_rstd, scale), strict=True):
        assert grad.shape == ref_grad.shape
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref_grad))))


def test_kernels_keep_the_reference_dtypes():
    x, shift, scale, dy = inputs((2, 4, 8), dtype=jnp.bfloat16)
    for forward, backward in ((adaln.forward, adaln.backward), (adaln.forward_reference, adaln.backward_reference)):
        y, mean, rstd = forward(x, shift, scale, 1e-6, jnp.bfloat16)
        dx, dshift, dscale = backward(x, dy, mean, rstd, scale)
        assert (y.dtype, mean.dtype, rstd.dtype) == (jnp.bfloat16, jnp.float32, jnp.float32)
        assert (dx.dtype, dshift.dtype, dscale.dtype) == (jnp.bfloat16, jnp.float32, jnp.float32)


SHARDED_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from diffax.kernels import adaln

mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
examples = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
keys = jax.random.split(jax.random.key(0), 4)
x, dy = jax.random.normal(keys[0], (16, 8, 24)), jax.random.normal(keys[1], (16, 8, 24))
shift, scale = jax.random.normal(keys[2], (16, 24)), jax.random.normal(keys[3], (16, 24))

def forward_and_backward(forward, backward):
    def fn(x, shift, scale, dy):
        y, mean, rstd = forward(x, shift, scale, 1e-6, jnp.float32)
        return y, *backward(x, dy, mean, rstd, scale)
    return jax.jit(fn, in_shardings=(examples,) * 4, out_shardings=(examples,) * 4)

compiled = forward_and_backward(adaln.forward, adaln.backward).lower(x, shift, scale, dy).compile()
hlo = compiled.as_text()
collectives = [op for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute") if op in hlo]
assert not collectives, collectives  # each device normalizes its own examples
reference = forward_and_backward(adaln.forward_reference, adaln.backward_reference)(x, shift, scale, dy)
for ours, theirs in zip(compiled(x, shift, scale, dy), reference, strict=True):
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
print("adaln ok")
"""


def test_kernels_run_on_each_devices_examples_without_collectives():
    # XLA cannot partition a Pallas kernel by itself; custom_partitioning tells it how. JAX fixes the device count
    # at start-up, so the 8 virtual CPU devices live in a subprocess.
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0 and "adaln ok" in result.stdout, result.stderr[-6000:]
