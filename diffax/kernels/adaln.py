"""DiT's modulated layer norm (adaLN): the XLA reference formulas and two Pallas GPU (Triton) kernels of them.

    forward   y = xhat (1 + scale) + shift,  xhat = (x - mean) rstd,  rstd = 1 / sqrt(var + eps)
    backward  g = dy (1 + scale);  dx = rstd (g - mean_D(g) - xhat mean_D(g xhat));
              dshift = sum_N dy;  dscale = sum_N dy xhat

x and dy (B, N, D), shift and scale (B, D); mean and rstd (B, N, 1); float32 math whatever the input dtype.
`forward_reference` and `backward_reference` are the formulas in jnp (XLA fuses them; the default everywhere);
`forward` and `backward` compute the same as one kernel each way, and are tested against the references.

Why kernels: XLA splits a layer norm into a statistics reduction and a normalizing pass and, for a bfloat16 input,
writes a float32 copy of the input between them; its backward spreads over several kernels. Each kernel here reads
its inputs once and writes its outputs once, holding a few rows (D features each) in registers:

    forward   x (M, D), shift and scale (B, D)  ->  y (M, D), mean (M,), rstd (M,)
    backward  x, dy (M, D), mean, rstd         ->  dx (M, D),  dshift and dscale partial sums (M / R, D)

M = B * N rows, R rows a program; two-pass (centred) variance in registers. Row lengths that are not powers of two
(DiT-XL's 1152) are padded to one inside the kernel with masked loads. `interpret=True` runs the same kernels on
any backend (slowly; the tests do this on a CPU).

Under a jit over a device `Mesh`, XLA cannot partition a kernel (a custom call) and would gather the whole batch
onto every device; `custom_partitioning` tells it that examples are independent, so each device normalizes its
own (tests/kernels/test_adaln.py checks that no collective remains).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.custom_partitioning import custom_partitioning
from jax.experimental.pallas import triton as pltriton
from jax.sharding import NamedSharding, PartitionSpec

# The best of a sweep at DiT-XL/2's (256, 256, 1152) in bfloat16 (benchmarks/NOTES.md has the sweep).
_FORWARD_ROWS = 2  # rows a forward program normalizes
_BACKWARD_ROWS = 64  # rows a backward program reduces into one partial sum of dshift and dscale
_CHUNK_ROWS = 1  # rows a backward program holds in registers at once
_NUM_WARPS = 4


def _rows_dividing(tokens: int, most: int) -> int:
    """The largest power of two <= `most` that divides `tokens` (so a program's rows share one example)."""
    rows = most
    while tokens % rows:
        rows //= 2
    return rows


def forward_reference(x: jax.Array, shift: jax.Array, scale: jax.Array, eps: float,
                      dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The forward formula in jnp: x (B, N, D), shift and scale (B, D) -> y (B, N, D) in `dtype`, mean and rstd
    (B, N, 1) float32 (one-pass variance, clipped at zero)."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.maximum(jnp.mean(xf * xf, axis=-1, keepdims=True) - mean * mean, 0.0)
    rstd = jax.lax.rsqrt(var + eps)
    y = (xf - mean) * rstd * (1 + scale[:, None].astype(jnp.float32)) + shift[:, None].astype(jnp.float32)
    return y.astype(dtype), mean, rstd


def backward_reference(x: jax.Array, dy: jax.Array, mean: jax.Array, rstd: jax.Array,
                       scale: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The backward formula in jnp: x, dy (B, N, D), mean and rstd (B, N, 1), scale (B, D) -> dx (B, N, D) in x's
    dtype, dshift and dscale (B, D) float32."""
    dy = dy.astype(jnp.float32)
    xhat = (x.astype(jnp.float32) - mean) * rstd
    g = dy * (1 + scale[:, None].astype(jnp.float32))
    dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True) - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True))
    return dx.astype(x.dtype), jnp.sum(dy, axis=1), jnp.sum(dy * xhat, axis=1)


def supports(x: jax.Array) -> bool:
    """Whether the kernels can take x: they address it by int32 offsets."""
    return x.size < 2**31


def _tile(row0, rows: int, features: int, width: int):
    """Flat offsets (rows, width) of rows row0.. in a row-major (M, features) array, and the column mask (1, width)."""
    cols = jnp.arange(width)
    offsets = (row0 + jnp.arange(rows))[:, None] * features + cols[None, :]
    return offsets, (cols < features)[None, :]


def _load_f32(ref, offsets, mask):
    return pltriton.load(ref.at[offsets], mask=jnp.broadcast_to(mask, offsets.shape), other=0.0).astype(jnp.float32)


def _example_row(ref, example, features: int, width: int):
    """Row `example` of a (B, features) array, (1, width) float32 (zero past `features`)."""
    offsets, mask = _tile(example, 1, features, width)
    return _load_f32(ref, offsets, mask)


def _forward_kernel(x_ref, shift_ref, scale_ref, y_ref, mean_ref, rstd_ref, *, features, width, rows, tokens, eps):
    row0 = pl.program_id(0) * rows
    offsets, mask = _tile(row0, rows, features, width)
    x = _load_f32(x_ref, offsets, mask)
    mean = jnp.sum(x, axis=1, keepdims=True) / features
    centred = jnp.where(mask, x - mean, 0.0)
    rstd = jax.lax.rsqrt(jnp.sum(centred * centred, axis=1, keepdims=True) / features + eps)
    example = row0 // tokens
    gain = 1 + _example_row(scale_ref, example, features, width)
    y = centred * rstd * gain + _example_row(shift_ref, example, features, width)
    pltriton.store(y_ref.at[offsets], y.astype(y_ref.dtype), mask=jnp.broadcast_to(mask, offsets.shape))
    row_offsets = row0 + jnp.arange(rows)
    pltriton.store(mean_ref.at[row_offsets], mean[:, 0])
    pltriton.store(rstd_ref.at[row_offsets], rstd[:, 0])


def _backward_kernel(x_ref, dy_ref, mean_ref, rstd_ref, scale_ref, dx_ref, dshift_ref, dscale_ref, *, features,
                     width, rows, chunk, tokens):
    program = pl.program_id(0)
    row0 = program * rows
    gain = 1 + _example_row(scale_ref, row0 // tokens, features, width)

    def chunk_body(index, sums):
        start = row0 + index * chunk
        offsets, mask = _tile(start, chunk, features, width)
        row_offsets = start + jnp.arange(chunk)
        mean = pltriton.load(mean_ref.at[row_offsets])[:, None]
        rstd = pltriton.load(rstd_ref.at[row_offsets])[:, None]
        xhat = jnp.where(mask, (_load_f32(x_ref, offsets, mask) - mean) * rstd, 0.0)
        dy = _load_f32(dy_ref, offsets, mask)
        g = dy * gain
        mean_g = jnp.sum(g, axis=1, keepdims=True) / features
        mean_gx = jnp.sum(g * xhat, axis=1, keepdims=True) / features
        dx = rstd * (g - mean_g - xhat * mean_gx)
        pltriton.store(dx_ref.at[offsets], dx.astype(dx_ref.dtype), mask=jnp.broadcast_to(mask, offsets.shape))
        dshift, dscale = sums
        return dshift + jnp.sum(dy, axis=0), dscale + jnp.sum(dy * xhat, axis=0)

    zeros = jnp.zeros((width,), jnp.float32)
    dshift, dscale = jax.lax.fori_loop(0, rows // chunk, chunk_body, (zeros, zeros))
    offsets, mask = _tile(program, 1, features, width)
    pltriton.store(dshift_ref.at[offsets[0]], dshift, mask=mask[0])
    pltriton.store(dscale_ref.at[offsets[0]], dscale, mask=mask[0])


def _forward_call(x: jax.Array, shift: jax.Array, scale: jax.Array, eps: float, dtype, interpret: bool):
    """The forward kernel on one device's arrays: x (B, N, D) -> y (B, N, D), mean and rstd (B, N)."""
    batch, tokens, features = x.shape
    width, rows = pl.next_power_of_2(features), _rows_dividing(tokens, _FORWARD_ROWS)
    kernel = functools.partial(_forward_kernel, features=features, width=width, rows=rows, tokens=tokens, eps=eps)
    m = batch * tokens
    y, mean, rstd = pl.pallas_call(
        kernel, grid=(m // rows,), interpret=interpret, name="modulated_layer_norm_forward",
        out_shape=[jax.ShapeDtypeStruct((m * features,), dtype), jax.ShapeDtypeStruct((m,), jnp.float32),
                   jax.ShapeDtypeStruct((m,), jnp.float32)],
        compiler_params=pltriton.CompilerParams(num_warps=_NUM_WARPS),
    )(x.reshape(-1), shift.reshape(-1), scale.reshape(-1))
    return y.reshape(x.shape), mean.reshape(batch, tokens), rstd.reshape(batch, tokens)


def _backward_call(x: jax.Array, dy: jax.Array, mean: jax.Array, rstd: jax.Array, scale: jax.Array,
                   interpret: bool):
    """The backward kernel on one device's arrays: mean and rstd (B, N) -> dx (B, N, D), dshift, dscale (B, D)."""
    batch, tokens, features = x.shape
    width, rows = pl.next_power_of_2(features), _rows_dividing(tokens, _BACKWARD_ROWS)
    chunk = min(rows, _CHUNK_ROWS)
    kernel = functools.partial(_backward_kernel, features=features, width=width, rows=rows, chunk=chunk,
                               tokens=tokens)
    m = batch * tokens
    partial_sum = jax.ShapeDtypeStruct((m // rows * features,), jnp.float32)
    dx, dshift, dscale = pl.pallas_call(
        kernel, grid=(m // rows,), interpret=interpret, name="modulated_layer_norm_backward",
        out_shape=[jax.ShapeDtypeStruct((m * features,), x.dtype), partial_sum, partial_sum],
        compiler_params=pltriton.CompilerParams(num_warps=_NUM_WARPS),
    )(x.reshape(-1), dy.reshape(-1), mean.reshape(-1), rstd.reshape(-1), scale.reshape(-1))
    per_example = (batch, tokens // rows, features)
    return dx.reshape(x.shape), dshift.reshape(per_example).sum(1), dscale.reshape(per_example).sum(1)


def _split_over_examples(call, operands: str, results: str):
    """`call` as an op that SPMD partitioning splits over examples only; `operands` and `results` name the array
    arguments' and results' axes (b examples, n tokens, d features); the arguments after those are static.

    XLA cannot partition a Pallas kernel (a custom call): by default it would gather the whole batch onto every
    device. Every example is independent here, so each device runs the kernel on its own examples; the tokens and
    features axes are gathered if they were sharded (diffax shards only the batch axis).
    """
    num_arrays = len(operands.split(","))
    partitioned = custom_partitioning(call, static_argnums=tuple(range(num_arrays, call.__code__.co_argcount)))

    def per_example_shardings(mesh, arg_shapes, shapes):
        spec = getattr(arg_shapes[0].sharding, "spec", ())
        examples = spec[0] if len(spec) else None
        return tuple(NamedSharding(mesh, PartitionSpec(examples, *[None] * (len(shape.shape) - 1)))
                     for shape in shapes)

    def infer(*args):
        *_, mesh, arg_shapes, result_shape = args
        return per_example_shardings(mesh, arg_shapes, result_shape)

    def partition(*args):
        *static, mesh, arg_shapes, result_shape = args
        return (mesh, lambda *arrays: call(*arrays, *static), per_example_shardings(mesh, arg_shapes, result_shape),
                per_example_shardings(mesh, arg_shapes, arg_shapes))

    partitioned.def_partition(partition, infer_sharding_from_operands=infer,
                              sharding_rule=f"{operands} -> {results}", need_replication_factors=("n", "d"))
    return partitioned


_forward = _split_over_examples(_forward_call, "b n d, b d, b d", "b n d, b n, b n")
_backward = _split_over_examples(_backward_call, "b n d, b n d, b n, b n, b d", "b n d, b d, b d")


def _interpret(interpret: bool | None) -> bool:
    """None: interpret the kernels wherever they cannot compile (off GPUs)."""
    return jax.default_backend() != "gpu" if interpret is None else interpret


def forward(x: jax.Array, shift: jax.Array, scale: jax.Array, eps: float, dtype,
            interpret: bool | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`forward_reference` as one kernel: x (B, N, D), shift and scale (B, D) -> y (B, N, D) in `dtype`, mean and
    rstd (B, N, 1) float32. x must pass `supports`."""
    y, mean, rstd = _forward(x, shift, scale, eps, dtype, _interpret(interpret))
    return y, mean[..., None], rstd[..., None]


def backward(x: jax.Array, dy: jax.Array, mean: jax.Array, rstd: jax.Array, scale: jax.Array,
             interpret: bool | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`backward_reference` as one kernel: x, dy (B, N, D), mean and rstd (B, N, 1), scale (B, D) -> dx (B, N, D)
    in x's dtype, dshift and dscale (B, D) float32. x must pass `supports`."""
    return _backward(x, dy, mean[..., 0], rstd[..., 0], scale, _interpret(interpret))
