"""Choice of the `tf.distribute` strategy."""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

logger = logging.getLogger(__name__)


def make_strategy(devices=None) -> tf.distribute.Strategy:
    """The strategy a training run uses.

    - `TF_CONFIG` set with more than one task: `MultiWorkerMirroredStrategy` (synchronous
      data parallelism across machines, TensorFlow's collective ops).
    - otherwise `MirroredStrategy` over `devices` (default: every visible GPU, or the CPU when
      there is none: one replica).

    Args:
        devices: optional list of device names for `MirroredStrategy`, e.g. two logical CPUs.
    """
    if _cluster_size() > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    logger.info("%s with %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes outputs (always, except the non-chief workers of a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0)


def _cluster_size() -> int:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 1
    try:
        cluster = json.loads(raw).get("cluster", {})
    except json.JSONDecodeError as error:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({error}). Received: TF_CONFIG={raw!r}"
        ) from None
    return sum(len(tasks) for tasks in cluster.values())
