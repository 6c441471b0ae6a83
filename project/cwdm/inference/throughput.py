"""Keeping the accelerator busy across cases: background loading and writing, one worker per GPU.

The :class:`cwdm.Synthesizer` decides *what* happens to a case; this module decides *where and when*:

- :func:`prefetched`: batches are read and preprocessed on a background thread, at most
  ``depth`` batches ahead (a bounded queue), while the current batch samples.
- :class:`BackgroundWriter`: finished volumes are post-processed and written on a background thread;
  at most ``max_pending`` writes wait (submission blocks beyond that, which bounds memory).
- :class:`OrderedRecorder`: results reach the ``record`` callback in one deterministic order, the order
  of the sequential run, whichever thread produced them and whenever it finished.
- :func:`run_workers`: batches are shared out dynamically to one worker process per device (each loads
  its own models there); their results are merged back into the sequential order.

Isolation is unchanged: the work functions handed to these helpers record case errors themselves
(the synthesizer's isolation boundary); an exception that escapes them is a bug and is re-raised in the
calling thread. Outputs stay atomic because the writing itself is the synthesizer's.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import queue
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

log = logging.getLogger(__name__)

R = TypeVar("R")  # a result record
B = TypeVar("B")  # a batch description
P = TypeVar("P")  # a prepared batch


def default_prepare_workers() -> int:
    """One thread per core this process may use, at most three (the present sequences of a case)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(3, cores))


#: How long the parent waits on its event queue before checking that its workers are alive.
_POLL_S = 0.5


@dataclass(frozen=True)
class Throughput:
    """How cases flow through a run.

    Attributes:
        background_io: Load the next batch and write finished cases on background threads.
        devices: One worker process per device when there are two or more; otherwise the run stays
            in the calling process.
        prefetch_batches: Batches prepared ahead of the one sampling (bounded queue).
        max_pending_writes: Finished volumes that may wait for the writer before sampling pauses.
        prepare_workers: Threads that read and preprocess the three sequences of a case concurrently
            (1: one after the other); the default is one per core, at most three (a case has three
            present sequences).
    """

    background_io: bool = False
    devices: tuple[torch.device, ...] = ()
    prefetch_batches: int = 1
    max_pending_writes: int = 4
    prepare_workers: int = field(default_factory=lambda: default_prepare_workers())

    @property
    def sharded(self) -> bool:
        """Whether cases are shared out over worker processes."""
        return len(self.devices) > 1

    def describe(self) -> str:
        """For logs, e.g. ``one worker process per device (cuda:0, cuda:1)`` or ``sequential``."""
        if self.sharded:
            return f"one worker process per device ({', '.join(map(str, self.devices))})"
        return "read and written on background threads" if self.background_io else "sequential"

    @classmethod
    def for_devices(cls, devices: Sequence[torch.device], batch_size: int = 1) -> Throughput:
        """The default: background I/O when the work runs on a GPU, one worker per device if several.

        On a CPU the run stays sequential: the network already uses every core, and the threads would
        compete with it for little gain.
        """
        devices = tuple(devices)
        on_gpu = any(device.type == "cuda" for device in devices)
        return cls(
            background_io=on_gpu,
            devices=devices if len(devices) > 1 else (),
            max_pending_writes=max(4, 2 * batch_size),
        )


class OrderedRecorder(Generic[R]):
    """Passes results to ``record`` in the order they were added, waiting for pending ones.

    Items are results, or futures of lists of results (background work). :meth:`flush` hands over
    every item at the head whose value is known; a pending future holds back everything behind it.
    Only the thread that owns the recorder calls its methods.
    """

    def __init__(self, record: Callable[[R], None]) -> None:
        self._record = record
        self._items: deque[R | Future[list[R]]] = deque()

    def add(self, result: R) -> None:
        self._items.append(result)
        self.flush()

    def extend(self, results: Iterable[R]) -> None:
        self._items.extend(results)
        self.flush()

    def add_future(self, future: Future[list[R]]) -> None:
        self._items.append(future)
        self.flush()

    def flush(self, wait: bool = False) -> None:
        """Record the ready items at the head; with ``wait``, wait for every pending one.

        A cancelled future (work dropped when a run is stopped) holds back itself and everything
        behind it, for good.
        """
        while self._items:
            head = self._items[0]
            if isinstance(head, Future):
                if head.cancelled() or (not wait and not head.done()):
                    return
                results = head.result()  # the work function isolates case errors; anything else is a bug
                self._items.popleft()
                for result in results:
                    self._record(result)
            else:
                self._items.popleft()
                self._record(head)

    def __len__(self) -> int:
        return len(self._items)


_DONE = object()


def prefetched(
    batches: Iterable[B], prepare: Callable[[B], P], depth: int = 1, background: bool = True
) -> Iterator[tuple[B, P]]:
    """Yield ``(batch, prepare(batch))`` in order, preparing up to ``depth`` batches ahead on a thread.

    Without ``background`` it prepares each batch when asked (the sequential run). An exception raised
    by ``prepare`` (or by iterating ``batches``) is re-raised here; closing the generator early stops
    the thread after the batch it is preparing.

    Args:
        batches: The batches, consumed lazily (on the background thread).
        prepare: Reads and preprocesses a batch; it records per-case errors itself.
        depth: Prepared batches that may wait (the queue bound), at least 1.
        background: Use the background thread.
    """
    if not background:
        for batch in batches:
            yield batch, prepare(batch)
        return
    ready: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for batch in batches:
                if stop.is_set() or not put((batch, prepare(batch))):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer thread, which re-raises it
            put(_Raised(exc))

    thread = threading.Thread(target=work, name="cwdm-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()


@dataclass(frozen=True)
class _Raised:
    exc: BaseException


class BackgroundWriter:
    """Runs write jobs on one background thread; at most ``max_pending`` wait at a time.

    Use as a context manager. On exit every submitted job finishes, also when the block raises (a
    stopped run): each job writes a volume whose sampling is already paid for, and its output is
    atomic should the process be killed meanwhile. Without ``background`` each job runs at once in
    the calling thread.
    """

    def __init__(self, max_pending: int = 4, background: bool = True) -> None:
        self.background = background
        self._slots = threading.BoundedSemaphore(max(1, max_pending))
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> BackgroundWriter:
        if self.background:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cwdm-writer")
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def submit(self, job: Callable[..., R], *args: Any) -> Future[R]:
        """Schedule ``job(*args)``; blocks while ``max_pending`` jobs are waiting or running."""
        if self._pool is None:
            future: Future[R] = Future()
            try:
                future.set_result(job(*args))
            except Exception as exc:  # surfaces through the future, as on the thread
                future.set_exception(exc)
            return future
        self._slots.acquire()
        try:
            future = self._pool.submit(job, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future


# -- worker processes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerEvents:
    """Callbacks a worker's run reports through (they send events to the parent process)."""

    record: Callable[[Any], None]
    on_step: Callable[[tuple[str, ...], int, int], None]


#: Runs in a worker: ``work(device, batches, events)`` processes the batches on ``device``.
WorkerFn = Callable[[torch.device, Iterable[Any], WorkerEvents], None]


def run_workers(
    work: WorkerFn,
    batches: Sequence[Any],
    devices: Sequence[torch.device],
    *,
    record: Callable[[R], None],
    order: Sequence[str],
    key: Callable[[R], str],
    lost: Callable[[str, str], R],
    on_step: Callable[[tuple[str, ...], int, int], None] | None = None,
) -> None:
    """Process ``batches`` with one worker process per device; record results in ``order``.

    Each worker takes the next batch from a shared queue when it is ready for one, so faster workers
    take more. Results are handed to ``record`` in the order of ``order`` (the sequential run's),
    log records of the workers are re-emitted here, and step progress is forwarded to ``on_step``.
    A case whose worker ended without reporting it (a crashed or killed process) is recorded as
    ``lost(case id, reason)``.

    Args:
        work: A picklable function, run in each worker (spawned, so CUDA is initialised there afresh).
        batches: Picklable batch descriptions.
        devices: One worker per device.
        record: Receives every result, in ``order``.
        order: The ids of every case the batches hold, in reporting order.
        key: The case id of a result.
        lost: Builds the result of a case that no worker reported.
        on_step: Receives ``(case ids, done, total)`` from the workers' sampling loops.
    """
    context = multiprocessing.get_context("spawn")
    tasks = context.Queue()
    events = context.Queue()
    for batch in batches:
        tasks.put(batch)
    for _ in devices:
        tasks.put(None)
    level = logging.getLogger("cwdm").getEffectiveLevel()
    processes = [
        context.Process(
            target=_worker_main,
            args=(work, index, device, tasks, events, level),
            name=f"cwdm-worker-{device}",
            daemon=True,
        )
        for index, device in enumerate(devices)
    ]
    names = ", ".join(map(str, devices))
    log.info("sharing %d batches over %d workers: %s", len(batches), len(devices), names)
    emitter = _OrderedById(order, record)
    crashes: dict[int, str] = {}
    try:
        for process in processes:
            process.start()
        running = set(range(len(processes)))
        while running:
            try:
                event = events.get(timeout=_POLL_S)
            except queue.Empty:
                for index in list(running):
                    if not processes[index].is_alive():  # died without saying goodbye
                        running.discard(index)
                        code = processes[index].exitcode
                        crashes.setdefault(index, f"worker on {devices[index]} exited with code {code}")
                continue
            kind = event[0]
            if kind == "record":
                emitter.add(key(event[1]), event[1])
            elif kind == "step" and on_step is not None:
                on_step(*event[1:])
            elif kind == "log":
                record_ = event[1]
                logging.getLogger(record_.name).handle(record_)
            elif kind == "crash":
                crashes[event[1]] = event[2]
            elif kind == "exit":
                running.discard(event[1])
    finally:
        for process in processes:
            process.join(timeout=5 * _POLL_S)
            if process.is_alive():
                process.terminate()
                process.join()
    reason = "; ".join(crashes.values()) or "no worker reported it"
    for case_id in emitter.missing():
        emitter.add(case_id, lost(case_id, f"its worker process ended without finishing it ({reason})"))


class _OrderedById(Generic[R]):
    """Hands results to ``record`` in a fixed order of ids, holding back those that arrive early."""

    def __init__(self, order: Sequence[str], record: Callable[[R], None]) -> None:
        self._order = list(order)
        self._record = record
        self._next = 0
        self._held: dict[str, R] = {}

    def add(self, case_id: str, result: R) -> None:
        self._held[case_id] = result
        while self._next < len(self._order) and self._order[self._next] in self._held:
            self._record(self._held.pop(self._order[self._next]))
            self._next += 1

    def missing(self) -> list[str]:
        return [case_id for case_id in self._order[self._next :] if case_id not in self._held]


def _worker_main(
    work: WorkerFn,
    index: int,
    device: torch.device,
    tasks: Any,
    events: Any,
    level: int,
) -> None:
    """Body of a worker process: forward logging, run ``work`` on the shared task queue, report."""
    root = logging.getLogger()
    root.handlers[:] = [_EventLogHandler(events)]
    root.setLevel(level)
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        reporting = WorkerEvents(
            record=lambda result: events.put(("record", result)),
            on_step=lambda ids, done, total: events.put(("step", ids, done, total)),
        )
        work(device, iter(tasks.get, None), reporting)
    except BaseException:  # reported to the parent, which fails this worker's unfinished cases
        events.put(("crash", index, f"worker on {device} failed: {traceback.format_exc(limit=8)}"))
    finally:
        events.put(("exit", index))


class _EventLogHandler(logging.handlers.QueueHandler):
    """Sends log records to the parent as ``("log", record)`` events."""

    def enqueue(self, record: logging.LogRecord) -> None:
        self.queue.put(("log", record))
