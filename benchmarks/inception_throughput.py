"""FID Inception feature throughput on one accelerator: images/s of `inception_feature_fn` on uint8 CIFAR-like
images (N, 32, 32, 3) held on the host, with the host -> device transfer, the resize to 299 x 299, the network and
the read-back of the (N, 2048) features all included.

    python benchmarks/inception_throughput.py --num_images 10000 --batch_size 500 --dtypes float32,bfloat16

The weights are random (the speed does not depend on them) unless --weights names a converted file
(`python -m diffax.convert inception ...`). A 50,000-sample FID takes 50,000 / (images/s) seconds of features;
the bfloat16 line also prints how far its features move from float32's (bfloat16 moves FID: reported FIDs use
float32). Figures go to benchmarks/NOTES.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffax.evaluation import inception


def _random_weights(path: str) -> None:
    """He-scaled convolutions, identity batch norms: activations of a realistic size."""
    rng = np.random.default_rng(0)
    flat = {}
    for name, shape in inception.variable_shapes().items():
        leaf = name.rsplit("/", 1)[1]
        if leaf == "kernel":
            flat[name] = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape).astype(np.float32)
        else:
            flat[name] = np.full(shape, 1.0 if leaf in ("scale", "var") else 0.0, np.float32)
    np.savez(path, **flat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="a converted .npz (default: random weights)")
    parser.add_argument("--num_images", type=int, default=10_000)
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    weights = args.weights
    if weights is None:
        weights = os.path.join(tempfile.mkdtemp(), "inception_random.npz")
        _random_weights(weights)
    images = np.random.default_rng(1).integers(0, 256, (args.num_images, args.image_size, args.image_size, 3),
                                               np.uint8)
    print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}; {args.num_images} images "
          f"{args.image_size}x{args.image_size}x3 uint8 -> 299x299, batch {args.batch_size}")
    features = {}
    for dtype in args.dtypes.split(","):
        feature_fn = inception.inception_feature_fn(weights, batch_size=args.batch_size, dtype=jnp.dtype(dtype))
        start = time.perf_counter()
        feature_fn(images[:args.batch_size])
        compile_seconds = time.perf_counter() - start
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            features[dtype] = feature_fn(images)
            seconds.append(time.perf_counter() - start)
        rate = args.num_images / np.median(seconds)
        line = (f"{dtype}: {rate:,.0f} images/s (median of {args.repeats}; best {args.num_images / min(seconds):,.0f})"
                f"; first batch with compilation {compile_seconds:.1f} s; 50,000 images in {50_000 / rate:.1f} s")
        if dtype != "float32" and "float32" in features:
            reference = features["float32"]
            line += f"; max |features - float32's| / max |float32's| = " \
                    f"{np.abs(features[dtype] - reference).max() / np.abs(reference).max():.2g}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
