"""Parameters cast once per step: a copy of each float32 parameter in the dtype the network computes it in.

A network with bfloat16 compute and float32 parameters casts every kernel and bias inside each step. On GPUs that
cast costs more than its bytes: XLA sees the bias as the output of a convert instead of a parameter, and cuBLASLt's
bias epilogue is lost (one DiT Dense layer: 0.353 ms against 0.257 ms with a bf16 bias parameter, benchmarks/NOTES
v5). So the train state keeps, beside the float32 parameters, a copy of each parameter in its compute dtype:

    copy[path] = params[path].astype(d)    for each leaf whose every use in the network is a cast to d (narrower)

The optimizer update writes the copy (one cast of the new parameters, fused into the update), the next step's
forward and backward read it. The values the network sees are those of the cast it would have done itself, and
the gradient of a cast is the upcast of the cotangent, so loss and gradients are unchanged.

Which leaves qualify is read off the network's jaxpr (`cast_dtypes`): every use of the leaf, followed into jit,
remat, scan and shard_map bodies, must be a `convert_element_type` to the same narrower floating dtype. A leaf used
any other way (a float32 embedding MLP, a normalization scale, a custom_vjp or loop argument) keeps no copy. The
copy is a flat dict {keystr(path): array}, empty for a float32 network; it is derived state and is not
checkpointed (`refresh` rebuilds it from restored parameters).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

Copy = dict[str, jax.Array]


def _sub_jaxpr(eqn) -> Any | None:
    """The body jaxpr whose inputs are `eqn`'s inputs one to one (jit, remat, scan, shard_map), else None."""
    body = eqn.params.get("jaxpr")
    body = getattr(body, "jaxpr", body)  # ClosedJaxpr -> Jaxpr.
    if isinstance(body, jex_core.Jaxpr) and len(body.invars) == len(eqn.invars):
        return body
    return None


def _use_dtypes(jaxpr, var) -> set | None:
    """The dtypes every use of `var` in `jaxpr` casts it to, or None if some use is not such a cast."""
    if any(out is var for out in jaxpr.outvars):
        return None
    dtypes: set = set()
    for eqn in jaxpr.eqns:
        for position, operand in enumerate(eqn.invars):
            if operand is not var:
                continue
            if eqn.primitive.name == "convert_element_type":
                dtypes.add(np.dtype(eqn.params["new_dtype"]))
                continue
            body = _sub_jaxpr(eqn)
            inner = None if body is None else _use_dtypes(body, body.invars[position])
            if inner is None:
                return None
            dtypes |= inner
    return dtypes


def cast_dtypes(fn: Callable[[Any], Any], params: Any) -> dict[str, np.dtype]:
    """{keystr(path): d} for each leaf of `params` that every use in fn(params) casts to one narrower float d.

    params may be ShapeDtypeStructs; fn is traced once, nothing runs.
    """
    jaxpr = jax.make_jaxpr(fn)(params).jaxpr
    leaves = jax.tree_util.tree_leaves_with_path(params)
    found = {}
    for (path, leaf), var in zip(leaves, jaxpr.invars, strict=True):
        dtypes = _use_dtypes(jaxpr, var)
        if not dtypes or len(dtypes) > 1:
            continue  # Unused, used uncast, or cast to several dtypes.
        (dtype,) = dtypes
        if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < np.dtype(leaf.dtype).itemsize:
            found[jax.tree_util.keystr(path)] = dtype
    return found


def make_copy(params: Any, dtypes: dict[str, Any]) -> Copy:
    """{path: params[path].astype(dtypes[path])}."""
    return {jax.tree_util.keystr(path): leaf.astype(dtypes[jax.tree_util.keystr(path)])
            for path, leaf in jax.tree_util.tree_leaves_with_path(params) if jax.tree_util.keystr(path) in dtypes}


def refresh(params: Any, copy: Copy) -> Copy:
    """A copy of `params` in the dtypes of `copy` (after an update of params)."""
    return make_copy(params, {path: leaf.dtype for path, leaf in copy.items()})


def with_copy(params: Any, copy: Copy) -> Any:
    """params with each leaf that has a copy replaced by it: what the network computes with."""
    return jax.tree_util.tree_map_with_path(lambda path, leaf: copy.get(jax.tree_util.keystr(path), leaf), params)


def like(tree: Any, params: Any) -> Any:
    """`tree` (e.g. gradients with respect to `with_copy(params, copy)`) cast leaf by leaf to params' dtypes."""
    return jax.tree.map(lambda leaf, param: leaf.astype(param.dtype), tree, params)
