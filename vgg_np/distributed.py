"""Extraction on a Dask cluster: one task per partition, the weights loaded once per worker.

`vgg_np.extract` cuts an extraction into partitions (rows ``[start, stop)`` of one store)
and runs each with `vgg_np.extract.run_partition`, which writes only its own rows and
manifest, idempotently. This module maps those partitions over a ``dask.distributed``
cluster and nothing more:

- the client plans the store once (`vgg_np.extract.create_store`) and submits one task per
  pending partition; a task carries the store's path, the partition (its rows and image
  paths) and the weights' *path*, never arrays;
- each worker thread loads the weights once (`load_model`) and keeps the model for every
  later task; `run_partition` checks it against the digest in the plan, so a worker that
  reads another file refuses instead of writing other numbers;
- each task writes its partition's region of the store and returns a small status dict;
  no feature crosses the scheduler;
- a worker that dies has its tasks rerun elsewhere by Dask: the partition resumes after
  the batches its journal says were flushed, and rewrites the rest with the same bytes;
  a client that dies loses nothing written: the next run resumes from the manifest.

The store is the one `vgg_np.extract.extract` writes, byte for byte, when the workers'
engines compute what the local one does: the same CPU kind (BLAS kernels differ between
CPU generations) and, while the engine's dense layers depend on it, the same number of
engine threads (`threads`).

Needs the optional ``dask`` extra (``pip install ".[dask]"`` from a checkout):
``dask[distributed]``, and ``zarr`` for ``.zarr`` stores. Every worker must see the
weights file and the store at the same paths as the client (a shared filesystem).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING

from vgg_np.extract import (
    DEFAULT_PARTITION_SIZE,
    ExtractResult,
    Partition,
    PartitionResult,
    Store,
    create_store,
    interrupted_resumes,
    open_store,
    run_partition,
)
from vgg_np.model import VGG
from vgg_np.progress import Progress, show_progress

if TYPE_CHECKING:
    # The optional dask packages are not type-checked here (pyproject.toml): a Client is
    # Any to the checker; the name says what is meant.
    from distributed import Client

__all__ = [
    "ClusterError",
    "connect",
    "describe",
    "engine_options",
    "extract_on_cluster",
    "load_model",
]

#: Seconds `connect` waits for a scheduler's answer, and then for its first worker.
DEFAULT_TIMEOUT = 60.0

#: Environment of local worker processes: BLAS single-threaded (the engine splits the work
#: between its own threads; idle OpenBLAS threads would spin and steal their cores).
BLAS_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

_thread_state = threading.local()  # .models: (path, options) -> (file identity, VGG)
_loads_lock = threading.Lock()
_loads: dict[tuple, int] = {}  # (path, options) -> times this process loaded it


class ClusterError(RuntimeError):
    """A partition could not be run: every worker it was given died (out of memory, killed).

    Examples
    --------
    >>> str(ClusterError("part-00003 of f.npy: every worker it was given died"))
    'part-00003 of f.npy: every worker it was given died'
    """


def _identity(path: str) -> tuple[int, int, int]:
    """Inode, size and modification time: a replaced or rewritten file is a new one."""
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _model_key(weights: str | os.PathLike, options: dict | None) -> tuple[str, tuple]:
    return os.path.abspath(weights), tuple(sorted((options or {}).items()))


def load_model(weights: str | os.PathLike, options: dict | None = None) -> VGG:
    """Return ``VGG.from_file(weights, **options)``, loaded once per thread and kept.

    A Dask worker runs its tasks on long-lived threads, so each worker thread reads the
    weights on its first task and reuses the model afterwards (the engine runs one pass
    at a time, hence one model per thread: give workers one thread each). The file is
    loaded again if it was replaced or modified since.

    Parameters
    ----------
    weights : str or os.PathLike
    options : dict, optional
        Keyword arguments of `vgg_np.VGG.from_file` (hashable values).

    Returns
    -------
    VGG

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from vgg_np import VGG11
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp) / "w.npz"
    ...     VGG11(include_top=False, seed=0).save_weights(path)
    ...     first = load_model(path, {"threads": 1})
    ...     first is load_model(path, {"threads": 1}), first is load_model(path)
    (True, False)
    """
    key = _model_key(weights, options)
    models: dict[tuple, tuple[object, VGG]] = _thread_state.__dict__.setdefault("models", {})
    identity = _identity(key[0])
    if key not in models or models[key][0] != identity:
        models[key] = (identity, VGG.from_file(key[0], **dict(key[1])))
        with _loads_lock:
            _loads[key] = _loads.get(key, 0) + 1
    return models[key][1]


_stores: dict[str, tuple[tuple, Store]] = {}
_stores_lock = threading.Lock()


def _plan_identity(store: Store) -> tuple[int, int, int]:
    return _identity(os.path.join(store.manifest_dir, "plan.json"))


def _worker_store(out: str) -> Store:
    """Open the store at `out`, its plan read once per process (it may list 10**6 paths)."""
    with _stores_lock:
        with contextlib.suppress(KeyError, FileNotFoundError):
            identity, store = _stores[out]
            if _plan_identity(store) == identity:
                return store
        try:
            store = open_store(out)
        except FileNotFoundError:
            raise ValueError(
                f"worker on {socket.gethostname()} cannot see the plan of {out}: the store must "
                "be on a filesystem every worker mounts at the client's path"
            ) from None
        _stores[out] = (_plan_identity(store), store)
        return store


def _peak_rss() -> int:
    """Peak resident memory of this process in bytes (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _run_task(
    out: str,
    partition: Partition,
    weights: str,
    options: dict,
    batch_size: int,
    decode_threads: int,
) -> dict:
    """One Dask task: run one partition where it lands; return what happened (small)."""
    start = time.perf_counter()
    if not os.path.exists(weights):
        raise ValueError(
            f"worker on {socket.gethostname()} cannot see the weights {weights}: they must be "
            "on a filesystem every worker mounts at the client's path"
        )
    model = load_model(weights, options)
    skipped: list[tuple[str, str]] = []
    done = run_partition(
        _worker_store(out), partition, model, batch_size=batch_size, workers=decode_threads,
        on_batch=lambda rows, bad: skipped.extend(bad),
    )  # fmt: skip
    return {
        "result": asdict(done),
        "skipped": skipped,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "model_loads": _loads[_model_key(weights, options)],
        "seconds": time.perf_counter() - start,
        "peak_rss": _peak_rss(),
    }


def _client(address: str, timeout: float) -> Client:
    """Return a ``distributed.Client`` of the scheduler at `address`; OSError after `timeout` s.

    ``Client(timeout=...)`` bounds the TCP connection but not the handshake that follows:
    an address that accepts and never answers would hold it forever, so it is made in a
    thread the caller waits for at most `timeout` seconds.
    """
    import distributed

    made: dict = {}

    def make() -> None:
        try:
            made["client"] = distributed.Client(address, timeout=timeout)
        except BaseException as error:  # handed to the caller
            made["error"] = error

    thread = threading.Thread(target=make, name="vgg_np-connect", daemon=True)
    thread.start()
    thread.join(timeout)
    if "client" in made:
        return made["client"]
    reason = made.get("error") or "no answer (is it a Dask scheduler?)"
    raise OSError(
        errno.ETIMEDOUT,
        f"cannot reach the Dask scheduler within {timeout:g} s: {reason} (a longer wait: "
        "--cluster-timeout)",
        address,
    )


@contextlib.contextmanager
def connect(
    scheduler: str | None = None, workers: int | None = None, *, timeout: float = DEFAULT_TIMEOUT
) -> Iterator[Client]:
    """Yield a ``distributed.Client``: of a running scheduler, or of a new local cluster.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://HOST:8786``, started by ``dask scheduler``).
    workers : int, optional
        Instead: start a ``LocalCluster`` of this many worker processes on 127.0.0.1, one
        thread each, BLAS single-threaded (`BLAS_ENV`), no dashboard; stopped on exit.
    timeout : float, default `DEFAULT_TIMEOUT`
        Seconds to wait for the scheduler to answer, and then for at least one worker
        (``vgg-np extract --cluster-timeout``).

    Raises
    ------
    ValueError
        Unless exactly one of `scheduler` and `workers` is given, or on a bad `timeout`.
    ImportError
        Without ``dask.distributed``.
    OSError
        If the scheduler does not answer within `timeout` seconds (the address named).
    ClusterError
        If no worker joins the scheduler within `timeout` seconds.

    Examples
    --------
    >>> with connect(workers=2) as client:  # doctest: +SKIP
    ...     len(client.scheduler_info()["workers"])
    2
    """
    if (scheduler is None) == (workers is None):
        raise ValueError("give either `scheduler` (an address) or `workers` (a count), not both")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"`workers` must be a positive int, got {workers!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"`timeout` must be a positive number of seconds, got {timeout!r}")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError(
            "running on a Dask cluster needs the optional dask extra: "
            'pip install ".[dask]" from a checkout of vgg_np (or dask[distributed] and zarr)'
        ) from None
    if scheduler is not None:
        with _client(scheduler, timeout) as client:
            try:
                client.wait_for_workers(1, timeout=timeout)
            except TimeoutError:
                raise ClusterError(
                    f"Dask scheduler {scheduler}: no worker joined within {timeout:g} s; start "
                    f"some (dask worker {scheduler}) or wait longer (--cluster-timeout)"
                ) from None
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": ":0"},  # health routes: any free port
            env=BLAS_ENV,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def engine_options(workers: int | None = None, threads: int | None = None) -> dict:
    """Return the `load_model` options giving each task's engine `threads` threads.

    Without `threads`: for a local cluster of `workers` processes, each engine gets its
    share of this machine's CPUs (at least one thread); for a remote cluster (`workers`
    None) each engine uses the CPUs its worker process may use, as a local run does.

    Examples
    --------
    >>> engine_options(), engine_options(10**6), engine_options(2, threads=3)
    ({}, {'threads': 1}, {'threads': 3})
    """
    if threads is not None:
        return {"threads": threads}
    if workers is None:
        return {}
    return {"threads": max(1, len(os.sched_getaffinity(0)) // workers)}


def describe(client: Client) -> str:
    """One line about the cluster behind `client`: address, workers, threads, dashboard.

    Examples
    --------
    >>> with connect(workers=1) as client:  # doctest: +SKIP
    ...     describe(client)
    'Dask scheduler tcp://127.0.0.1:40123: 1 workers, 1 threads'
    """
    info = client.scheduler_info()
    workers = info.get("workers", {}).values()
    text = (
        f"Dask scheduler {info.get('address', '?')}: {len(workers)} workers, "
        f"{sum(w.get('nthreads', 0) for w in workers)} threads"
    )
    if not workers:
        text += " (tasks wait until workers join: dask worker ADDRESS)"
    link = client.dashboard_link if "dashboard" in info.get("services", {}) else None
    return text + (f", dashboard {link}" if link else "")


class _TaskProgress(Progress):
    """The extraction's bar followed by the tasks done: ``... ETA 00:00:47, 3/12 tasks``."""

    def __init__(self, total: int, tasks: int, *, enabled: bool = True):
        self.tasks, self.tasks_done = tasks, 0  # before the bar draws itself, at once
        super().__init__(total, enabled=enabled)

    def line(self, elapsed: float) -> str:
        """Return the bar's text with the task count (see `Progress.line`)."""
        return f"{super().line(elapsed)}, {self.tasks_done}/{self.tasks} tasks"


def extract_on_cluster(
    images: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    weights: str | os.PathLike,
    client: Client,
    *,
    options: dict | None = None,
    layer: str | None = None,
    top: int = 0,
    batch_size: int = 32,
    partition_size: int = DEFAULT_PARTITION_SIZE,
    decode_threads: int = 2,
    preprocess: str | None = None,
    resize: str | None = None,
    verbose: bool | int | str = "auto",
    on_skip: Callable[[str, str], None] | None = None,
    on_task: Callable[[dict], None] | None = None,
) -> ExtractResult:
    """`vgg_np.extract.extract`, with the pending partitions run as tasks on `client`.

    Plans (or reopens, to resume) the store in this process, submits one task per
    pending partition, and counts their status dicts as they finish. The store, its
    manifest and the summary are the local run's.

    Parameters
    ----------
    images, out, layer, top, batch_size, partition_size, preprocess, resize, verbose, on_skip
        As for `vgg_np.extract.extract`.
    weights : str or os.PathLike
        The weights file, at a path every worker can read: each worker thread loads it
        once (`load_model`).
    client : distributed.Client
        E.g. from `connect`.
    options : dict, optional
        Keyword arguments of `vgg_np.VGG.from_file`, the same for the plan here and for
        every worker (``{"threads": 1}`` for one engine thread per task).
    decode_threads : int, default 2
        Image decoding threads per task.
    on_task : callable, optional
        Called with each task's status dict: ``result`` (a `PartitionResult` as a dict),
        ``skipped`` (``(path, reason)`` pairs), ``host``, ``pid``, ``model_loads`` (how
        many times that worker process has loaded the weights), ``seconds`` and
        ``peak_rss`` (the worker process's peak resident memory, bytes).

    Returns
    -------
    ExtractResult

    Raises
    ------
    ClusterError
        If every worker a partition was given died (more than Dask's ``allowed-failures``,
        3 by default); the other tasks are cancelled, what was written stays, a rerun
        resumes.
    ValueError, OSError
        As `vgg_np.extract.extract`, raised on a worker and re-raised here.

    Examples
    --------
    >>> with connect(workers=2) as client:  # doctest: +SKIP
    ...     result = extract_on_cluster(["photos/"], "fc2.zarr", "vgg16.h5", client, layer="fc2")
    """
    from distributed import KilledWorker, as_completed

    start = time.perf_counter()
    weights, options = os.path.abspath(weights), dict(options or {})
    model = load_model(weights, options)  # here only to plan: row shape, digest
    store = create_store(
        out, images, model, layer=layer, top=top, partition_size=partition_size,
        preprocess=preprocess, resize=resize,
    )  # fmt: skip
    pending = store.pending()
    target = os.path.abspath(store.out)
    run = uuid.uuid4().hex[:8]  # fresh keys: a long-lived scheduler must not reuse old results
    futures = {}
    for partition in pending:
        args = (target, partition, weights, options, batch_size, decode_threads)
        futures[client.submit(_run_task, *args, key=f"vgg-np-{partition.name}-{run}")] = partition
    remaining = sum(p.stop - p.start for p in pending)
    enabled = show_progress(verbose, len(pending))
    results = []
    with interrupted_resumes(store), _TaskProgress(remaining, len(pending), enabled=enabled) as bar:
        try:
            for future in as_completed(futures):
                try:
                    status = future.result()
                except KilledWorker as error:
                    raise ClusterError(
                        f"{futures[future].name} of {store.out}: every worker it was given died "
                        f"({error}); what was written stays, a rerun resumes"
                    ) from None
                future.release()  # the scheduler forgets it: nothing to recompute if lost
                done = PartitionResult(**status["result"])
                results.append(done)
                bar.tasks_done += 1
                bar.update(done.written + done.already_done)
                for path, reason in status["skipped"]:
                    if on_skip is not None:
                        on_skip(path, reason)
                if on_task is not None:
                    on_task(status)
        except BaseException:
            client.cancel(list(futures))
            raise
    return ExtractResult.collect(store, results, time.perf_counter() - start)
