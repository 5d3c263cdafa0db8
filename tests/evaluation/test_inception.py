"""The FID Inception network against pytorch-fid: its state dict names and shapes, its parameter count, and its
features on a fixture that pytorch-fid computed in float64 with the same random weights
(`fixtures/make_inception_fixture.py`); torch's bilinear resize against its formula."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import convert
from diffax.evaluation import inception
from tests.evaluation.fixtures.make_inception_fixture import random_state_dict

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TOLERANCE = 1e-4  # max |error| / max |feature|, float32 against pytorch-fid in float64.


def _relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(np.asarray(value, np.float64) - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def reference_keys() -> dict:
    with open(os.path.join(FIXTURES, "inception_keys.json")) as file:
        return json.load(file)


@pytest.fixture(scope="module")
def reference_state(reference_keys) -> dict[str, np.ndarray]:
    return random_state_dict(reference_keys["shapes"])


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    with np.load(os.path.join(FIXTURES, "inception_fixture.npz")) as archive:
        return dict(archive)


@pytest.fixture(scope="module")
def weights_path(reference_state, tmp_path_factory) -> str:
    """The reference state dict saved as an .npz and converted by `python -m diffax.convert inception`."""
    directory = tmp_path_factory.mktemp("inception")
    np.savez(directory / "state_dict.npz", **reference_state)
    convert.main(["inception", str(directory / "state_dict.npz"), str(directory / "inception.npz")])
    return str(directory / "inception.npz")


@pytest.fixture(scope="module")
def feature_fn(weights_path):
    return inception.inception_feature_fn(weights_path, batch_size=3)


def test_parameter_count_and_feature_shape(reference_keys):
    shapes = inception.variable_shapes()
    parameters = sum(np.prod(shape) for name, shape in shapes.items() if name.startswith("params/"))
    # pytorch-fid's InceptionV3 (blocks up to pool3): 21,785,568 parameters (inception_keys.json, counted by torch).
    assert parameters == reference_keys["parameters"]["pool3"] == 21_785_568
    fc = 2048 * 1008 + 1008  # The classifier this network leaves out.
    assert parameters + fc == reference_keys["parameters"]["with_fc"]
    model = inception.InceptionV3()
    for size in (299, 128):
        images = jax.ShapeDtypeStruct((5, size, size, 3), jnp.float32)
        features = jax.eval_shape(lambda images: model.init_with_output(jax.random.key(0), images)[0], images)
        assert features.shape == (5, inception.FEATURE_DIM)


def test_converter_maps_the_reference_state_dict(reference_state):
    flat = inception.variables_from_torch(reference_state)
    assert set(flat) == set(inception.variable_shapes())
    kernel = flat["params/Mixed_6b/branch7x7_2/conv/kernel"]  # torch (O, I, kH, kW) = (128, 128, 1, 7) -> HWIO.
    assert kernel.shape == (1, 7, 128, 128)
    np.testing.assert_array_equal(kernel[0, 3, 5, 9], reference_state["Mixed_6b.branch7x7_2.conv.weight"][9, 5, 0, 3])
    np.testing.assert_array_equal(flat["batch_stats/Mixed_7c/branch_pool/bn/var"],
                                  reference_state["Mixed_7c.branch_pool.bn.running_var"])
    assert not any("fc" in name.split("/") for name in flat)


@pytest.mark.parametrize("change, message", [
    (lambda state: state.pop("Mixed_5b.branch5x5_2.bn.running_var"),
     "missing: batch_stats/Mixed_5b/branch5x5_2/bn/var"),
    (lambda state: state.update({"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 5, 5), np.float32)}),
     "wrong shape: params/Conv2d_1a_3x3/conv/kernel (5, 5, 3, 32) (expected (3, 3, 3, 32))"),
    (lambda state: state.update({"Mixed_5b.extra.conv.weight": np.zeros((1, 1, 1, 1))}),
     "unexpected: params/Mixed_5b/extra/conv/kernel"),
    (lambda state: state.update({"AuxLogits.fc.weight": np.zeros((1, 1))}), "unexpected key 'AuxLogits.fc.weight'"),
])
def test_converter_names_what_is_wrong(reference_state, change, message):
    state = dict(reference_state)
    change(state)
    with pytest.raises(ValueError, match="'bad.pth'") as error:
        inception.variables_from_torch(state, "'bad.pth'")
    assert message in str(error.value)


def test_loader_names_the_file_and_the_problem(weights_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        inception.load_variables(str(tmp_path / "absent.npz"))
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="text.npz.*not an .npz"):
        inception.load_variables(str(tmp_path / "text.npz"))
    with np.load(weights_path) as archive:
        partial = {name: archive[name] for name in archive.files if "Mixed_7c" not in name}
    np.savez(tmp_path / "partial.npz", **partial)
    with pytest.raises(ValueError, match="partial.npz.*missing: batch_stats/Mixed_7c/branch1x1/bn/mean"):
        inception.load_variables(str(tmp_path / "partial.npz"))
    (tmp_path / "weights.txt").write_text("")
    with pytest.raises(ValueError, match="weights.txt"):
        convert.read_state_dict(str(tmp_path / "weights.txt"))


@pytest.mark.parametrize("size", [64, 320])  # Up- and downsampling to 299.
def test_resize_is_torch_bilinear_without_antialiasing(size):
    # A linear ramp a row + b column interpolates to itself at torch's source coordinates
    # s = (i + 1/2) size / 299 - 1/2, clamped to [0, size - 1] (aten/src/ATen/native/UpSample.h).
    ramp = np.add.outer(0.5 * np.arange(size), np.arange(size))[None, :, :, None].astype(np.float32)
    source = np.clip((np.arange(inception.INPUT_SIZE) + 0.5) * size / inception.INPUT_SIZE - 0.5, 0, size - 1)
    expected = np.add.outer(0.5 * source, source)[None, :, :, None]
    np.testing.assert_allclose(inception.resize_bilinear(jnp.asarray(ramp), inception.INPUT_SIZE), expected,
                               rtol=1e-6, atol=1e-5)
    # jax's resize without antialiasing agrees to its float32 sample positions; with it (its default), the
    # downsampled noise differs.
    images = np.random.default_rng(size).uniform(size=(2, size, size, 3)).astype(np.float32)
    resized = np.asarray(inception.resize_bilinear(jnp.asarray(images), inception.INPUT_SIZE))
    shape = (2, inception.INPUT_SIZE, inception.INPUT_SIZE, 3)
    np.testing.assert_allclose(resized, jax.image.resize(images, shape, "bilinear", antialias=False), atol=1e-4)
    antialiased_error = np.abs(resized - jax.image.resize(images, shape, "bilinear")).max()
    assert (antialiased_error > 0.01) == (size > inception.INPUT_SIZE), antialiased_error


def test_features_match_pytorch_fid(feature_fn, fixture):
    errors = {}
    for size in (64, 320):
        features = feature_fn(fixture[f"images_{size}"])
        assert features.shape == (len(fixture[f"images_{size}"]), inception.FEATURE_DIM)
        assert features.dtype == np.float32
        errors[size] = _relative_error(features, fixture[f"pool3_{size}"])
    print("relative error of the pool3 features against pytorch-fid:", errors)
    assert max(errors.values()) <= TOLERANCE, errors


def test_block2_matches_pytorch_fid(weights_path, fixture):
    """Mixed_6e, the output of pytorch-fid's block 2, averaged over space: where a mismatch starts."""
    images = inception.preprocess(jnp.asarray(fixture["images_64"]))
    _, state = jax.jit(lambda variables, images: inception.InceptionV3().apply(
        variables, images, capture_intermediates=lambda module, _: module.name == "Mixed_6e"))(
        inception.load_variables(weights_path), images)
    block2 = np.mean(state["intermediates"]["Mixed_6e"]["__call__"][0], axis=(1, 2))
    assert _relative_error(block2, fixture["block2_64"]) <= TOLERANCE


def test_features_do_not_depend_on_the_batch_and_grayscale_is_repeated(feature_fn, fixture):
    images = fixture["images_64"]  # 4 images in batches of 3: the second batch is padded.
    np.testing.assert_array_equal(feature_fn(images[1:]), feature_fn(images)[1:])
    gray = images[..., :1]
    np.testing.assert_array_equal(feature_fn(gray), feature_fn(np.repeat(gray, 3, axis=-1)))
    with pytest.raises(ValueError, match="float32 and shape"):
        feature_fn(images.astype(np.float32))
    with pytest.raises(ValueError, match="batch_size 0"):
        inception.inception_feature_fn("unused.npz", batch_size=0)
