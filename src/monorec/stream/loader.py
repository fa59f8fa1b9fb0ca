"""A loader: one consumer group of the change log feeding one sink (a version's index, the catalogue).

Each step reads a batch after the group's cursor, validates every change (a bad one goes to the dead
letters with its reason and the loader goes on), applies the good ones to the sink in log order, and
every ``checkpoint_s`` makes the sink durable and only then commits the offset. A crash between applying
and committing replays those changes, which is harmless (revisions). A :class:`StagedSink` (a version)
checkpoints in two steps: the capture on the loader's thread, the write on another while the loader goes
on applying, the commit once the write is done. When the broker is unreachable the
loader retries with exponential backoff and then catches up; nothing is skipped.

No record can stop a loader: when the sink refuses a batch, its changes are applied one at a time and the
one the sink cannot apply (whatever the reason) goes to the dead letters too. A failure that is not about
one record (the sink cannot checkpoint, the disk is full) is retried with backoff and reported by
:attr:`Loader.error` / :attr:`Loader.healthy`, which readiness, metrics and stream status show.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from monorec.errors import ChangeError
from monorec.stream.changes import AnyChange, parse_change
from monorec.stream.log import ChangeLog, LogEntry, StreamUnavailable, offset_key

__all__ = ["Loader", "Sink", "StagedSink"]

log = logging.getLogger(__name__)


class Sink(Protocol):
    def apply(self, changes: Sequence[AnyChange]) -> int:
        """Applies validated changes in order (idempotently); returns how many changed something."""
        ...

    def checkpoint(self, offset: str) -> None:
        """Makes everything applied so far durable, recorded as reflecting the log up to ``offset``."""
        ...


class StagedSink(Sink, Protocol):
    """A sink whose checkpoint comes in two steps, so that its loader need not stop applying for the slow one."""

    def start_checkpoint(self, offset: str) -> Callable[[], None] | None:
        """Captures everything applied so far (the loader applies nothing meanwhile) and returns the function
        that makes the capture durable, recorded as reflecting the log up to ``offset``; the loader runs it
        on another thread while it goes on applying. None: nothing to write."""
        ...


# a checkpoint's write (serialising, hashing, writing ~60 MB at 100k entities) yields the cores to the
# request threads of the same process: the write can wait, a request's deadline cannot
_WRITE_NICENESS = 10


class _Write:
    """A checkpoint being written on its own thread: the offset to commit once it is done, how many log
    entries that commits, and how it ended."""

    def __init__(self, group: str, offset: str, entries: int, finish: Callable[[], None]) -> None:
        self.offset, self.entries = offset, entries
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(finish,), name=f"checkpoint-{group}", daemon=True)
        self.thread.start()

    def _run(self, finish: Callable[[], None]) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux sets a thread's niceness by its id
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _WRITE_NICENESS)
        try:
            finish()
        except BaseException as exc:  # the loader's thread reports it (a failed step) and checkpoints again
            self.error = exc
        finally:
            self.done.set()


# failures of where a sink writes, not of the change it writes: retried, never dead-lettered
ENVIRONMENT_ERRORS: tuple[type[BaseException], ...] = (
    StreamUnavailable,
    OSError,
    MemoryError,
    sqlite3.OperationalError,
)

DeadLetterWriter = Callable[[str, str, str, str], None]  # (consumer, offset, payload, reason)


class Loader:
    def __init__(
        self,
        log: ChangeLog,
        group: str,
        sink: Sink,
        *,
        entity_types: Sequence[str],
        dead_letter: DeadLetterWriter,
        batch: int = 512,
        checkpoint_s: float = 1.0,
        max_backoff_s: float = 5.0,
        start_offset: str = "0",
        linger_s: float = 0.0,
    ) -> None:
        self.log, self.group, self.sink = log, group, sink
        # after a batch smaller than ``batch``, the thread starts its next read no sooner than this after the
        # last one began: under a steady stream the batches grow and their fixed costs are paid less often
        # (a version's apply has ~10 ms of them: featurizing, the item tower, the index); a change that
        # arrives after a quiet spell is read at once (see run)
        self.linger_s = linger_s
        self.entity_types = tuple(entity_types)
        self.dead_letter = dead_letter
        self.batch, self.checkpoint_s, self.max_backoff_s = batch, checkpoint_s, max_backoff_s
        self.start_offset = start_offset  # where the group began: what a checkpoint records before any entry
        self.applied_offset: str | None = None  # last offset applied (in memory, maybe not yet committed)
        self.uncommitted = 0  # entries applied since the last commit
        self.applied_total = 0
        self.rejected_total = 0
        self.unavailable_since: float | None = None
        self.error: str | None = None  # why the last step failed (None once a step succeeds again)
        self.failed_steps = 0  # steps that failed (not the broker being away), since the start
        self._last_checkpoint = time.monotonic()
        self._write: _Write | None = None  # the checkpoint being written in the background, if any
        self._durable_at = time.monotonic()  # when the offset last committed (the group starts committed)
        self._held: list[LogEntry] = []  # read past an ``until`` bound: applied by the next step
        self._stop = threading.Event()
        self._step_lock = threading.RLock()  # the thread and a caller's catch_up may both step
        self._thread: threading.Thread | None = None

    # --------------------------------------------------------------------------------------- steps

    def _next_entries(self, block_s: float, until: str | None) -> list[LogEntry]:
        if self._held:
            entries, self._held = self._held, []
        else:
            entries = self.log.read(self.group, self.batch, block_s)
        if until is not None:
            bound = offset_key(until)
            cut = next((i for i, e in enumerate(entries) if offset_key(e.offset) > bound), len(entries))
            entries, self._held = entries[:cut], entries[cut:]
        return entries

    def step(self, block_s: float = 0.0, until: str | None = None) -> int:
        """Reads and applies one batch (nothing past ``until``); returns how many entries it consumed.

        Raises:
            StreamUnavailable: the broker cannot be reached. Anything else the sink raises at a checkpoint.
        """
        with self._step_lock:
            error = self._settle_write(wait=False)
            if error is not None:
                raise error
            entries = self._next_entries(block_s, until)
            if entries:
                good: list[tuple[LogEntry, AnyChange]] = []
                for entry in entries:
                    try:
                        good.append((entry, parse_change(entry.payload, self.entity_types)))
                    except ChangeError as exc:
                        self._reject(entry, str(exc))
                self.applied_total += self._apply(good)
                self.applied_offset = entries[-1].offset
                self.uncommitted += len(entries)
            if self.uncommitted and time.monotonic() - self._last_checkpoint >= self.checkpoint_s:
                self._start_checkpoint()
            return len(entries)

    def _reject(self, entry: LogEntry, reason: str) -> None:
        self.dead_letter(self.group, entry.offset, entry.payload, reason)
        self.rejected_total += 1

    def _apply(self, good: Sequence[tuple[LogEntry, AnyChange]]) -> int:
        """Applies the batch; when the sink refuses it, one change at a time, dead-lettering each one it
        cannot apply (applying again what went through before the failure is harmless: revisions). A
        failure of the sink's environment (disk, database locked, memory, broker) is not the record's
        fault: it propagates, so the step is retried and nothing is dead-lettered for it."""
        try:
            return self.sink.apply([c for _, c in good])
        except ENVIRONMENT_ERRORS:
            raise
        except Exception:  # a record of the batch: find it below
            pass
        applied = 0
        for entry, change in good:
            try:
                applied += self.sink.apply([change])
            except ENVIRONMENT_ERRORS:
                raise
            except Exception as exc:  # no record may stop the loader
                log.warning("loader %s: change at %s cannot be applied: %r", self.group, entry.offset, exc)
                self._reject(entry, f"cannot be applied: {type(exc).__name__}: {exc}")
        return applied

    def checkpoint(self, *, force: bool = False) -> None:
        """Sink durable first, then the offset committed (never the other way round), before it returns (a
        checkpoint being written in the background is waited for first). ``force`` checkpoints the sink
        even when no log entry arrived since the last one (its own state moved, e.g. a bulk load)."""
        with self._step_lock:
            error = self._settle_write(wait=True)
            if error is not None:
                raise error
            if self.applied_offset is not None and self.uncommitted:
                self.sink.checkpoint(self.applied_offset)
                self._commit(self.applied_offset, self.uncommitted)
            elif force:
                self.sink.checkpoint(self.applied_offset or self.start_offset)
                self._durable_at = time.monotonic()
            self._last_checkpoint = time.monotonic()

    def _commit(self, offset: str, entries: int) -> None:
        """Records the log up to ``offset`` as durable in the sink: ``entries`` of those applied since the
        last commit need no replay any more."""
        self.log.commit(self.group, offset)
        self.uncommitted = max(0, self.uncommitted - entries)
        self._durable_at = time.monotonic()

    def _start_checkpoint(self) -> None:
        """The periodic checkpoint of a step. With a :class:`StagedSink`, only the capture runs here: the
        write runs on another thread and the offset commits at the first step after it is done (every call
        on the log stays on this thread), so the changes that arrive meanwhile are applied at once, not
        held back for the whole write (~0.5 s at 100k entities, seconds at 1M). One write at a time: while
        one is in flight the next checkpoint waits for a later step."""
        start = getattr(self.sink, "start_checkpoint", None)
        if start is None or self.applied_offset is None:
            self.checkpoint()
            return
        if self._write is not None:
            return
        finish = start(self.applied_offset)
        self._last_checkpoint = time.monotonic()
        if finish is None:  # nothing changed since the last checkpoint
            self._commit(self.applied_offset, self.uncommitted)
            return
        self._write = _Write(self.group, self.applied_offset, self.uncommitted, finish)

    def _settle_write(self, *, wait: bool) -> BaseException | None:
        """Commits the offset of the checkpoint written in the background once it is done (waiting for it
        with ``wait``); returns its error when it failed (nothing committed: the stores stay as durable as
        the last commit, and the entries since wait for the next checkpoint)."""
        write = self._write
        if write is None or not (wait or write.done.is_set()):
            return None
        write.done.wait()
        self._write = None
        if write.error is not None:
            return write.error
        self._commit(write.offset, write.entries)
        return None

    def catch_up(self, target: str | None = None, timeout_s: float = 600.0) -> None:
        """Applies everything up to ``target`` (default: the log's head now), then checkpoints."""
        target = self.log.head() if target is None else target
        deadline = time.monotonic() + timeout_s
        while self.applied_offset is None or offset_key(self.applied_offset) < offset_key(target):
            if self.step(block_s=0.01, until=target) == 0:
                break  # nothing up to the target is left for this group (it may have started past it)
            if time.monotonic() > deadline:
                raise TimeoutError(f"loader {self.group} did not reach offset {target} in {timeout_s}s")
        self.checkpoint()

    def rewind(self) -> None:
        """Forgets what was read but not committed: the next step reads it again (after a broker outage)."""
        with self._step_lock:
            self._settle_write(wait=True)  # its error was reported by the step that met it, or is moot now
            self.log.rewind(self.group)
            self._held = []
            self.applied_offset, self.uncommitted = None, 0

    def lag(self) -> int:
        """Log entries not yet applied by this loader."""
        return max(0, self.log.lag(self.group) - self.uncommitted)

    # ------------------------------------------------------------------------------------- thread

    def run(self) -> None:
        """Steps until stopped; an unreachable broker or a failing sink means backoff and retry (from the
        last commit), never a skipped change and never a dead thread."""
        backoff = 0.05
        while not self._stop.is_set():
            try:
                started = time.monotonic()
                consumed = self.step(block_s=0.05)
                if 0 < consumed < self.batch and self.linger_s > 0:
                    self._stop.wait(max(0.0, started + self.linger_s - time.monotonic()))
                backoff = 0.05
                self.unavailable_since = None
                self.error = None
                continue
            except StreamUnavailable as exc:
                if self.unavailable_since is None:
                    self.unavailable_since = time.monotonic()
                    log.warning("loader %s: %s; retrying with backoff", self.group, exc)
            except Exception as exc:  # reported and retried: the thread must not die
                if self.error is None:
                    log.exception("loader %s failed; retrying with backoff", self.group)
                self.error = f"{type(exc).__name__}: {exc}"
                self.failed_steps += 1
            self._stop.wait(backoff)
            backoff = min(self.max_backoff_s, backoff * 2)
            with contextlib.suppress(StreamUnavailable):
                self.rewind()
        with contextlib.suppress(StreamUnavailable):  # the next start replays from the last commit
            self.checkpoint()

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def healthy(self) -> bool:
        """Applying changes: not failing, and its thread (when started) alive. A broker away is not a failure
        of the loader (it catches up when the broker is back; serving goes on from the indexes)."""
        thread_dead = self._thread is not None and not self._thread.is_alive()
        return self.error is None and not thread_dead

    def health(self) -> dict[str, object]:
        """What stream status and metrics show of this loader."""
        since = self.unavailable_since
        return {
            "running": self.running,
            "healthy": self.healthy,
            "error": self.error,
            "broker_unreachable_s": None if since is None else round(time.monotonic() - since, 1),
            "applied": self.applied_total,
            "rejected": self.rejected_total,
            "failed_steps": self.failed_steps,
            # seconds since the offset last committed: grows past checkpoint_s when checkpoints fail (a full
            # disk), which is what a restart would replay; and whether one is being written now
            "checkpoint_age_s": round(time.monotonic() - self._durable_at, 1),
            "checkpoint_writing": self._write is not None,
        }

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name=f"loader-{self.group}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the thread (which checkpoints last) and waits for a checkpoint still being written: whoever
        stops a loader may free or delete what it writes into next."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        write = self._write
        if write is not None:  # a loader stepped by its caller (a bulk load) that was never started
            write.done.wait(timeout=30)
