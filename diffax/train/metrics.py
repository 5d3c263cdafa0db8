"""Scalar metrics to `metrics.jsonl` and TensorBoard event files, and a progress line for interactive runs.

TensorBoard reads TFRecord files of `Event` protocol buffers; this writes them directly (no TensorFlow, no
tensorboardX): each record is

    uint64 length | uint32 masked_crc32c(length) | Event bytes | uint32 masked_crc32c(Event bytes)

with masked_crc(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32), and each Event is
{wall_time: double (1), step: int64 (2), file_version: string (3) | summary (5): {value (1): {tag (1),
simple_value: float (2)}}} in protobuf wire format. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping

import jax

_CRC32C_TABLE = []
for _byte in range(256):
    _crc = _byte
    for _ in range(8):
        _crc = (_crc >> 1) ^ 0x82F63B78 if _crc & 1 else _crc >> 1
    _CRC32C_TABLE.append(_crc)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord files; crc32c(b'123456789') == 0xE3069283."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                 scalars: Mapping[str, float] | None = None) -> bytes:
    """An `Event` protobuf: a file-version header, or scalar summaries at `step`."""
    event = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        event += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(
            _length_delimited(1, _length_delimited(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value))
            for tag, value in scalars.items())
        event += _length_delimited(5, values)
    return event


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, its masked CRC."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


class MetricWriter:
    """Appends scalars to WORKDIR/metrics.jsonl and a TensorBoard event file in WORKDIR/tensorboard/."""

    def __init__(self, workdir: str):
        self._enabled = jax.process_index() == 0
        if not self._enabled:
            return
        os.makedirs(os.path.join(workdir, "tensorboard"), exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self._events = open(os.path.join(workdir, "tensorboard", name), "ab")
        self._events.write(tfrecord(encode_event(time.time(), 0, file_version="brain.Event:2")))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self._enabled:
            return
        scalars = {key: float(value) for key, value in scalars.items()}
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._events.write(tfrecord(encode_event(time.time(), step, scalars=scalars)))
        self._jsonl.flush()
        self._events.flush()

    def close(self) -> None:
        if self._enabled:
            self._jsonl.close()
            self._events.close()


class Progress:
    """A one-line progress display on stderr (steps/s, examples/s, loss, ETA), only when it is a terminal."""

    def __init__(self, total_steps: int, batch_size: int, start_step: int, enabled: bool | None = None):
        self._enabled = (sys.stderr.isatty() if enabled is None else enabled) and jax.process_index() == 0
        self._total, self._batch = total_steps, batch_size
        self._start_step, self._start_time = start_step, time.time()

    def update(self, step: int, loss: float) -> None:
        if not self._enabled:
            return
        elapsed = time.time() - self._start_time
        rate = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
        eta = (self._total - step) / rate if rate > 0 else math.inf
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        sys.stderr.write(f"\rstep {step}/{self._total} | {rate:.2f} steps/s | {rate * self._batch:.0f} examples/s | "
                         f"loss {loss:.4f} | ETA {eta_text}  ")
        sys.stderr.flush()

    def close(self) -> None:
        if self._enabled:
            sys.stderr.write("\n")
