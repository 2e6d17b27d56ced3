"""Subprocess worker for the distribution tests (not collected by pytest).

Usage: python run_worker.py OUT_NPZ MODEL_DIR STRATEGY BATCH [STEPS]
STRATEGY: "two-cpus" (MirroredStrategy over 2 logical CPUs), "one-cpu", or "auto" (make_strategy,
which picks MultiWorkerMirroredStrategy when TF_CONFIG is set).
"""

import sys

import numpy as np
import tensorflow as tf

out, model_dir, which, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
steps = int(sys.argv[5]) if len(sys.argv) > 5 else 4
if which == "two-cpus":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from vxmtf.training import DataConfig, ModelConfig, RunConfig, TrainConfig, train  # noqa: E402
from vxmtf.training.strategy import make_strategy  # noqa: E402

config = RunConfig(
    data=DataConfig(synthetic_shape=(32, 32), val_pairs=0),
    model=ModelConfig(enc_features=(4, 8, 8, 8), dec_features=(8, 8, 8, 8, 8, 4, 4), int_steps=3),
    train=TrainConfig(
        model_dir=model_dir,
        epochs=1,
        steps_per_epoch=steps,
        batch_size=batch,
        lr=1e-3,
        export=False,
    ),
)
if which == "auto":
    strategy = make_strategy()
elif which == "two-cpus":
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
elif which == "one-cpu":
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
result = train(config, strategy=strategy)
replicas = strategy.num_replicas_in_sync
arrays = {f"arr_{i}": w.numpy() for i, w in enumerate(result.model.weights)}
np.savez(out, replicas=replicas, **arrays)
