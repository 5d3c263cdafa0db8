"""TensorBoard event files (tensorboardX) decode with protobuf and carry valid CRC-32C framing; metrics.jsonl has wall
times; learning-rate schedule, clipping, EMA (with its warm-up) and FSDP sharding rules;
the bench's shape override; the sampler's denoiser: one pass at guidance scale 1, clipping."""

import json
import os
import struct
import time

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from diffax.parallel import fsdp_spec
from diffax.train import metrics
from diffax.experiment import parse_shape
from diffax.train.optimizer import clip_by_global_norm, learning_rate_schedule
from diffax.train.state import update_ema


def _event_class():
    """tensorflow/core/util/event.proto's Event, Summary and Summary.Value (the fields TensorBoard reads)."""
    file = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="t", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    value = file.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary = file.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, type_name=".t.Value", label=F.LABEL_REPEATED)
    event = file.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, type_name=".t.Summary", label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bit by bit: the reference the TFRecord framing is checked against."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(data: bytes) -> list[bytes]:
    """TFRecords: uint64 length | masked crc(length) | data | masked crc(data)."""
    records, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        assert struct.unpack_from("<I", data, offset + 8)[0] == _masked_crc(data[offset: offset + 8])
        payload = data[offset + 12: offset + 12 + length]
        (crc,) = struct.unpack_from("<I", data, offset + 12 + length)
        assert crc == _masked_crc(payload)
        records.append(payload)
        offset += 16 + length
    return records


def test_crc32c_reference_check_value():
    assert _crc32c(b"123456789") == 0xE3069283  # The CRC-32C catalogue's check value.


def test_metric_writer_writes_jsonl_and_tensorboard_events(tmp_path):
    writer = metrics.MetricWriter(str(tmp_path))
    writer.write(10, {"loss": 0.5, "learning_rate": 1e-3})
    writer.write(20, {"loss": 0.25, "learning_rate": 2e-3})
    writer.close()
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert all(abs(line.pop("wall_time") - time.time()) < 600 for line in lines)
    assert lines == [{"step": 10, "loss": 0.5, "learning_rate": 1e-3},
                     {"step": 20, "loss": 0.25, "learning_rate": 2e-3}]
    (name,) = os.listdir(tmp_path / "tensorboard")
    assert name.startswith("events.out.tfevents.")
    event_class = _event_class()
    events = [event_class.FromString(record) for record in _records((tmp_path / "tensorboard" / name).read_bytes())]
    assert events[0].file_version == "brain.Event:2"
    assert [(e.step, [(v.tag, v.simple_value) for v in e.summary.value]) for e in events[1:]] == [
        (10, [("loss", 0.5)]), (10, [("learning_rate", pytest.approx(1e-3))]),
        (20, [("loss", 0.25)]), (20, [("learning_rate", pytest.approx(2e-3))])]


def test_learning_rate_warmup_then_cosine_to_the_end_fraction():
    optim = ml_collections.ConfigDict(dict(learning_rate=1.0, warmup_steps=10, decay="cosine",
                                           end_learning_rate_fraction=0.1))
    schedule = learning_rate_schedule(optim, num_steps=100)
    np.testing.assert_allclose([schedule(0), schedule(4), schedule(50), schedule(100)],
                               [0.1,  # lr * (s + 1) / warmup * (f + (1 - f) (1 + cos(pi s / T)) / 2)
                                0.5 * (0.1 + 0.9 * 0.5 * (1 + np.cos(0.04 * np.pi))), 0.55, 0.1], rtol=1e-5)
    optim.decay = "constant"
    assert float(learning_rate_schedule(optim, 100)(1000)) == 1.0


def test_ema_of_each_decay():
    ema = update_ema(({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}), {"w": jnp.full(2, 10.0)}, (0.9, 0.5))
    np.testing.assert_allclose(ema[0]["w"], 1.0)
    np.testing.assert_allclose(ema[1]["w"], 5.5)


class EmaWarmupTest(chex.TestCase):
    """d_t = min(d, (1 + t) / (10 + t)): 0.1 at the first update, d once (1 + t) / (10 + t) passes it; the same
    with and without jit (the train step runs it jitted)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_warmup_follows_tensorflow_num_updates(self):
        update = self.variant(lambda ema, params, step: update_ema(ema, params, (0.99,), step))
        ema, params = ({"w": jnp.zeros(2)},), {"w": jnp.full(2, 10.0)}
        for step, decay in ((0, 0.1), (90, 91 / 100), (5000, 0.99)):
            np.testing.assert_allclose(update(ema, params, jnp.int32(step))[0]["w"], 10 * (1 - decay), rtol=1e-5)

    def test_mismatched_trees_are_refused(self):
        with self.assertRaises(AssertionError):
            update_ema(({"w": jnp.zeros(3)},), {"w": jnp.zeros(2)}, (0.9,))


@pytest.mark.parametrize("shape,min_size,expected", [
    ((3, 3, 64, 128), 0, (None, None, None, "fsdp")),  # The largest divisible axis.
    ((8, 6), 0, ("fsdp",)),
    ((6, 10), 0, ()),  # No axis divisible by 4: replicated.
    ((512, 512), 10**6, ()),  # Too small to shard.
    ((), 0, ()),
])
def test_fsdp_rule(shape, min_size, expected):
    assert tuple(fsdp_spec(shape, 4, min_size)) == expected


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clipping_matches_optax(max_norm):
    grads = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.array([-3.0, 4.0])}
    expected, _ = optax.clip_by_global_norm(max_norm).update(grads, None)
    clipped = clip_by_global_norm(grads, optax.tree.norm(grads), max_norm)
    for got, want in zip(jax.tree.leaves(clipped), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert clip_by_global_norm(grads, optax.tree.norm(grads), 0.0) is grads  # 0 disables clipping.


def test_bench_example_shape_override():
    assert parse_shape("", "bench.example_shape") is None
    assert parse_shape("32,32,4", "bench.example_shape") == (32, 32, 4)
    for bad in ("32,x", "0,4", "32,,4"):
        with pytest.raises(ValueError, match="config.bench.example_shape"):
            parse_shape(bad, "bench.example_shape")


def test_sampler_denoiser_guidance_and_clipping():
    from diffax.generate import make_denoiser
    from diffax.schedules import get_schedule

    calls = []

    class Stub:
        """Stands in for an Experiment: x0_fn(x, t, labels) = x * (1 + labels); label 3 is the null class."""

        def __init__(self):
            self.schedule, self.num_classes = get_schedule("vp_cosine"), 3

        def x0_fn(self, params):
            def x0_fn(x, t, labels):
                calls.append(x.shape[0])
                return x * (1.0 + labels[:, None])
            return x0_fn

    stub, x, t, labels = Stub(), jnp.ones((2, 4)), jnp.full((2,), 0.5), jnp.array([0, 2])
    conditional = make_denoiser(stub, None, labels, 1.0)(x, t)
    np.testing.assert_allclose(conditional, x * (1.0 + labels[:, None]))
    guided = make_denoiser(stub, None, labels, 2.0)(x, t)  # x0_u + 2 (x0_c - x0_u), x0_u = 4 x.
    np.testing.assert_allclose(guided, 4.0 * x + 2.0 * (x * (1.0 + labels[:, None]) - 4.0 * x), rtol=1e-6)
    assert calls == [2, 4]  # Scale 1: one conditional pass; scale 2: conditional and null labels together.
    clipped = make_denoiser(stub, None, labels, 2.0, clip_denoised=True)(x, t)
    np.testing.assert_allclose(clipped, jnp.clip(guided, -1.0, 1.0))
    assert float(jnp.min(guided)) < -1.0  # The clipping did something.
