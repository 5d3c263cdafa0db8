"""The FID Inception network in Flax: Inception-v3 pool3 features (N, 2048) for FID, KID and precision/recall.

The network is the TensorFlow graph `inception-2015-12-05` that Heusel et al. (2017, "GANs trained by a two
time-scale update rule converge to a local Nash equilibrium") used for FID, as pytorch-fid rebuilds it on
torchvision's Inception3 (`pytorch_fid/inception.py`: `fid_inception_v3`, `FIDInceptionA/C/E_1/E_2`). It differs
from the Inception-v3 of Szegedy et al. (2016) in three places:
    * the average pools inside the Inception blocks exclude the zero padding from the mean (TensorFlow's pooling),
    * the last block (Mixed_7c) max-pools its pool branch where the paper average-pools,
    * the classifier has 1,008 classes (not used here: FID reads the 2,048-d global average pool, "pool3").
Every convolution is conv (no bias) -> batch norm (running statistics, eps = 1e-3) -> ReLU.

Preprocessing, exactly pytorch-fid's: uint8 x in 0..255 -> x / 255 -> bilinear resize to 299 x 299 with
half-pixel centres and no antialiasing (torch `F.interpolate(mode='bilinear', align_corners=False)`; source
coordinate s = max((i + 1/2) in/out - 1/2, 0), linear between floor(s) and floor(s) + 1 clamped to the edge)
-> 2 x - 1 in [-1, 1]. Grayscale images are repeated to RGB.

Layout: NHWC. Variables: `params` (conv `kernel` HWIO, batch-norm `scale`, `bias`) and `batch_stats` (`mean`,
`var`), named after torchvision's modules (`Mixed_5b/branch5x5_2/conv/kernel`), so that a converted file
(`python -m diffax.convert inception pt_inception-2015-12-05-6726825d.pth OUT.npz`) is a flat `.npz` keyed by
`params/...` and `batch_stats/...`. `inception_feature_fn(path)` loads it and returns the batched feature function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffax import weights

INPUT_SIZE = 299
FEATURE_DIM = 2048
BATCH_NORM_EPSILON = 1e-3


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class BasicConv(nn.Module):
    """conv (no bias) -> batch norm with running statistics (eps 1e-3) -> ReLU; torchvision's `BasicConv2d`.
    `kernel`, `padding`: (height, width) or one int for both."""

    features: int
    kernel: int | tuple[int, int]
    strides: int = 1
    padding: int | tuple[int, int] = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # float32 convolutions at full precision: XLA's default on GPUs would round the inputs to TF32.
        precision = jax.lax.Precision.HIGHEST if self.dtype == jnp.float32 else None
        x = nn.Conv(self.features, _pair(self.kernel), (self.strides, self.strides),
                    padding=[(p, p) for p in _pair(self.padding)], use_bias=False, dtype=self.dtype,
                    precision=precision, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BATCH_NORM_EPSILON, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


def _max_pool_3x3(x: jax.Array, strides: int) -> jax.Array:
    """3 x 3 max pool; stride 2 without padding (torch's floor mode), or stride 1 with -inf padding 1."""
    padding = "VALID" if strides == 2 else ((1, 1), (1, 1))
    return nn.max_pool(x, (3, 3), (strides, strides), padding)


def _avg_pool_3x3_exclude_padding(x: jax.Array) -> jax.Array:
    """3 x 3 stride-1 average over the pixels inside the image (torch's count_include_pad=False, TensorFlow's)."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


class InceptionA(nn.Module):
    """35 x 35 block (Mixed_5b-d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool-1x1; 224 + pool_features channels."""

    pool_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv, dtype=self.dtype)
        branch1x1 = conv(64, 1, name="branch1x1")(x)
        branch5x5 = conv(48, 1, name="branch5x5_1")(x)
        branch5x5 = conv(64, 5, padding=2, name="branch5x5_2")(branch5x5)
        branch3x3dbl = conv(64, 1, name="branch3x3dbl_1")(x)
        branch3x3dbl = conv(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = conv(96, 3, padding=1, name="branch3x3dbl_3")(branch3x3dbl)
        branch_pool = conv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3_exclude_padding(x))
        return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
    """35 -> 17 reduction (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | max pool/2."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv, dtype=self.dtype)
        branch3x3 = conv(384, 3, strides=2, name="branch3x3")(x)
        branch3x3dbl = conv(64, 1, name="branch3x3dbl_1")(x)
        branch3x3dbl = conv(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = conv(96, 3, strides=2, name="branch3x3dbl_3")(branch3x3dbl)
        return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
    """17 x 17 block (Mixed_6b-e) with factorized 7x7 convolutions (1x7, 7x1); 768 channels."""

    channels_7x7: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv, dtype=self.dtype)
        c7 = self.channels_7x7
        branch1x1 = conv(192, 1, name="branch1x1")(x)
        branch7x7 = conv(c7, 1, name="branch7x7_1")(x)
        branch7x7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
        branch7x7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
        branch7x7dbl = conv(c7, 1, name="branch7x7dbl_1")(x)
        branch7x7dbl = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(branch7x7dbl)
        branch7x7dbl = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(branch7x7dbl)
        branch7x7dbl = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(branch7x7dbl)
        branch7x7dbl = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(branch7x7dbl)
        branch_pool = conv(192, 1, name="branch_pool")(_avg_pool_3x3_exclude_padding(x))
        return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
    """17 -> 8 reduction (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool/2."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv, dtype=self.dtype)
        branch3x3 = conv(192, 1, name="branch3x3_1")(x)
        branch3x3 = conv(320, 3, strides=2, name="branch3x3_2")(branch3x3)
        branch7x7x3 = conv(192, 1, name="branch7x7x3_1")(x)
        branch7x7x3 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
        branch7x7x3 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
        branch7x7x3 = conv(192, 3, strides=2, name="branch7x7x3_4")(branch7x7x3)
        return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
    """8 x 8 block (Mixed_7b, Mixed_7c) with split 1x3 / 3x1 branches; 2048 channels. `pool`: 'avg' (Mixed_7b,
    padding excluded) or 'max' (Mixed_7c in the FID network)."""

    pool: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv, dtype=self.dtype)
        branch1x1 = conv(320, 1, name="branch1x1")(x)
        branch3x3 = conv(384, 1, name="branch3x3_1")(x)
        branch3x3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
                                     conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3)], axis=-1)
        branch3x3dbl = conv(448, 1, name="branch3x3dbl_1")(x)
        branch3x3dbl = conv(384, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(branch3x3dbl),
                                        conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(branch3x3dbl)],
                                       axis=-1)
        pooled = {"avg": _avg_pool_3x3_exclude_padding, "max": functools.partial(_max_pool_3x3, strides=1)}
        branch_pool = conv(192, 1, name="branch_pool")(pooled[self.pool](x))
        return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionV3(nn.Module):
    """The FID Inception network up to pool3: images (N, H, W, 3) in [-1, 1] (H = W = 299 for FID) -> float32
    features (N, 2048), the spatial mean of Mixed_7c. 21,785,568 parameters, as pytorch-fid's network counted by
    torch (23,850,960 with the classifier left out here)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv, dtype=self.dtype)
        x = conv(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
        x = conv(32, 3, name="Conv2d_2a_3x3")(x)
        x = conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3(x, 2)
        x = conv(80, 1, name="Conv2d_3b_1x1")(x)
        x = conv(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3(x, 2)
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features, dtype=self.dtype, name=name)(x)
        x = InceptionB(dtype=self.dtype, name="Mixed_6a")(x)
        for name, channels_7x7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(channels_7x7, dtype=self.dtype, name=name)(x)
        x = InceptionD(dtype=self.dtype, name="Mixed_7a")(x)
        x = InceptionE("avg", dtype=self.dtype, name="Mixed_7b")(x)
        x = InceptionE("max", dtype=self.dtype, name="Mixed_7c")(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


@functools.cache
def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of torch's bilinear interpolation along one axis (align_corners=False, no
    antialiasing): source s = max((i + 1/2) size_in / size_out - 1/2, 0); weight 1 - (s - floor s) on floor s and
    s - floor s on min(floor s + 1, size_in - 1). Computed in float64: the positions are exact to float32."""
    rows = np.arange(size_out)
    source = np.maximum((rows + 0.5) * size_in / size_out - 0.5, 0.0)
    low = np.floor(source).astype(np.int64)
    fraction = source - low
    matrix = np.zeros((size_out, size_in))
    np.add.at(matrix, (rows, low), 1.0 - fraction)
    np.add.at(matrix, (rows, np.minimum(low + 1, size_in - 1)), fraction)
    return matrix.astype(np.float32)


def resize_bilinear(x: jax.Array, size: int) -> jax.Array:
    """float images (N, H, W, C) -> (N, size, size, C) as torch `F.interpolate(x, (size, size), mode='bilinear',
    align_corners=False)`: separable, one matrix product per axis (`_bilinear_matrix`).

    Not jax.image.resize: that antialiases when it downsamples unless told not to, and without antialiasing it
    places the samples in float32 (errors up to 1e-4 when downsampling 320 -> 299).
    """
    rows = _bilinear_matrix(x.shape[1], size)
    columns = _bilinear_matrix(x.shape[2], size)
    highest = jax.lax.Precision.HIGHEST
    x = jnp.einsum("ph,nhwc->npwc", rows, x, precision=highest)
    return jnp.einsum("qw,npwc->npqc", columns, x, precision=highest)


def preprocess(images: jax.Array) -> jax.Array:
    """pytorch-fid's input: uint8 images (N, H, W, 3) -> float32 (N, 299, 299, 3) in [-1, 1] (module docstring)."""
    return 2.0 * resize_bilinear(images.astype(jnp.float32) / 255.0, INPUT_SIZE) - 1.0


@functools.cache
def variable_shapes() -> dict[str, tuple[int, ...]]:
    """The flat variable names the network needs ('params/Mixed_5b/branch1x1/conv/kernel', ...) -> shapes."""
    return weights.variable_shapes(InceptionV3(), jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))


def check_variables(flat: Mapping[str, np.ndarray], source: str) -> None:
    """Raise ValueError naming `source` and every missing, unexpected or misshapen variable of a flat dict."""
    weights.check_variables(flat, variable_shapes(), "a set of FID Inception weights", source)


_TORCH_SUFFIXES = {"conv.weight": ("params", "conv/kernel"), "bn.weight": ("params", "bn/scale"),
                   "bn.bias": ("params", "bn/bias"), "bn.running_mean": ("batch_stats", "bn/mean"),
                   "bn.running_var": ("batch_stats", "bn/var")}
_TORCH_IGNORED = ("fc.weight", "fc.bias")  # The 1,008-way classifier: FID reads pool3.


def variables_from_torch(state_dict: Mapping[str, np.ndarray], source: str = "the state dict") -> dict[str, np.ndarray]:
    """pytorch-fid's state dict (`Mixed_5b.branch1x1.conv.weight` -> array) -> the flat float32 variables.

    conv weights OIHW -> HWIO; bn weight, bias -> scale, bias; running_mean, running_var -> batch_stats mean, var;
    `num_batches_tracked` and the classifier `fc` are dropped. The result is checked (`check_variables`).
    """
    flat = {}
    for key, value in state_dict.items():
        if key in _TORCH_IGNORED or key.endswith(".num_batches_tracked"):
            continue
        module, _, suffix = key.rpartition(".")
        module, _, layer = module.rpartition(".")
        if f"{layer}.{suffix}" not in _TORCH_SUFFIXES:
            raise ValueError(f"{source}: unexpected key {key!r} (expected <module>.conv.weight or <module>.bn.*)")
        collection, leaf = _TORCH_SUFFIXES[f"{layer}.{suffix}"]
        value = np.asarray(value, np.float32)
        value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value  # OIHW -> HWIO.
        flat[f"{collection}/{module.replace('.', '/')}/{leaf}"] = value
    check_variables(flat, source)
    return flat


def load_variables(path: str) -> dict[str, Any]:
    """The network's variables {'params': ..., 'batch_stats': ...} from a converted `.npz`, checked."""
    flat = weights.read_flat(path, "Inception weights", "convert pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                             "with `python -m diffax.convert inception`")
    check_variables(flat, repr(path))
    return weights.nest(flat)


def _as_rgb_uint8(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images of dtype {images.dtype} and shape {images.shape}: expected uint8 (N, H, W, C) "
                         "with C 1 or 3")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def inception_feature_fn(weights_path: str, *, batch_size: int = 500,
                         dtype: Any = jnp.float32) -> Callable[[np.ndarray], np.ndarray]:
    """A function uint8 images (N, H, W, C), C 1 or 3, on the host -> pool3 features float32 (N, 2048) (numpy).

    Runs in jitted batches of `batch_size` on the default device (the last batch padded with black images, whose
    features are dropped), one batch in flight while the previous one is read back; one compilation per image
    size. `dtype`: the compute dtype; bfloat16 is faster but moves FID, so reported FIDs use float32.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be at least 1")
    variables = jax.device_put(load_variables(weights_path))
    model = InceptionV3(dtype=dtype)

    @jax.jit
    def features(variables, images):
        return model.apply(variables, preprocess(images))

    def feature_fn(images: np.ndarray) -> np.ndarray:
        images = _as_rgb_uint8(images)
        out = np.empty((len(images), FEATURE_DIM), np.float32)

        def read_back(start: int, count: int, result: jax.Array) -> None:
            out[start:start + count] = np.asarray(result)[:count]

        in_flight = None
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            if len(batch) < batch_size:
                batch = np.concatenate([batch, np.zeros((batch_size - len(batch), *batch.shape[1:]), np.uint8)])
            dispatched = (start, min(batch_size, len(images) - start), features(variables, batch))
            if in_flight is not None:
                read_back(*in_flight)
            in_flight = dispatched
        if in_flight is not None:
            read_back(*in_flight)
        return out

    return feature_fn
