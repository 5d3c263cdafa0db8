"""The registry and the published parameter counts, from shapes only (jax.eval_shape allocates nothing)."""

import math

import jax
import jax.numpy as jnp
import pytest

from diffax.nets import AUTOENCODERS, CLASSIFIERS, NETWORKS, build_network


def num_params(model, input_shape, cond=None) -> int:
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    variables = jax.eval_shape(lambda x, t, c: model.init(jax.random.key(0), x, t, c, train=False), x, t, cond)
    return sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"]))


LABEL = jax.ShapeDtypeStruct((1,), jnp.int32)


def test_ddpm_cifar10_has_the_published_count():
    # Ho et al. 2020: 35.7M; 35,746,307 in the official and PyTorch ports.
    assert num_params(build_network("ddpm_cifar10"), (32, 32, 3)) == 35_746_307


def test_ddpmpp_cifar10_matches_edm():
    # EDM's SongUNet DDPM++ CIFAR-10: 55,733,891 including its augmentation-label layer Linear(9, 128, bias=False),
    # which diffax does not have (no augmentation pipe).
    count = num_params(build_network("ddpmpp_cifar10"), (32, 32, 3))
    assert count == 55_733_891 - 9 * 128
    assert abs(count / 55_733_891 - 1) < 0.01


def test_dit_xl_2_matches_the_paper():
    # DiT-XL/2, 256px ImageNet (32x32x4 latents), 1000 classes, learned sigma: 675,129,632, which counts DiT's frozen
    # position table (256 tokens x 1152); diffax computes that table as a constant.
    model = build_network("dit_xl_2", num_classes=1000, out_channels=8)
    count = num_params(model, (32, 32, 4), LABEL)
    assert count == 675_129_632 - 256 * 1152
    assert abs(count / 675_129_632 - 1) < 0.01


def test_adm_imagenet64_matches_edm():
    # EDM's reimplementation of ADM at ImageNet-64 reports 295.9M parameters.
    count = num_params(build_network("adm_imagenet64"), (64, 64, 3), LABEL)
    assert abs(count / 295.9e6 - 1) < 0.01


@pytest.mark.parametrize("name", sorted(set(NETWORKS) - set(CLASSIFIERS) - set(AUTOENCODERS)))
def test_every_preset_builds(name):
    model = build_network(name)
    shape = {"mlp": (2,), "adm_imagenet64": (64, 64, 3)}.get(name, (32, 32, 4) if "dit" in name else (32, 32, 3))
    cond = LABEL if getattr(model, "num_classes", None) else None
    assert num_params(model, shape, cond) > 0


def test_dit_sizes_grow_with_size_and_shrink_with_patch():
    counts = {name: num_params(build_network(name), (32, 32, 4)) for name in ("dit_s_2", "dit_b_2", "dit_s_8")}
    assert counts["dit_s_2"] < counts["dit_b_2"]
    assert counts["dit_s_8"] > counts["dit_s_2"]  # larger patches: wider patch embedding and output layers


def test_overrides_and_unknown_names():
    assert build_network("ddpm_cifar10", dropout=0.3, num_classes=10).dropout == 0.3
    with pytest.raises(ValueError, match="unknown network 'unet_huge'.*ddpm_cifar10.*dit_xl_2"):
        build_network("unet_huge")
