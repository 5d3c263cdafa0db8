"""The same run on 8 virtual CPU devices, on 1 device, with FSDP and with the flat train state agrees; checkpoints
move across device counts, and a flat-state run resumes exactly.

Everything runs in one subprocess with 8 virtual devices (JAX fixes the device count at start-up); the runs use
gradient accumulation, so micro-batches must also stay consistent across layouts.
"""

from train_helpers import run_python

SCRIPT = """
import shutil, sys
import jax, numpy as np
sys.path.insert(0, ".")
from tests.train.train_helpers import assert_trees_equal, tiny_digits
from diffax.modes.train import restore_train_state, train

WORKDIR = sys.argv[1]

assert jax.device_count() == 8
base = {"train.num_steps": 4, "train.batch_size": 16, "train.grad_accum_steps": 2, "train.checkpoint_every": 4,
        "mesh.min_fsdp_size": 0}
layouts = {"one": {"mesh.num_devices": 1}, "eight": {}, "fsdp": {"mesh.data": 2, "mesh.fsdp": 4}}
states = {}
for name, overrides in layouts.items():
    state = train(tiny_digits(**base, **overrides), f"{WORKDIR}/{name}")
    states[name] = jax.device_get(state)
    if name == "fsdp":
        specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params)}
        assert any("fsdp" in spec for spec in specs), specs
        assert any("fsdp" in str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.opt_state)), "opt state"
assert int(states["one"].step) == 4
assert_trees_equal(states["one"].params, states["eight"].params, rtol=1e-3, atol=5e-5)
assert_trees_equal(states["fsdp"].params, states["eight"].params, rtol=1e-3, atol=5e-5)
assert_trees_equal(states["fsdp"].ema_params, states["one"].ema_params, rtol=1e-3, atol=5e-5)
for devices in (1, 4):  # Saved on 8 devices, restored bitwise onto fewer.
    config = tiny_digits(**base, **{"mesh.num_devices": devices})
    _, mesh, restored = restore_train_state(config, f"{WORKDIR}/eight")
    assert mesh.devices.size == devices
    assert {d for leaf in jax.tree.leaves(restored) for d in leaf.sharding.device_set} == set(jax.devices()[:devices])
    assert_trees_equal(jax.device_get(restored), states["eight"])
# The flat train state on 8 devices (replicated vectors, batch split): the same training up to rounding, and a run
# stopped at step 2 and resumed from its checkpoint (the tree form) ends bitwise where the uninterrupted one does.
flat = {**base, "train.flat_state": True, "train.checkpoint_every": 2}
states["flat"] = jax.device_get(train(tiny_digits(**flat), f"{WORKDIR}/flat"))
assert_trees_equal(states["flat"].params, states["eight"].params, rtol=1e-3, atol=5e-5)
shutil.copytree(f"{WORKDIR}/flat", f"{WORKDIR}/flat_resumed")
shutil.rmtree(f"{WORKDIR}/flat_resumed/checkpoints/4")  # As if stopped after step 2's checkpoint.
assert_trees_equal(jax.device_get(train(tiny_digits(**flat), f"{WORKDIR}/flat_resumed")), states["flat"])
print("sharding ok")
"""


def test_one_eight_devices_and_fsdp_agree_and_checkpoints_restore_on_1_and_4(tfds_dir, tmp_path):
    result = run_python(["-c", SCRIPT, str(tmp_path)], devices=8)
    assert "sharding ok" in result.stdout
