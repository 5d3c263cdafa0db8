"""Input pipeline throughput: `diffax.data.make_dataset` reading a CIFAR-10-shaped TFDS ArrayRecord data set.

    python benchmarks/input_pipeline.py --out /tmp/input_pipeline                  # CIFAR-10's shape, batch 512
    python benchmarks/input_pipeline.py --image_size 64 --batch_size 256 --out /tmp/input_pipeline64   # DiT's data
    python benchmarks/input_pipeline.py --num_examples 4000 --worker_counts 0,2 --batches 20 --out /tmp/ipb   # smoke

The data set is built once into --data_dir (default: a temporary directory, deleted at exit) as TFDS stores
CIFAR-10: PNG-encoded uint8 images of --image_size x --image_size x 3, int labels of 10 classes, ArrayRecord files;
a `train` split of --num_examples and a `test` split a fifth as large (never read). Its name carries the size and
count, so one --data_dir can hold several. The pictures are seeded random smooth colour fields plus pixel noise,
stored at about 2.5 KB a record at 32x32 (TFDS's CIFAR-10: 132 MiB for 60,000, 2.3 KB) and 9 KB at 64x64, so
decoding costs what it does on real data. Records per file matter too: ArrayRecord's cost per single-record read
grows with the records in the file, and TFDS cuts a split into files of 64 MiB to 1 GiB. The default 50,000 examples
make one file at 32x32, as CIFAR-10's train split is, and 4 files of 12,500 at 64x64, near the ~10,000 per file that
TFDS's sizing rule gives imagenet_resized/64x64.

For each worker count, the iterator is the one training builds (`diffax.experiment.make_iterator`: the train split,
random flips, endless epochs, this JAX process's shard). First-batch seconds run from `make_dataset` to the first
batch (opening the data set and starting the workers included). Then --warmup batches drain what the read-ahead
(8 batches per worker, or in this process) buffered while the first batch was on its way, and --batches batches
are timed. JAX runs on the CPU, leaving any accelerator alone (batches stay on the host, as the pipeline yields
them). Results go to OUT/input_pipeline.json, the table to stdout and OUT/table.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time

import jax
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from diffax import data
from diffax.data import builders

SEED = 0
COLUMNS = [("image_size", "{}"), ("worker_count", "{}"), ("batch_size", "{}"), ("images_per_second", "{:,.0f}"),
           ("first_batch_seconds", "{:.2f}"), ("cpu_count", "{}")]


def synthetic_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A uint8 (size, size, 3) picture: a random 4x4 colour grid resized bicubically, plus Gaussian pixel noise."""
    grid = PIL.Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    smooth = np.asarray(grid.resize((size, size), PIL.Image.Resampling.BICUBIC), np.float32)
    return np.clip(smooth + rng.normal(0.0, 8.0, smooth.shape), 0, 255).astype(np.uint8)


def make_builder(image_size: int, num_examples: int, data_dir: str) -> tfds.core.DatasetBuilder:
    """The builder of the synthetic data set: diffax's bundled-data builder with generated arrays."""

    class CifarShaped(builders._BundledImageBuilder, skip_registration=True):
        name = f"cifar10_shaped_{image_size}px_{num_examples}"
        IMAGE_SHAPE = (image_size, image_size, 3)
        DESCRIPTION = "Synthetic pictures stored like TFDS's CIFAR-10, for benchmarks/input_pipeline.py."
        HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"

        def _load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            rng = np.random.default_rng(SEED)
            total = num_examples + num_examples // 5
            images = np.stack([synthetic_image(rng, image_size) for _ in range(total)])
            return images, rng.integers(0, 10, total), np.arange(total) >= num_examples

    return CifarShaped(data_dir=data_dir, file_format="array_record")


def build(image_size: int, num_examples: int, data_dir: str) -> dict:
    """Builds the data set unless `data_dir` has it; returns its name, build seconds and stored bytes per example."""
    builder = make_builder(image_size, num_examples, data_dir)
    start = time.perf_counter()
    if not builder.is_prepared():
        builder.download_and_prepare()
    seconds = time.perf_counter() - start
    train_bytes = sum(map(os.path.getsize, glob.glob(os.path.join(builder.data_dir, "*-train.array_record-*"))))
    return {"name": builder.name, "build_seconds": seconds, "bytes_per_example": train_bytes / num_examples}


def measure(name: str, data_dir: str, worker_count: int, args: argparse.Namespace) -> dict:
    """Seconds to the first batch and images/s over --batches batches after --warmup more."""
    start = time.perf_counter()
    iterator = data.make_dataset(name, split="train", global_batch_size=args.batch_size, seed=SEED,
                                 data_dir=data_dir, random_flip=True, worker_count=worker_count)
    next(iterator)
    first_batch_seconds = time.perf_counter() - start
    for _ in range(args.warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(iterator)
    seconds = time.perf_counter() - start
    return {"image_size": args.image_size, "worker_count": worker_count, "batch_size": args.batch_size,
            "batches": args.batches, "seconds": seconds, "images_per_second": args.batches * args.batch_size / seconds,
            "first_batch_seconds": first_batch_seconds, "cpu_count": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0))}


def run(args: argparse.Namespace, data_dir: str) -> None:
    dataset = build(args.image_size, args.num_examples, data_dir)
    print(json.dumps(dataset), flush=True)
    rows = []
    for worker_count in map(int, args.worker_counts.split(",")):
        rows.append(measure(dataset["name"], data_dir, worker_count, args))  # Its workers stop when it is freed.
        print(json.dumps(rows[-1]), flush=True)
    with open(os.path.join(args.out, "input_pipeline.json"), "w") as file:
        json.dump({"dataset": {**dataset, "num_examples": args.num_examples}, "runs": rows}, file, indent=1)
    lines = ["| " + " | ".join(key for key, _ in COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt.format(row[key]) for key, fmt in COLUMNS) + " |" for row in rows]
    table = "\n".join(lines)
    with open(os.path.join(args.out, "table.md"), "w") as file:
        file.write(table + "\n")
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", help="TFDS data directory to build into and read from (default: a temp dir)")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--num_examples", type=int, default=50_000, help="examples in the train split")
    parser.add_argument("--worker_counts", default="0,4,8,16", help="comma-separated grain worker process counts")
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=100, help="untimed batches after the first")
    parser.add_argument("--batches", type=int, default=200, help="timed batches")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    jax.config.update("jax_platforms", "cpu")  # The pipeline asks JAX only for the process index.
    tfds.display_progress_bar(False)
    if args.data_dir:
        run(args, args.data_dir)
    else:
        with tempfile.TemporaryDirectory() as data_dir:
            run(args, data_dir)


if __name__ == "__main__":
    main()
