"""The packed train state (diffax.train.packing): exact round trips, which leaves are packed, and training through
the packed state is bit for bit training without packing."""

import jax
import ml_collections
import pytest
from train_helpers import assert_trees_equal, run_python, tiny_digits, train_on_random_batches

from diffax.experiment import build_experiment

ROUND_TRIP_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from diffax import parallel
from diffax.train.packing import Packing

mesh = parallel.make_mesh(data=2, fsdp=4)
rng = np.random.default_rng(0)
tree = {"bias": rng.standard_normal((3,)).astype(np.float32), "step": np.int32(7),
        "kernel": rng.standard_normal((8, 4)).astype(np.float32),   # 32 numbers: too many for max_elements 16
        "sharded": rng.standard_normal((4, 2)).astype(np.float32),  # small, but split over fsdp
        "half": rng.standard_normal((2, 2)).astype(jnp.bfloat16), "vector": np.ones((20,), np.float32)}
specs = {"sharded": P("fsdp")}
tree = {name: jax.device_put(leaf, NamedSharding(mesh, specs.get(name, P()))) for name, leaf in tree.items()}
abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
packing = Packing.of(abstract, 16)

buffers, rest = packing.packed(tree)
# Leaves in tree order (sorted keys): bias, half, kernel, sharded, step, vector.
assert [(b.dtype.name, b.shape) for b in buffers] == [("float32", (3,)), ("bfloat16", (4,)), ("int32", (1,))]
assert all(b.sharding.is_fully_replicated for b in buffers)
assert sorted(x.shape for x in rest) == [(4, 2), (8, 4), (20,)] and packing.num_arrays == 6
whole = packing.unpacked((buffers, rest))
for name in ("vector", "kernel", "sharded"):  # Passed through, not copied.
    assert whole[name] is tree[name]
for name, leaf in tree.items():
    assert whole[name].dtype == leaf.dtype and whole[name].sharding.is_equivalent_to(leaf.sharding, leaf.ndim)
    np.testing.assert_array_equal(np.asarray(whole[name]), np.asarray(leaf))
traced = jax.jit(lambda t: packing.unpack(packing.pack(t)))(tree)
jax.tree.map(np.testing.assert_array_equal, jax.device_get(traced), jax.device_get(tree))
assert Packing.of(abstract, 0).num_arrays == len(tree)
try:  # A leaf of another dtype would promote its whole buffer: an error naming it.
    jax.jit(packing.pack)(dict(tree, bias=tree["bias"].astype(jnp.bfloat16)))
    raise SystemExit("no error for a bfloat16 leaf packed as float32")
except ValueError as error:
    assert "bfloat16[3]: expected float32[3]" in str(error), error
print("OK")
"""


def test_packing_round_trips_and_leaves_sharded_and_large_leaves_whole():
    assert "OK" in run_python(["-c", ROUND_TRIP_SCRIPT], devices=8).stdout


@pytest.mark.parametrize("overrides", [{}, {"train.steps_per_dispatch": 2, "train.grad_accum_steps": 2}])
def test_training_through_the_packed_state_is_bitwise_training_unpacked(tfds_dir, overrides):
    def run(max_elements):
        config = tiny_digits(**{"model.name": "dit_tiny", "model.kwargs": ml_collections.ConfigDict(),
                                "model.compute_dtype": "bfloat16", "train.batch_size": 8,
                                "train.pack_max_elements": max_elements, **overrides})
        return train_on_random_batches(build_experiment(config), 2)

    (packed, runner), (unpacked, _) = run(65536), run(0)
    assert runner.packing.num_arrays < len(jax.tree.leaves(packed)) // 2  # Packing happened.
    assert_trees_equal(jax.device_get(packed), jax.device_get(unpacked))
    assert int(packed.step) == 2 * (overrides.get("train.steps_per_dispatch", 1))
