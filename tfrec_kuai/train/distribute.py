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
  for one worker's memory. ``TF_CONFIG`` names a cluster of one ``chief``, ``worker`` tasks and
  ``ps`` tasks, and every task runs the same ``tfrec-kuai train ... --distribute parameter_server``
  command with its own ``TF_CONFIG`` task: a ``worker`` or ``ps`` task becomes a
  ``tf.distribute.Server`` and serves until it is stopped (``serve``: it reads nothing else of the
  command line), the ``chief`` is the coordinator and runs ``fit``. Start the servers first; the
  chief waits for them (the strategy retries the connection for about three minutes).

  *Sharding.* Each variable is split along its first axis over the ``ps`` tasks by a
  ``MinSizePartitioner``: shards of at least ``--min_shard_bytes`` (256 KiB by default), at most one
  per ``ps`` task, so the id tables (a 4.4 M-video table of 32 floats is 560 MB) are spread over
  every ``ps`` and the small dense kernels stay whole on one of them. The Keras ``Embedding``
  looks rows up shard by shard; the ``IntegerLookup`` tables are static, and the strategy copies
  one to every worker. The checkpoints hold each table whole (a ``ShardedVariable`` saves as
  one), so ``evaluate`` and ``export`` load a parameter-server model like any other.

  *What differs from one process* (``training.train``). The workers train asynchronously: the
  chief hands each step to whichever worker is free and each applies its gradient to the ``ps``
  variables at once, so the run takes the same number of steps of the same batch size as one
  worker, but it is not deterministic. Each worker reads the whole training split in its own
  random order (``ps_training_input``: the shuffles are left unseeded, so each worker draws its
  own; seeded, every worker would read the same batches), so the resumable stream of one
  process does not apply; a killed chief resumes from the last epoch end (``BackupAndRestore``
  backs up at epoch ends only: Keras skips its step hooks under this strategy, and refuses any
  other callback with step hooks, so the throughput logger counts steps with the model's step
  counter and TensorBoard gets epoch scalars only). Keras' progress bar is refused too
  (``--verbose 1`` gives one line per epoch). The epoch's logged metrics are those the last
  scheduled step returned (TFRS steps return the loss beside the metrics, so Keras cannot read
  the metrics from the model instead, and warns). Validation is refused (``--validation none``): the
  TFRS models compute their metrics in their own ``test_step``, which Keras' exact evaluation
  under this strategy skips, and its inexact evaluation would score every worker's copy of the
  validation batches from the start, not the validation set. ``--warm_start`` is refused too.
  The coordination service and its heartbeat are not used (the strategy configures one only when
  ``TF_PSS_ENABLE_COORDINATION_SERVICE`` is set); a worker that dies is rescheduled around by the
  coordinator, a ``ps`` that dies ends the run.
"""
import json
import os

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from tfrec_kuai.errors import InputError

STRATEGIES = ("none", "mirrored", "multi_worker", "parameter_server")
# How long the multi-worker coordination service waits for a worker's heartbeat before it declares
# the worker dead and aborts every collective. TensorFlow's default, 10 s, is shorter than the
# stalls of a loaded host (two workers and other jobs on 2 cores stalled past it in a test run
# here), and a false death ends the whole run; a worker that truly died still ends it, later.
HEARTBEAT_TIMEOUT_S = 60
# The parameter-server partitioner's smallest shard (--min_shard_bytes), the strategy guide's value.
DEFAULT_MIN_SHARD_BYTES = 256 << 10


def tf_config():
    """The parsed ``TF_CONFIG`` environment variable ({} when unset)."""
    raw = os.environ.get("TF_CONFIG", "")
    return json.loads(raw) if raw else {}


def task():
    """This process's ``TF_CONFIG`` task, ``(type, index)``; ``(None, 0)`` outside a cluster."""
    t = tf_config().get("task", {})
    return t.get("type"), int(t.get("index", 0))


def make_strategy(name, min_shard_bytes=DEFAULT_MIN_SHARD_BYTES):
    """The ``tf.distribute`` strategy called ``name`` (one of ``STRATEGIES``); ``min_shard_bytes``
    is the parameter-server partitioner's smallest shard."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown distribution strategy {name!r}; expected one of {STRATEGIES}")
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    cluster = tf_config().get("cluster")
    if not cluster:
        raise InputError(f"--distribute {name} needs TF_CONFIG with a 'cluster' and this process's 'task' "
                         "(see tfrec_kuai/train/distribute.py)")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if name == "multi_worker":
        _configure_coordination_service(resolver.cluster_spec())
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    check_parameter_server_cluster()
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=int(min_shard_bytes), max_shards=len(cluster["ps"]))
    return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def check_parameter_server_cluster():
    """``TF_CONFIG`` describes a parameter-server cluster and this process's task in it, or an
    ``InputError`` says what is missing."""
    config = tf_config()
    cluster = config.get("cluster") or {}
    missing = [job for job in ("chief", "worker", "ps") if not cluster.get(job)]
    kind, index = task()
    if missing or kind not in cluster or index >= len(cluster.get(kind, [])):
        what = (f"no {' or '.join([', '.join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)} task"
                if missing else
                f"no task {kind!r} {index} in its cluster" if kind else "no 'task'")
        raise InputError(f"--distribute parameter_server needs TF_CONFIG naming a cluster of one 'chief', 'worker' "
                         f"and 'ps' tasks and this process's 'task': TF_CONFIG has {what} "
                         "(see tfrec_kuai/train/distribute.py)")
    if len(cluster["chief"]) != 1:
        raise InputError(f"--distribute parameter_server needs exactly one 'chief' in TF_CONFIG, "
                         f"got {len(cluster['chief'])}")


def serve():
    """Runs this ``worker`` or ``ps`` task's ``tf.distribute.Server`` until the process is stopped.

    A worker executes the functions the chief sends it, which may hold the fused attention op:
    the op library is loaded first (``tfrec_kuai.ops``), as the chief's ``auto`` picks ``fused``
    when its own copy loads. ``GRPC_FAIL_FAST=use_caller`` lets the chief see a lost task as an
    error it can reschedule around, as the strategy's guide prescribes.
    """
    check_parameter_server_cluster()
    kind, index = task()
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    if kind == "worker":
        from tfrec_kuai import ops
        ops.fused_available()
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=kind, task_index=index,
                                  protocol=resolver.rpc_layer or "grpc", start=True)
    print(f"{kind} {index} serving on {resolver.cluster_spec().task_address(kind, index)}", flush=True)
    server.join()


def is_parameter_server(strategy):
    return isinstance(strategy, tf.distribute.ParameterServerStrategy)


def describe_shards(model):
    """One line: each id table's shape and, per shard, its rows and the ``ps`` task holding them."""
    from tfrec_kuai.train.training import _id_embeddings
    parts = []
    for name, layer in _id_embeddings(model).items():
        table = layer.embedding.embeddings
        shards = getattr(table, "variables", [table])
        where = ", ".join(f"{int(v.shape[0])} rows on {_task_of(v.device)}" for v in shards)
        parts.append(f"{name} {int(table.shape[0])}x{int(table.shape[1])} in {len(shards)} shard"
                     f"{'s' if len(shards) > 1 else ''} ({where})")
    return "embedding tables over the ps tasks: " + "; ".join(parts)


def _task_of(device):
    """``/job:ps/task:1`` of a device name such as ``/job:ps/replica:0/task:1/device:CPU:0``."""
    spec = tf.DeviceSpec.from_string(device)
    return f"/job:{spec.job}/task:{spec.task}"


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
