"""Distribution strategies for ``tfrec-kuai train`` (``--distribute``).

* ``none`` — the default strategy, one process.
* ``mirrored`` — ``tf.distribute.MirroredStrategy`` over this machine's devices.
* ``multi_worker`` — ``tf.distribute.MultiWorkerMirroredStrategy``: synchronous data parallelism
  over several processes or machines described by ``TF_CONFIG`` (each worker runs the same
  ``tfrec-kuai train`` command with its own ``TF_CONFIG`` task index). The dataset given to
  ``fit`` is the *global* stream; Keras shards it across workers (here by data, so any number of
  TFRecord files works) and splits each global batch between the replicas, so a run with N
  workers takes the same optimisation steps as one worker with the same ``--batch_size``.
  Only the chief writes the model directory; the other workers write to a scratch folder beside
  it, as the Keras multi-worker guide prescribes.
* ``parameter_server`` — ``tf.distribute.ParameterServerStrategy`` for embedding tables too big
  for one worker's memory: variables are sharded over the ``ps`` tasks of ``TF_CONFIG`` with a
  ``MinSizePartitioner`` and the chief runs ``fit`` (this path is documented, not tested here: it
  needs a cluster of ``chief``, ``worker`` and ``ps`` tasks; see docs/experiments.md).
"""
import json
import os

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

STRATEGIES = ("none", "mirrored", "multi_worker", "parameter_server")
# How long the multi-worker coordination service waits for a worker's heartbeat before it declares
# the worker dead and aborts every collective. TensorFlow's default, 10 s, is shorter than the
# stalls of a loaded host (two workers and other jobs on 2 cores stalled past it in a test run
# here), and a false death ends the whole run; a worker that truly died still ends it, later.
HEARTBEAT_TIMEOUT_S = 60


def tf_config():
    """The parsed ``TF_CONFIG`` environment variable ({} when unset)."""
    raw = os.environ.get("TF_CONFIG", "")
    return json.loads(raw) if raw else {}


def make_strategy(name):
    """The ``tf.distribute`` strategy called ``name`` (one of ``STRATEGIES``)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown distribution strategy {name!r}; expected one of {STRATEGIES}")
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    cluster = tf_config().get("cluster")
    if not cluster:
        raise ValueError(f"--distribute {name} needs TF_CONFIG with a 'cluster' and this process's 'task'")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if name == "multi_worker":
        _configure_coordination_service(resolver.cluster_spec())
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=256 << 10, max_shards=max(1, len(cluster.get("ps", []))))
    return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def _configure_coordination_service(cluster_spec):
    """The coordination service MultiWorkerMirroredStrategy would configure, with a longer heartbeat.

    The strategy sets the service up only when nothing did before it, with TensorFlow's default
    timeouts and no public way to change them; this sets up the same service (standalone, led by
    the same task, over the chief and worker jobs) with ``HEARTBEAT_TIMEOUT_S``.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context
    if context.context().coordination_service is not None:
        return
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster_spec.num_tasks(job))
            for job in ("chief", "worker") if job in cluster_spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(cluster_spec),
        coordinated_jobs=jobs, heartbeat_timeout_in_ms=HEARTBEAT_TIMEOUT_S * 1000)


def is_chief():
    """True in a single process and in the chief (or worker 0 when there is no chief) of a cluster."""
    task = tf_config().get("task", {})
    if not task:
        return True
    cluster = tf_config().get("cluster", {})
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in cluster


def writable_model_dir(model_dir):
    """``model_dir`` on the chief; a per-worker scratch folder beside it on the other workers."""
    if is_chief():
        return model_dir
    task = tf_config()["task"]
    return os.path.join(os.path.dirname(os.path.abspath(model_dir)),
                        f".{os.path.basename(model_dir)}-{task['type']}-{task['index']}")


def shard_by_data(dataset):
    """Shards the global stream by element (works for any number of files) under multi-worker."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
