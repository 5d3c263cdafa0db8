"""LPIPS (VGG16, v0.1) against the lpips package: distances and per-layer terms that `lpips.LPIPS(net='vgg')`
computed in float64 with the package's linear layers and a random VGG16 trunk (`fixtures/make_lpips_fixture.py`),
converted here by `python -m diffax.convert lpips`; the metric's invariants, its gradient, and named errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import convert
from diffax.evaluation import lpips
from tests.evaluation.fixtures.make_inception_fixture import random_state_dict
from tests.evaluation.fixtures.make_lpips_fixture import SEED

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
LINEAR_LAYERS = os.path.join(FIXTURES, "lpips_vgg_v0.1.npz")
TOLERANCE = 1e-5  # max |error| / max |reference|, float32 against the package in float64


@pytest.fixture(scope="module")
def reference_keys() -> dict:
    with open(os.path.join(FIXTURES, "lpips_vgg16_keys.json")) as file:
        return json.load(file)


@pytest.fixture(scope="module")
def vgg16_state(reference_keys) -> dict[str, np.ndarray]:
    return random_state_dict(reference_keys["shapes"], SEED)


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    with np.load(os.path.join(FIXTURES, "lpips_fixture.npz")) as archive:
        return dict(archive)


@pytest.fixture(scope="module")
def weights_path(vgg16_state, tmp_path_factory) -> str:
    """The random trunk with a (dropped) classifier tensor, saved as torchvision names it, converted by the CLI."""
    directory = tmp_path_factory.mktemp("lpips")
    np.savez(directory / "vgg16.npz", **vgg16_state, **{"classifier.6.bias": np.zeros(1000, np.float32)})
    convert.main(["lpips", str(directory / "vgg16.npz"), LINEAR_LAYERS, str(directory / "lpips.npz")])
    return str(directory / "lpips.npz")


@pytest.fixture(scope="module")
def variables(weights_path):
    return lpips.load_variables(weights_path)


def _relative_error(value, reference: np.ndarray) -> float:
    return float(np.abs(np.asarray(value, np.float64) - reference).max() / np.abs(reference).max())


def test_network_has_vgg16s_parameters(reference_keys):
    shapes = lpips.variable_shapes()
    vgg = sum(np.prod(shape) for name, shape in shapes.items() if name.startswith("params/vgg16/"))
    assert vgg == reference_keys["parameters"] == 14_714_688  # torchvision's vgg16().features
    assert {name: shape for name, shape in shapes.items() if "lin_" in name} == {
        f"params/lin_{index}/kernel": (1, 1, channels, 1) for index, channels in enumerate((64, 128, 256, 512, 512))}


def test_distances_match_the_lpips_package(variables, fixture):
    apply = jax.jit(lambda variables, x, y: lpips.LPIPS().apply(variables, x, y, per_layer=True))
    errors = {}
    for name in ("32", "odd"):  # 32 x 32 and 36 x 44 (pools floor odd sizes)
        layers = apply(variables, fixture[f"x_{name}"], fixture[f"y_{name}"])
        assert layers.shape == fixture[f"layers_{name}"].shape
        errors[f"layers_{name}"] = _relative_error(layers, fixture[f"layers_{name}"])
        errors[f"distance_{name}"] = _relative_error(layers.sum(axis=0), fixture[f"distance_{name}"])
    print("relative error against the lpips package:", errors)
    assert max(errors.values()) <= TOLERANCE, errors
    assert fixture["distance_32"][-1] == 0  # the identical pair


def test_lpips_fn_is_a_symmetric_distance(weights_path, fixture):
    distance = lpips.lpips_fn(weights_path)
    x, y = jnp.asarray(fixture["x_32"][:2]), jnp.asarray(fixture["y_32"][:2])
    d_xy = distance(x, y)
    assert d_xy.shape == (2,) and d_xy.dtype == jnp.float32
    np.testing.assert_allclose(d_xy, fixture["distance_32"][:2], rtol=TOLERANCE)
    np.testing.assert_allclose(distance(y, x), d_xy, rtol=1e-5)
    np.testing.assert_allclose(distance(x, x), 0.0, atol=1e-12)  # x and y share a batch: not always exactly 0


def test_gradient_matches_a_central_difference_and_is_finite_on_flat_images(weights_path, variables, fixture):
    x, y = jnp.asarray(fixture["x_32"][:2]), jnp.asarray(fixture["y_32"][:2])
    distance = lpips.lpips_fn(weights_path)  # compiled once for these shapes, shared with the test above
    gradient = jax.jit(jax.grad(lambda variables, x, y: lpips.lpips_distance(variables, x, y).sum(), argnums=1))
    # Along y - x (a smooth path: small per-pixel steps cross few ReLU and max-pool kinks), step 1e-2: the central
    # difference is within 0.2% of the float64 derivative here; float32 rounding adds ~1e-5.
    direction, step = y - x, 1e-2
    central = (distance(x + step * direction, y).sum() - distance(x - step * direction, y).sum()) / (2 * step)
    np.testing.assert_allclose(jnp.vdot(gradient(variables, x, y), direction), central, rtol=5e-3)
    # A flat image: whole VGG feature columns are zero after the ReLUs, where sqrt(sum f^2) has no derivative.
    assert bool(jnp.isfinite(gradient(variables, jnp.full_like(x, -1.0), y)).all())


@pytest.mark.parametrize("change, message", [
    (lambda vgg, lin: vgg.pop("features.28.bias"), "missing: params/vgg16/conv5_3/bias"),
    (lambda vgg, lin: vgg.update({"features.1.weight": np.zeros(1)}), "unexpected VGG16 key 'features.1.weight'"),
    (lambda vgg, lin: lin.update({"lin5.model.1.weight": np.zeros((1, 8, 1, 1))}), "unexpected: params/lin_5/kernel"),
    (lambda vgg, lin: lin.update({"scaling_layer.shift": np.zeros(3)}), "unexpected LPIPS key 'scaling_layer.shift'"),
])
def test_converter_names_what_is_wrong(vgg16_state, change, message):
    vgg = dict(vgg16_state)
    with np.load(LINEAR_LAYERS) as archive:
        lin = dict(archive)
    change(vgg, lin)
    with pytest.raises(ValueError, match="'bad.pth'") as error:
        lpips.variables_from_torch(vgg, lin, "'bad.pth'")
    assert message in str(error.value)


def test_bad_inputs_are_named(variables, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.npz.*python -m diffax.convert lpips"):
        lpips.lpips_fn(str(tmp_path / "absent.npz"))
    with pytest.raises(ValueError, match=r"shapes \(1, 16, 16, 3\) and \(1, 16, 12, 3\)"):
        lpips.lpips_distance(variables, jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16, 12, 3)))
    with pytest.raises(ValueError, match="H and W at least 16"):
        lpips.lpips_distance(variables, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)))
