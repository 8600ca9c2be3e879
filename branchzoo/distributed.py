"""Multi-worker training: the TF_CONFIG cluster, who writes what, agreeing on a resume.

TensorFlow-only (`tf.distribute.MultiWorkerMirroredStrategy`). train.py
``--strategy multiworker`` runs the same command on every host of a cluster;
each process learns its place from the standard ``TF_CONFIG`` variable
(Kubernetes operators and Slurm wrappers set it; `branchzoo.launch` sets it
for local workers). As the TensorFlow multi-worker guide prescribes:

- the strategy is created before any other TensorFlow call of the process;
- the input is sharded by the strategy (``AutoShardPolicy.DATA``: every
  worker builds the same in-memory pipeline and keeps its slice of each
  global batch, so ``--batch-size`` stays the global batch);
- every worker runs every step, evaluation and save (saving reads variables
  that may need collective ops), but only the chief writes to the real
  paths; the others write to a private temporary folder that is removed
  when the run ends (`OutputPaths`);
- every worker keeps its own crash-safe backup under ``--output`` (the chief
  in ``backup/``, worker ``i`` in ``backup-worker<i>/``), so no shared file
  system is needed; on restart the workers agree on the last epoch every
  one of them has (`agree_on_restore_epoch`) and resume from it, or refuse
  together (backups without ``--resume``, ``--resume`` without any).

    >>> from branchzoo.distributed import parse_tf_config
    >>> task = parse_tf_config('{"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}, '
    ...                        '"task": {"type": "worker", "index": 1}}')
    >>> task.num_workers, task.is_chief, task.address
    (2, False, '127.0.0.1:2223')
"""

import dataclasses
import errno
import json
import os
import shutil
import socket
import tempfile

TF_CONFIG = "TF_CONFIG"
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')
# Jobs that take part in MultiWorkerMirroredStrategy's synchronous training.
JOBS = ("chief", "worker")


class TFConfigError(ValueError):
    """TF_CONFIG is missing or malformed; the message says what is wrong and shows a valid one."""


def _fail(problem, text=None):
    received = "" if text is None else f" Received: {TF_CONFIG}={_clip(text)!r}."
    raise TFConfigError(
        f"--strategy multiworker reads the cluster from the {TF_CONFIG} environment variable, "
        f"but {problem}.{received} A valid example (the same cluster on every worker, each with "
        f"its own task index): {TF_CONFIG}='{TF_CONFIG_EXAMPLE}'"
    )


def _clip(text, limit=300):
    return text if len(text) <= limit else text[:limit] + "..."


@dataclasses.dataclass(frozen=True)
class ClusterTask:
    """This process's place in a multi-worker cluster (from TF_CONFIG).

    Attributes:
        cluster: ``{"chief": [address], "worker": [address, ...]}`` (the
            chief job is optional).
        task_type: ``"chief"`` or ``"worker"``.
        task_index: index of this task within its job.
    """

    cluster: dict
    task_type: str
    task_index: int

    @property
    def addresses(self):
        """Every task's address, chief first: the order of `rank`."""
        return [*self.cluster.get("chief", []), *self.cluster.get("worker", [])]

    @property
    def num_workers(self):
        return len(self.addresses)

    @property
    def rank(self):
        """0 for the chief, then 1.. for the other workers."""
        chiefs = len(self.cluster.get("chief", []))
        return self.task_index if self.task_type == "chief" else chiefs + self.task_index

    @property
    def is_chief(self):
        """The chief job's task, or worker 0 when there is no chief job (as in TensorFlow)."""
        return self.rank == 0

    @property
    def address(self):
        return self.cluster[self.task_type][self.task_index]

    @property
    def name(self):
        return f"{self.task_type}:{self.task_index}"

    def as_dict(self):
        """The TF_CONFIG content, normalised (recorded in the run config)."""
        return {"cluster": {k: list(v) for k, v in self.cluster.items()},
                "task": {"type": self.task_type, "index": self.task_index}}


def parse_tf_config(text):
    """Parses and checks a TF_CONFIG value.

    Args:
        text: the JSON text of TF_CONFIG, or None when the variable is unset.

    Returns:
        A `ClusterTask`.

    Raises:
        TFConfigError (a ValueError): unset, not JSON, no ``cluster`` or
            ``task``, a job other than chief/worker, an address that is not
            ``host:port``, a repeated address, a task type not in the cluster
            or an index out of range; the message shows a valid example.
    """
    if text is None or not text.strip():
        _fail(f"{TF_CONFIG} is {'not set' if text is None else 'empty'}")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        _fail(f"it is not valid JSON ({e.msg} at character {e.pos})", text)
    if not isinstance(config, dict):
        _fail(f"it must be a JSON object with keys 'cluster' and 'task', not a {type(config).__name__}", text)
    cluster = config.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        _fail("it has no 'cluster' (a map from job name to a list of 'host:port' addresses)", text)
    unknown = sorted(set(cluster) - set(JOBS))
    if unknown:
        _fail(f"its cluster has jobs {unknown}: synchronous multi-worker training knows only "
              f"{list(JOBS)} (no parameter servers or evaluators)", text)
    if "worker" not in cluster and "chief" not in cluster:
        _fail("its cluster has no 'worker' job", text)
    seen = set()
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            _fail(f"cluster job {job!r} must be a non-empty list of 'host:port' addresses, "
                  f"not {addresses!r}", text)
        if job == "chief" and len(addresses) != 1:
            _fail(f"the 'chief' job must have exactly one address, not {len(addresses)}", text)
        for address in addresses:
            _check_address(job, address, text)
            if address in seen:
                _fail(f"the address {address!r} appears twice in the cluster", text)
            seen.add(address)
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        _fail("it has no 'task' ({\"type\": \"worker\", \"index\": i}: which task this process is)", text)
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        _fail(f"its task type {task_type!r} is not a job of the cluster ({sorted(cluster)})", text)
    if isinstance(index, bool) or not isinstance(index, int):
        _fail(f"its task index must be an integer, not {index!r}", text)
    count = len(cluster[task_type])
    if not 0 <= index < count:
        _fail(f"its task index {index} is out of range: the {task_type!r} job has {count} "
              f"address{'es' if count > 1 else ''} (indices 0..{count - 1})", text)
    return ClusterTask(cluster={k: list(v) for k, v in cluster.items()}, task_type=task_type,
                       task_index=index)


def _check_address(job, address, text):
    host, sep, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
        _fail(f"the {job!r} address {address!r} is not 'host:port' with a port in 1..65535", text)


def read_tf_config(environ=None):
    """The `ClusterTask` of this process, from ``environ["TF_CONFIG"]`` (default `os.environ`)."""
    environ = os.environ if environ is None else environ
    return parse_tf_config(environ.get(TF_CONFIG))


def check_port_free(task):
    """Raises TFConfigError when this task's port is taken on this machine.

    TensorFlow's server listens on every interface at the task's port; a port
    in use would otherwise surface later as an obscure gRPC error (or, with
    SO_REUSEPORT, as two servers silently sharing it). SO_REUSEADDR lets a
    restarted worker reuse a port whose old connections linger in TIME_WAIT.
    """
    port = int(task.address.rpartition(":")[2])
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 here: nothing can listen there either
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                continue
            problem = "is already in use" if e.errno == errno.EADDRINUSE else "cannot be used"
            raise TFConfigError(
                f"TF_CONFIG gives this task ({task.name}) the address {task.address}, but port "
                f"{port} {problem} on this machine ({e.strerror}). Stop what uses it or give this "
                f"task another port in TF_CONFIG. A valid example: {TF_CONFIG}='{TF_CONFIG_EXAMPLE}'"
            ) from None
        finally:
            sock.close()


def make_strategy(task):
    """`tf.distribute.MultiWorkerMirroredStrategy` for `task` (call before any other TF op).

    Checks the task's port first (`check_port_free`). The strategy reads the
    same TF_CONFIG that `read_tf_config` checked.
    """
    check_port_free(task)
    return _strategy_class()()


def _strategy_class():
    """MultiWorkerMirroredStrategy whose `reduce` takes what Keras 3 gives it.

    With more than one worker TensorFlow (checked on 2.21 with Keras 3.15)
    fails on two calls Keras 3 makes, so no Keras 3 model trains under the
    stock strategy (tensorflow/tensorflow#72388, keras-team/keras#20585):

    - ``fit`` / ``evaluate`` reduce the first ``(x, y)`` batch, a nest,
      to learn its shapes; the strategy's docs accept nests, but it hands
      the nest to its cross-device ops whole ("Attempt to convert a value
      (PerReplica...) to a Tensor"). Reduced here leaf by leaf, as
      MirroredStrategy does.
    - each step's logs (per-replica scalars) are reduced with ``axis=0``,
      which a scalar does not have; Keras means the mean over replicas (what
      it computes under MirroredStrategy), so scalars reduce with
      ``axis=None``.
    """
    global _STRATEGY_CLASS
    if _STRATEGY_CLASS is None:
        import tensorflow as tf

        class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
            def reduce(self, reduce_op, value, axis):
                parent = super()

                def one(v):
                    scalar = all(getattr(t, "shape", None) is not None and t.shape.rank == 0
                                 for t in self.experimental_local_results(v))
                    return parent.reduce(reduce_op, v, None if scalar else axis)

                return tf.nest.map_structure(one, value)

        _STRATEGY_CLASS = MultiWorkerMirroredStrategy
    return _STRATEGY_CLASS


_STRATEGY_CLASS = None


def shard_by_data(dataset):
    """`dataset` with the DATA auto-shard policy: each worker keeps its slice of every batch.

    The TF guide's setting for in-memory pipelines (no files to shard by);
    the strategy then splits each global batch over all replicas of all
    workers, in order, as MirroredStrategy does on one machine.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def backup_dir(output, task=None):
    """This worker's backup folder: ``<output>/backup`` on the chief, ``backup-worker<rank>`` elsewhere.

    Separate folders, so workers sharing a file system (or one machine) never
    write each other's files, and each worker can resume from its own disk.
    """
    if task is None or task.is_chief:
        return os.path.join(output, "backup")
    return os.path.join(output, f"backup-worker{task.rank}")


class OutputPaths:
    """Where this process writes each output: the real path on the chief, a temp folder elsewhere.

    Non-chief workers run the same saves as the chief (TensorFlow's rule:
    saving may need collective ops) into a private temporary folder that
    `cleanup` removes.

    Args:
        task: a `ClusterTask`, or None for a single-process run (all real paths).
    """

    def __init__(self, task=None):
        self.task = task
        self._tmp = None
        self._paths = {}

    @property
    def is_chief(self):
        return self.task is None or self.task.is_chief

    def path(self, path):
        """Where this process writes `path` (a file or folder)."""
        if self.is_chief:
            return path
        if path not in self._paths:
            if self._tmp is None:
                self._tmp = tempfile.mkdtemp(prefix=f"branchzoo-worker{self.task.rank}-")
            name = os.path.basename(os.path.normpath(path)) or "output"
            self._paths[path] = os.path.join(self._tmp, f"{len(self._paths)}-{name}")
        return self._paths[path]

    def cleanup(self):
        """Removes the temporary folder (nothing on the chief)."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp, self._paths = None, {}


def agree_on_restore_epoch(strategy, task, metadata, resume, nothing_to_resume=None):
    """The epoch every worker resumes from, decided by all workers together.

    Gathers every worker's backed-up epochs (a collective op: every worker
    calls it at the same point) and applies `common_restore_epoch` to them,
    so that every worker reaches the same answer, or raises the same error.

    Args:
        strategy: the multi-worker strategy.
        task: this process's `ClusterTask`.
        metadata: this worker's backup metadata (None: no backup).
        resume: whether ``--resume`` was given.
        nothing_to_resume: the message for ``--resume`` without any backup.

    Returns:
        The epoch to resume from (0: start from scratch).
    """
    import numpy as np
    import tensorflow as tf

    metadata = metadata or {}
    mine = tf.constant([[task.rank, metadata.get("epoch", 0),
                         (metadata.get("previous") or {}).get("epoch", 0)]], tf.int64)
    values = strategy.experimental_distribute_values_from_function(lambda _: mine)
    rows = np.asarray(strategy.gather(values, axis=0)).reshape(-1, 3)
    return common_restore_epoch(rows, resume, nothing_to_resume)


def common_restore_epoch(rows, resume=True, nothing_to_resume=None):
    """The last epoch that every worker has a backup of.

    A worker killed while writing its backup may be one epoch behind the
    others; they then fall back to the previous backup they keep.

    Args:
        rows: ``[[worker rank, latest epoch, previous epoch], ...]`` (epoch 0:
            no backup), a row per replica.
        resume: whether ``--resume`` was given: without it no worker may
            hold a backup; with it at least one must.
        nothing_to_resume: the message for ``--resume`` without any backup.

    Returns:
        The smallest latest epoch (0: start from scratch).

    Raises:
        ValueError: backups without ``--resume``, ``--resume`` without
            any, or a worker that holds neither that epoch nor nothing (the
            backups do not belong to the same run).
    """
    latest = {}
    for rank, last, previous in rows:
        latest[int(rank)] = (int(last), int(previous))
    holding = sorted(rank for rank, (last, _) in latest.items() if last > 0)
    if not resume:
        if holding:
            raise ValueError(
                f"The --output of workers {holding} holds an interrupted run (their backups). "
                "Pass --resume to continue it, or choose another --output."
            )
        return 0
    if not holding:
        raise ValueError(nothing_to_resume or "--resume: no worker holds a backup of an interrupted run. "
                         "Drop --resume to start a new run, or choose another --output.")
    target = min(last for last, _ in latest.values())
    lacking = sorted(rank for rank, (last, prev) in latest.items() if target not in (0, last, prev))
    if lacking:
        epochs = {rank: last for rank, (last, _) in sorted(latest.items())}
        raise ValueError(
            f"The workers' backups do not agree: their last epochs are {epochs} and workers "
            f"{lacking} hold no backup of epoch {target}. They belong to different runs; remove "
            "the backup folders in --output on every worker and start again without --resume."
        )
    return target


def barrier(strategy):
    """Returns once every worker has called it (a one-number all-reduce).

    The chief also leads TensorFlow's coordination service: ending the run
    here keeps it alive until every worker has finished its saves.
    """
    import tensorflow as tf

    one = strategy.experimental_distribute_values_from_function(lambda _: tf.constant(1.0))
    strategy.reduce("SUM", one, axis=None)
