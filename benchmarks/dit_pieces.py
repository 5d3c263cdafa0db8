"""DiT-XL/2's pieces alone, in the forms that could shorten its train step (issue 22, goal 3).

    python benchmarks/dit_pieces.py --out /tmp/pieces.json                           # DiT-XL/2 at batch 256
    XLA_FLAGS=--xla_gpu_enable_cublaslt=true python benchmarks/dit_pieces.py --skip_attention
    python benchmarks/dit_pieces.py --batch 2 --tokens 64 --heads 2 --head_dim 8 --width 16   # a CPU check

Three questions, each answered with the median time of jitted calls and, for the products, the cuBLAS epilogues
named in the optimized HLO:
- the MLP (Dense 4x + bias, tanh GELU, Dense + bias), forward and forward + backward: does any way of writing the
  GELU put it into cuBLASLt's epilogue (`"epilogue":"GELU..."`)? `now` is DiT's `lean_grads.gelu_tanh`;
  `autodiff` jax.nn.gelu; `in_f32` the GELU computed in float32 on the bf16 product; `out_f32` a float32 product;
- attention's input gradient, dq Wq^T + dk Wk^T + dv Wv^T: three products and an add (`summed`, as in the model),
  accumulated one product into the next behind optimization barriers (`chained`, cuBLAS's beta = 1), or one
  product over the concatenated operands (`concat`);
- attention at (B, N, H, head_dim): cuDNN, XLA and the Pallas Triton flash attention at several block sizes, with
  the largest output difference from the first form that runs (cuDNN's on a GPU).
A variant that fails prints its error and the script goes on.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffax.nets.lean_grads import gelu_tanh


def median_ms(fn, *args, calls: int = 20) -> float:
    """Median wall time of `calls` synchronized calls after a warm-up."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def epilogues(fn, *args) -> list[str]:
    """The cuBLAS epilogues in fn's optimized HLO."""
    return sorted(set(re.findall(r'"epilogue":"([A-Z_]+)"', fn.lower(*args).compile().as_text())))


def mlp_forms() -> dict:
    def now(x, w1, b1, w2, b2):
        return gelu_tanh(x @ w1 + b1) @ w2 + b2

    def autodiff(x, w1, b1, w2, b2):
        return jax.nn.gelu(x @ w1 + b1, approximate=True) @ w2 + b2

    def in_f32(x, w1, b1, w2, b2):
        h = x @ w1 + b1
        return jax.nn.gelu(h.astype(jnp.float32), approximate=True).astype(h.dtype) @ w2 + b2

    def out_f32(x, w1, b1, w2, b2):
        h = jnp.dot(x, w1, preferred_element_type=jnp.float32) + b1.astype(jnp.float32)
        return jax.nn.gelu(h, approximate=True).astype(x.dtype) @ w2 + b2

    return dict(now=now, autodiff=autodiff, in_f32=in_f32, out_f32=out_f32)


def input_gradient_forms() -> dict:
    def summed(dq, dk, dv, wq, wk, wv):
        return dq @ wq.T + dk @ wk.T + dv @ wv.T

    def chained(dq, dk, dv, wq, wk, wv):
        partial = jax.lax.optimization_barrier(dq @ wq.T)
        partial = jax.lax.optimization_barrier(dk @ wk.T + partial)
        return dv @ wv.T + partial

    def concat(dq, dk, dv, wq, wk, wv):
        return jnp.concatenate([dq, dk, dv], -1) @ jnp.concatenate([wq, wk, wv], -1).T

    return dict(summed=summed, chained=chained, concat=concat)


def attention_forms(head_dim: int) -> dict:
    forms = {"cudnn": functools.partial(jax.nn.dot_product_attention, implementation="cudnn"),
             "xla": functools.partial(jax.nn.dot_product_attention, implementation="xla")}
    from jax.experimental.pallas.ops.gpu import attention as triton_attention
    for block_q, block_k in ((64, 64), (128, 128)):
        blocks = triton_attention.BlockSizes(block_q=block_q, block_k=block_k, block_q_dkv=block_q,
                                             block_kv_dkv=block_k, block_q_dq=block_q, block_kv_dq=block_k)
        forms[f"triton_{block_q}_{block_k}"] = functools.partial(
            triton_attention.mha, segment_ids=None, sm_scale=head_dim ** -0.5, block_sizes=blocks)
    return forms


def attempt(name: str, measure) -> dict | str:
    try:
        result = measure()
    except Exception as error:  # a form the backend refuses is a finding, not a crash
        result = repr(error)[:400]
    print(name, result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--width", type=int, default=1152)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head_dim", type=int, default=72)
    parser.add_argument("--skip_attention", action="store_true", help="the MLP only")
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    args = parser.parse_args()

    bf16 = jnp.bfloat16
    keys = iter(jax.random.split(jax.random.key(0), 16))
    rows, width, hidden = args.batch * args.tokens, args.width, 4 * args.width

    def normal(shape, scale=1.0):
        return (scale * jax.random.normal(next(keys), shape)).astype(bf16)

    x, cotangent = normal((rows, width)), normal((rows, width))
    mlp_args = (x, normal((width, hidden), width ** -0.5), jnp.full((hidden,), 0.01, bf16),
                normal((hidden, width), hidden ** -0.5), jnp.zeros((width,), bf16))
    figures = {"mlp": {}, "input_gradient": {}, "attention": {}}
    for name, form in mlp_forms().items():
        forward = jax.jit(form)
        step = jax.jit(jax.grad(lambda *a, form=form: jnp.sum((form(*a) * cotangent).astype(jnp.float32)),
                                argnums=(0, 1, 2, 3, 4)))
        figures["mlp"][name] = attempt(name, lambda: dict(
            forward_ms=median_ms(forward, *mlp_args), forward_backward_ms=median_ms(step, *mlp_args),
            epilogues_forward=epilogues(forward, *mlp_args), epilogues_step=epilogues(step, *mlp_args)))

    if not args.skip_attention:
        gradient_args = (*(normal((rows, width)) for _ in range(3)),
                         *(normal((width, width), width ** -0.5) for _ in range(3)))
        for name, form in input_gradient_forms().items():
            fn = jax.jit(form)
            figures["input_gradient"][name] = attempt(name, lambda: dict(
                ms=median_ms(fn, *gradient_args), epilogues=epilogues(fn, *gradient_args)))

        shape = (args.batch, args.tokens, args.heads, args.head_dim)
        q, k, v, d_out = (normal(shape) for _ in range(4))
        reference = None
        for name, form in attention_forms(args.head_dim).items():
            forward = jax.jit(form)
            step = jax.jit(jax.grad(lambda q, k, v, form=form: jnp.sum((form(q, k, v) * d_out).astype(jnp.float32)),
                                    argnums=(0, 1, 2)))

            def measure(forward=forward, step=step):
                nonlocal reference
                out = forward(q, k, v).astype(jnp.float32)
                reference = out if reference is None else reference
                return dict(forward_ms=median_ms(forward, q, k, v), forward_backward_ms=median_ms(step, q, k, v),
                            max_difference=float(jnp.max(jnp.abs(out - reference))))
            figures["attention"][name] = attempt(name, measure)

    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
