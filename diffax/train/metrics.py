"""Scalars to `metrics.jsonl` and TensorBoard (tensorboardX, no TensorFlow), sample grids and the config to
TensorBoard, and the run's progress: one line every log step on any output, a bar only on a terminal.

    WORKDIR/metrics.jsonl   {"step", "wall_time" (Unix seconds), scalar: value, ...} per logged step
    WORKDIR/tensorboard/    event files: the scalars, "samples" images, the config as "config" text

Every file goes through `etils.epath`, so a `gs://` workdir writes to the bucket (gcsfs, the `gcs` extra). Objects
cannot be appended to, so there metrics.jsonl and the event file are rewritten whole at each write (as tensorboardX
does for GCS); local files are appended to. Only process 0 writes.

Rates and the ETA are measured from the end of the first step (`Progress.started`), so compilation does not count.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
import tqdm
from etils import epath
from tensorboardX import SummaryWriter, record_writer

from diffax import console


class _EpathEventFile:
    """tensorboardX's file object for a remote path: buffers and rewrites the whole object at each flush."""

    def __init__(self, path: str):
        self._path, self._buffer = epath.Path(path), io.BytesIO()

    def write(self, data: bytes) -> None:
        self._buffer.write(data)

    def flush(self) -> None:
        self._path.write_bytes(self._buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EpathFactory:
    def open(self, path: str) -> _EpathEventFile:
        return _EpathEventFile(path)

    def directory_check(self, path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)


record_writer.register_writer_factory("gs", _EpathFactory())  # Replaces tensorboardX's google-cloud-storage one.


class MetricWriter:
    """Appends scalars to WORKDIR/metrics.jsonl and WORKDIR/tensorboard/; images and text to TensorBoard."""

    def __init__(self, workdir: str):
        self._enabled = jax.process_index() == 0
        if not self._enabled:
            return
        self._jsonl_path = epath.Path(workdir) / "metrics.jsonl"
        self._jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        if "://" in str(workdir):  # A bucket: keep the text and rewrite it (resumed runs continue it).
            self._jsonl, self._lines = None, self._jsonl_path.read_text() if self._jsonl_path.exists() else ""
        else:
            self._jsonl = self._jsonl_path.open("a")
        self._tensorboard = SummaryWriter(str(epath.Path(workdir) / "tensorboard"), flush_secs=30)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self._enabled:
            return
        scalars = {key: float(value) for key, value in scalars.items()}
        wall_time = time.time()
        line = json.dumps({"step": step, "wall_time": wall_time, **scalars}) + "\n"
        if self._jsonl is None:
            self._lines += line
            self._jsonl_path.write_text(self._lines)
        else:
            self._jsonl.write(line)
            self._jsonl.flush()
        for tag, value in scalars.items():
            self._tensorboard.add_scalar(tag, value, step, walltime=wall_time)
        self._tensorboard.flush()

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """A uint8 (H, W, C) image, e.g. the sample grid."""
        if self._enabled:
            self._tensorboard.add_image(tag, image, step, dataformats="HWC")
            self._tensorboard.flush()

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        """The run's config as TensorBoard text (a JSON block)."""
        if self._enabled:
            text = json.dumps(config.to_dict(), indent=1, default=str)
            self._tensorboard.add_text("config", "    " + text.replace("\n", "\n    "), 0)

    def close(self) -> None:
        if self._enabled:
            self._tensorboard.close()
            if self._jsonl is not None:
                self._jsonl.close()


class Progress:
    """Every logged step, one line (step, loss, steps/s, ETA) through `diffax.console`; a tqdm bar on stderr too
    when it is a terminal (`enabled` None) or when asked. Rates count from `started()`, after compilation."""

    def __init__(self, total_steps: int, start_step: int, bar: bool | None = None):
        self._total = total_steps
        self._origin: tuple[int, float] | None = None
        show_bar = sys.stderr.isatty() if bar is None else bar
        self._bar = (tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                               file=sys.stderr) if show_bar and jax.process_index() == 0 else None)

    def started(self, step: int) -> None:
        """The first step is done (compiled and run): rates count from here."""
        self._origin = (step, time.time())

    def update(self, step: int, loss: float) -> None:
        rate = self.rate(step)
        eta = time.strftime("%H:%M:%S", time.gmtime((self._total - step) / rate)) if rate else "?"
        line = f"step {step}/{self._total} | loss {loss:.4f} | {rate or 0:.2f} steps/s | ETA {eta}"
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=f"{loss:.4f}")
            self._bar.write(line, file=sys.stderr)
        else:
            console.info(line)

    def rate(self, step: int) -> float | None:
        """Steps per second since `started()`, None before or when no time has passed."""
        if self._origin is None or step <= self._origin[0]:
            return None
        elapsed = time.time() - self._origin[1]
        return (step - self._origin[0]) / elapsed if elapsed > 0 else None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
