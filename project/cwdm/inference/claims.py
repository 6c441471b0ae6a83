"""Claims: a case is claimed before it is sampled, so that several processes on one output folder
(parts of a split run that overlap, a rerun started while the first still runs, two nodes on one NFS
folder) never do the same case twice.

A claim is a hidden file ``.cwdm-<output name>.lock`` beside the output (never ending in ``.nii.gz``,
so neither the evaluator nor a rerun takes it for an output; an output name too long for that to fit in
a file name is shortened there, :func:`cwdm.atomic.helper_stem`), created with ``O_CREAT | O_EXCL``: of
two processes exactly one creates it (also on NFS v3 and later). It holds the output's name and who
claimed the case: host name, boot id, process id and that process's start time, a random token and the
time. The holder removes it
once the case is written or has failed, and touches it every :attr:`ClaimSet.heartbeat_s` seconds while
it works (a heartbeat, in the file's modification time).

A claim is stale, and is taken over, when its holder is dead:
- on the same host (same host name and boot id): the process id is gone, or now belongs to a process
  with another start time (the id was reused);
- on another host, or where the process cannot be checked (another boot, another container sharing the
  folder): its heartbeat is older than :attr:`ClaimSet.stale_after_s`.
Taking over renames the stale file away (one rename wins) and checks that the file renamed is the one
judged stale, so that a claim another process has just made is put back, not stolen.

Corruption is ruled out by the atomic writes (:mod:`cwdm.atomic`) whatever the claims do; claims rule
out the duplicated work and say which process wrote what.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import PARTIAL_PREFIX, PARTIAL_SUFFIX, helper_stem

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
#: Default heartbeat interval and the age after which a claim whose holder cannot be checked is stale.
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


def lock_path(output: Path) -> Path:
    """The claim file of ``output``: ``.cwdm-<name>.lock`` in the same folder (the name shortened by
    :func:`cwdm.atomic.helper_stem` when it is too long for that)."""
    output = Path(output)
    return output.with_name(f"{PARTIAL_PREFIX}{helper_stem(output.name)}{LOCK_SUFFIX}")


#: The most bytes of a claim file that are read (a claim takes about 200).
_CLAIM_BYTES = 4096


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat); "" if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


@dataclass(frozen=True)
class Holder:
    """Who holds a claim (as written in its file)."""

    host: str
    pid: int
    boot_id: str = ""
    process_start: str = ""
    token: str = ""
    claimed_at: str = ""

    @classmethod
    def this_process(cls) -> Holder:
        pid = os.getpid()
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return cls(socket.gethostname(), pid, _boot_id(), _process_start(pid), secrets.token_hex(8), now)

    @property
    def label(self) -> str:
        """``host:pid``, how reports name a process."""
        return f"{self.host}:{self.pid}"

    def to_record(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "boot_id": self.boot_id,
            "process_start": self.process_start,
            "token": self.token,
            "claimed_at": self.claimed_at,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Holder:
        return cls(
            str(record["host"]),
            int(record["pid"]),
            str(record.get("boot_id", "")),
            str(record.get("process_start", "")),
            str(record.get("token", "")),
            str(record.get("claimed_at", "")),
        )


@dataclass(frozen=True)
class Claimed:
    """The outcome of :meth:`ClaimSet.claim` when another live process holds the case."""

    holder: Holder | None
    detail: str


class ClaimSet:
    """The claims of one process on one output folder; a heartbeat thread keeps them fresh.

    Use as a context manager: leaving it releases every claim still held and stops the heartbeat.

    Args:
        heartbeat_s: How often held claim files are touched.
        stale_after_s: Age of the last heartbeat after which a claim that cannot be checked by its
            process id is stale; keep it many heartbeats long (a busy NFS server delays them).
    """

    def __init__(self, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S) -> None:
        self.me = Holder.this_process()
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self._held: dict[Path, Path] = {}  # output -> its claim file
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Claims taken over from dead processes: (output, the dead holder).
        self.taken_over: list[tuple[Path, Holder | None]] = []

    def __enter__(self) -> ClaimSet:
        self._thread = threading.Thread(target=self._beat, name="cwdm-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.release_all()

    # -- claiming ---------------------------------------------------------------------------
    def claim(self, output: Path) -> Claimed | None:
        """Claim ``output``; ``None`` when this process now holds it, else who does.

        A stale claim (see the module) is taken over. Raises ``OSError`` only for a folder that refuses
        new files (the run's write probe comes first).
        """
        output = Path(output)
        path = lock_path(output)
        with self._lock:
            if output in self._held:
                return None
        for _ in range(3):  # a claim released or taken over meanwhile: try again
            if self._create(path, output.name):
                with self._lock:
                    self._held[output] = path
                return None
            holder, age_s = self._read(path)
            if holder is None and age_s is None:
                continue  # gone since
            stale = self._stale_reason(holder, age_s)
            if stale is None:
                name = holder.label if holder else "an unreadable claim"
                return Claimed(holder, f"claimed by {name} since {holder.claimed_at if holder else '?'}")
            if self._take_over(path, holder):
                log.warning("%s: took over the claim of %s (%s)", output.name, _name(holder), stale)
                self.taken_over.append((output, holder))
        holder, _ = self._read(path)
        return Claimed(holder, f"claimed by {_name(holder)} (contended)")

    def release(self, output: Path) -> None:
        """Remove this process's claim of ``output`` (nothing if it holds none)."""
        with self._lock:
            path = self._held.pop(Path(output), None)
        if path is not None:
            holder, _ = self._read(path)
            if holder is not None and holder.token == self.me.token:
                path.unlink(missing_ok=True)

    def release_all(self) -> None:
        with self._lock:
            outputs = list(self._held)
        for output in outputs:
            self.release(output)

    @property
    def held(self) -> list[Path]:
        with self._lock:
            return list(self._held)

    def live_claims(self, folder: Path) -> Iterator[Path]:
        """The outputs of ``folder`` that a live process (this one included) has claimed."""
        for path in Path(folder).glob(f"{PARTIAL_PREFIX}*{LOCK_SUFFIX}"):
            holder, age_s = self._read(path)
            if (holder is not None or age_s is not None) and self._stale_reason(holder, age_s) is None:
                output = path.with_name(path.name[len(PARTIAL_PREFIX) : -len(LOCK_SUFFIX)])
                named = _output_name(path)  # the full name, where the claim file's is shortened
                if named is not None and lock_path(path.with_name(named)) == path:
                    output = path.with_name(named)
                yield output

    # -- the parts ------------------------------------------------------------------------------
    def _create(self, path: Path, output_name: str) -> bool:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:  # not synced: an empty claim is judged by its age
            json.dump({**self.me.to_record(), "output": output_name}, handle)
        return True

    @staticmethod
    def _read(path: Path) -> tuple[Holder | None, float | None]:
        """The holder in a claim file and its heartbeat age; ``(None, None)`` when there is no file,
        ``(None, age)`` when it cannot be parsed (being written, or damaged)."""
        try:
            age_s = time.time() - path.stat().st_mtime
            text = _read_claim(path)
        except FileNotFoundError:
            return None, None
        except OSError:
            return None, 0.0
        try:
            return Holder.from_record(json.loads(text)), age_s
        except (ValueError, KeyError, TypeError, RecursionError):  # damaged, or not written by cwdm
            return None, age_s

    def _stale_reason(self, holder: Holder | None, age_s: float | None) -> str | None:
        """Why a claim is stale, or ``None`` when its holder may be alive."""
        if holder is not None and holder.host == self.me.host and holder.boot_id == self.me.boot_id:
            start = _process_start(holder.pid)
            if not start and not _alive(holder.pid):
                return f"process {holder.pid} on this host has ended"
            if start and holder.process_start and start != holder.process_start:
                return f"process id {holder.pid} now belongs to another process"
            if start or _alive(holder.pid):
                return None
        if age_s is not None and age_s > self.stale_after_s:
            return f"no heartbeat for {age_s:.0f} s (more than {self.stale_after_s:.0f} s)"
        return None

    def _take_over(self, path: Path, judged: Holder | None) -> bool:
        """Rename the stale claim away; put it back if what was renamed is not the claim judged stale."""
        tomb = path.with_name(f"{path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
        try:
            os.rename(path, tomb)
        except FileNotFoundError:
            return False
        moved, _ = self._read(tomb)
        if judged is not None and (moved is None or moved.token != judged.token):
            with contextlib.suppress(OSError):  # a fresh claim: restore it unless another exists now
                os.link(tomb, path)
            tomb.unlink(missing_ok=True)
            return False
        tomb.unlink(missing_ok=True)
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                paths = list(self._held.values())
            for path in paths:
                try:
                    os.utime(path)
                except OSError as exc:
                    log.warning("cannot refresh the claim %s (%s)", path, exc)


def _read_claim(path: Path) -> str:
    """A claim file's text: at most :data:`_CLAIM_BYTES` of it (a larger file is no claim of ours)."""
    with open(path, "rb") as handle:
        return handle.read(_CLAIM_BYTES).decode("utf-8", "replace")


def _output_name(path: Path) -> str | None:
    """The output name a claim file records, or None (unreadable, or written before names were kept)."""
    try:
        record = json.loads(_read_claim(path))
    except (OSError, ValueError, RecursionError):
        return None
    name = record.get("output") if isinstance(record, dict) else None
    return name if isinstance(name, str) and name and "/" not in name else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _name(holder: Holder | None) -> str:
    return holder.label if holder is not None else "an unreadable claim"
