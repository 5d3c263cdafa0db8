"""sample.cast_params: the parameters a bf16 network only uses cast are cast once per sampler call, found from its
jaxpr, and the samples are bit for bit those without."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from train_helpers import perturbed, tiny_digits

from diffax import generate, parallel
from diffax.experiment import build_experiment


def test_narrowing_casts_follow_uses_through_nested_jits():
    inner = jax.jit(lambda w: w.astype(jnp.bfloat16) * 2)

    def fn(only_cast, used_wide, cast_twice_ways, through_jit, integer, cast_up):
        return (only_cast.astype(jnp.bfloat16), used_wide.astype(jnp.bfloat16) + used_wide.sum(),
                cast_twice_ways.astype(jnp.bfloat16), cast_twice_ways.astype(jnp.float16), inner(through_jit),
                integer.astype(jnp.bfloat16), cast_up.astype(jnp.float32))

    args = (jnp.ones(3), jnp.ones(3), jnp.ones(3), jnp.ones(3), jnp.ones(3, jnp.int32), jnp.ones(3, jnp.bfloat16))
    closed = jax.make_jaxpr(fn)(*args)
    assert generate.narrowing_casts(closed.jaxpr, len(args)) == [jnp.bfloat16, None, None, jnp.bfloat16, None, None]
    returned = jax.make_jaxpr(lambda w: (w, w.astype(jnp.bfloat16)))(jnp.ones(3))  # an output is a wide use too
    assert generate.narrowing_casts(returned.jaxpr, 1) == [None]


def test_cast_params_casts_the_unets_bf16_weights_and_samples_the_same(tfds_dir):
    def experiment(cast: bool):
        kwargs = ml_collections.ConfigDict({"fold_attention_biases": True, "subpixel_upsample": True,
                                            "two_stage_bias_grads": True, "compute_dtype_norms": True})
        return build_experiment(tiny_digits(**{"model.kwargs": kwargs, "model.compute_dtype": "bfloat16",
                                               "sample.cast_params": cast, "sample.method": "ddim",
                                               "sample.num_steps": 3}))

    plain, cast = experiment(False), experiment(True)
    params = perturbed(jax.device_get(plain.init_params(jax.random.PRNGKey(0))))
    assert generate.sampler_params(plain, params) is params
    dtypes = {jax.tree_util.keystr(path): leaf.dtype
              for path, leaf in jax.tree_util.tree_leaves_with_path(generate.sampler_params(cast, params))}
    narrowed = {path for path, dtype in dtypes.items() if dtype == jnp.bfloat16}
    assert any(path.endswith("['Conv_0']['kernel']") for path in narrowed)
    assert any("['q']['bias']" in path for path in narrowed)
    # Used in float32: the norms' affine parameters, the noise-level embedding, the folded v bias and the output
    # projection's kernel (also multiplied by it in float32).
    assert not any("GroupNorm" in path or "norm" in path or "embedding" in path or "['v']['bias']" in path
                   or "['out']['kernel']" in path for path in narrowed)

    mesh = parallel.mesh_from_config(plain.config.mesh)
    settings = generate.SamplerSettings.from_config(plain.config.sample)
    indices = np.arange(4, dtype=np.int32)
    samples = [np.asarray(generate.make_generator(e, settings, mesh, 4)(params, jnp.uint32(0), indices, None, {}))
               for e in (plain, cast)]
    np.testing.assert_array_equal(samples[0], samples[1])
