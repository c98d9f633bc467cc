# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The label pass's worker processes: clip readers that decode into one shared slab, and the shard writer.
Entry points: `ClipReaders` (submit a ClipRef, get a decoded clip) and `LabelWriters` (hand over a finished
clip's output row, get written shards).

Readers, stage by stage: the main process `submit`s a ClipRef -> when a slab slot is free the task goes to
the reader process with the fewest tasks in hand (each reader has its own queue, so the main process
always knows which shard a reader holds) -> the reader preads the clip's members (`clips.read_raw`),
decodes them (`clips.decode_clip`, so any codec of `shards` works) and copies both cameras into the
slot -> it answers on the one result queue with the small arrays (desire, car, traffic, meta) and its
read/decode seconds -> the main process copies the slot to the device and `release`s it (on CUDA once
the copy's event has passed; the slab is page-locked there, so that copy is asynchronous).

Messages: one NamedTuple per kind (ReadClip, ReaderMapped, ClipDecoded, ClipFailed for the readers; OpenShard,
WriteClip, WriterMapped, RowFree, ShardWritten, WriteFailed for the writers), dispatched on their type; a message
of any other type is an error.

Invariants: a slot belongs to one clip from dispatch to release. Tasks wait in the main process for a
slot; if the runner waits for a clip that has none while every slot holds a decoded clip it is not
waiting for, the oldest of those is spilled to private memory, so any number of slots >= 1 is free of
deadlock. A reader that dies is a LabelError naming the shard it held. Readers ignore SIGINT (the main
process stops them), die with their parent (PR_SET_PDEATHSIG, and a parent check every second), and
`close` joins them, terminating or killing any that do not exit within a few seconds. The slab's file
is unlinked as soon as every reader has mapped it, so even a killed pass leaves nothing in /dev/shm.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import mmap
import multiprocessing as mp
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from spark_distill.data import arrays, shards
from spark_distill.data.clips import LABEL_PASS_STEMS, decode_clip, read_raw
from spark_distill.data.index import Arena, ClipRef, ShardIndex
from spark_distill.errors import DatasetError, LabelError
from spark_distill.processes import child_init

log = logging.getLogger(__name__)
FRAME = (6, 128, 256)  # one camera frame as the vision model takes it (YUV420 packed in 6 planes)
_INDEX_COST = 2  # a shard's tar index costs a reader about as much as decoding two clips (14 ms, 375 MB shard)
_OPEN_SHARDS = 8  # shard files a reader keeps open (the indexes of all stay)
_SHM = Path("/dev/shm")  # where slabs live when it has room (tmpfs)


# Messages between the main process and its workers (a task queue per worker, one result queue): one type per kind,
# dispatched on the type; a message of any other type is an error. None on a task queue stops the worker.
class ReadClip(NamedTuple):
    """Main -> reader: decode clip `key` of shard `shard` into the slab's slot `slot`; `number` names the task."""

    number: int
    shard: int
    key: str
    slot: int


class ReaderMapped(NamedTuple):
    """Reader -> main: this reader has mapped the slab (the main process unlinks its file once all have);
    `at`: the reader's time.monotonic() then."""

    at: float


class ClipDecoded(NamedTuple):
    """Reader -> main: task `number` is in its slot; `clip`: its small arrays (desire, car, traffic, meta) and its
    frame count ("frames"); seconds spent reading and decoding it."""

    number: int
    clip: dict[str, Any]
    read_s: float
    decode_s: float


class ClipFailed(NamedTuple):
    """Reader -> main: task `number` failed; `bad_data`: a DatasetError (the message names the shard), else any other
    exception (the main process names the shard and key)."""

    number: int
    bad_data: bool
    message: str


class OpenShard(NamedTuple):
    """Main -> writer: the clips of label shard `shard` (written as `folder`/`name`, its clips `keys` in that order)
    follow."""

    shard: int
    folder: str
    name: str
    keys: list[str]


class WriteClip(NamedTuple):
    """Main -> writer: clip `key` of shard `shard` is in the output slab's row `row` (its first `frames` frames)."""

    shard: int
    key: str
    row: int
    frames: int


class WriterMapped(NamedTuple):
    """Writer -> main: this writer has mapped the slab."""


class RowFree(NamedTuple):
    """Writer -> main: the output slab's row `row` is read (compressed): it may take another clip."""

    row: int


class ShardWritten(NamedTuple):
    """Writer -> main: label shard `shard` is on disk; `info`: its ShardInfo JSON; `seconds` the writer spent on it."""

    shard: int
    info: dict[str, Any]
    seconds: float


class WriteFailed(NamedTuple):
    """Writer -> main: writing shard `shard` failed (None: a task the writer could not read)."""

    shard: int | None
    message: str


def _tasks(tasks: Any, parent: int) -> Iterator[Any]:
    """A worker process's tasks in order, until the None that stops it or until its parent is gone."""
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if task is None:
            return
        yield task


def _populate(slab: np.memmap) -> None:
    """Fault in every page of the mapping at once (MADV_POPULATE_WRITE, Linux 5.14+): decoding into a slot this
    process had not touched cost ~3 ms of page faults per 7.9 MB clip, against 1.2 ms for the decoding itself.
    Where the kernel lacks it, pages fault in as they are first touched (slower, same result)."""
    for advice in (getattr(mmap, "MADV_POPULATE_WRITE", 23), getattr(mmap, "MADV_POPULATE_READ", 22)):
        try:
            slab._mmap.madvise(advice)  # numpy keeps the mmap object there
            return
        except (OSError, AttributeError, ValueError):
            continue


def _reader(slab_path: str, shape: tuple[int, ...], shard_paths: list[str], tasks: Any, results: Any,
            parent: int) -> None:
    """A reader process: ReadClip tasks in, ClipDecoded or ClipFailed out (ReaderMapped first)."""
    child_init(parent)
    slab = np.memmap(slab_path, np.uint8, "r+", shape=shape)
    if Path(slab_path).parent == _SHM:  # a tmpfs slab (else a file on disk: its pages stay the kernel's to fault)
        _populate(slab)
    # the main process unlinks the slab's file once all have it; the time says when this reader was ready
    results.put(ReaderMapped(time.monotonic()))
    indexes: dict[int, ShardIndex] = {}  # every shard's member offsets, parsed once (a tar header walk)
    open_files: collections.OrderedDict[int, None] = collections.OrderedDict()  # shards whose file is open, LRU
    arena = Arena()  # reused from clip to clip: reads without page faults
    for task in _tasks(tasks, parent):
        if not isinstance(task, ReadClip):
            raise TypeError(f"a reader process got {task!r}, not a ReadClip")
        number, shard, key, slot = task
        try:
            start = time.perf_counter()
            if shard not in indexes:
                indexes[shard] = ShardIndex(Path(shard_paths[shard]), shards.FRAMES_MEMBERS)
            open_files[shard] = None
            open_files.move_to_end(shard)
            if len(open_files) > _OPEN_SHARDS:
                indexes[open_files.popitem(last=False)[0]].close()
            raw = read_raw(indexes[shard], key, LABEL_PASS_STEMS, arena)
            read = time.perf_counter()
            try:  # both cameras straight into the slot
                clip = decode_clip(raw, into={"road": slab[slot, 0], "wide": slab[slot, 1]})
            except DatasetError as e:
                raise DatasetError(f"{Path(shard_paths[shard]).name}: {e}") from None
            if "road" not in clip or "wide" not in clip or len(clip["road"]) != len(clip["wide"]):
                raise DatasetError(f"{Path(shard_paths[shard]).name}: {key}: needs road and wide frames, "
                                   "as many of each")
            clip["frames"] = len(clip.pop("road"))
            del clip["wide"]
            results.put(ClipDecoded(number, clip, read - start, time.perf_counter() - read))
        except Exception as e:  # reported by the main process, which stops the pass
            results.put(ClipFailed(number, isinstance(e, DatasetError), str(e)))
    for index in indexes.values():
        index.close()


@dataclass(eq=False)
class Ticket:
    """One submitted clip; `done()` / `result()` like a Future's. The result's `road` and `wide` are views of the
    slab slot (frames, 6, 128, 256) until `ClipReaders.release`."""

    ref: ClipRef
    owner: ClipReaders
    slot: int | None = None
    worker: int | None = None
    clip: dict[str, Any] | None = None
    error: Exception | None = None  # reading a prefetched clip failed: raised if the pass asks for it

    def done(self) -> bool:
        """Decoded, as of the owner's last `poll` (one poll per step serves every row)."""
        return self.clip is not None

    def result(self) -> dict[str, Any]:
        return self.owner.wait_for(self)


class _SlabProcesses:
    """What the readers and the writers share: a slab file (`_slab_file`) mapped here as `slab`, page-locked in a
    thread when `pin` (GBs take most of a second: done while the processes start), `workers` spawned processes
    (`target(slab path, *args, task queue, result queue, parent pid)`, named `name-N`) with a task
    queue each and one result queue, and their bounded shutdown. The slab's file is unlinked once every process
    has mapped it (`_mapped`), so even a killed pass leaves nothing in /dev/shm."""

    STOP_S = 3.0  # how long `close` lets the processes finish before terminating them

    def __init__(self, *, name: str, target: Any, args: tuple, workers: int, nbytes: int, dtype: Any,
                 shape: tuple[int, ...], pin: bool) -> None:
        self.shape = shape
        self.path = _slab_file(nbytes, f"spark-{name}-")
        self.slab = np.memmap(self.path, dtype, "r+", shape=shape)
        self.pinned: Any = None
        self.pinning = threading.Thread(target=self._pin, args=(pin,), daemon=True, name=f"{name}-pin")
        self.pinning.start()
        self.mapped = 0  # processes that have mapped the slab
        ctx = mp.get_context("spawn")  # safe under torchrun and with CUDA initialised; they never import torch
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(workers)]
        self.procs = [ctx.Process(target=target, name=f"{name}-{w}", daemon=True,
                                  args=(self.path, *args, self.tasks[w], self.results, os.getpid()))
                      for w in range(workers)]
        try:
            for p in self.procs:
                p.start()
        except BaseException:
            self.close()
            raise

    def _pin(self, pin: bool) -> None:
        if pin:
            self.pinned = _pin(self.slab)

    def _mapped(self) -> None:
        self.mapped += 1
        if self.mapped == len(self.procs):  # every process holds the mapping: no file left behind, even on kill -9
            self._unlink()

    def _stop(self, seconds: float) -> None:
        """Ask every process to stop once its queued tasks are done; wait at most `seconds` for them."""
        for q in self.tasks:
            with contextlib.suppress(OSError, ValueError):
                q.put(None)
        deadline = time.monotonic() + seconds
        for p in self.procs:
            if p.pid is not None:
                p.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Stop the processes (bounded time: terminated, then killed, if they do not exit) and delete the slab;
        safe to call twice."""
        self._stop(self.STOP_S)
        for p in self.procs:
            if p.pid is not None and p.exitcode is None:
                p.terminate()
                p.join(1.0)
                if p.exitcode is None:
                    p.kill()
                    p.join()
        for q in (*self.tasks, self.results):
            q.cancel_join_thread()
            q.close()
        self.procs = []
        self.pinning.join()
        if self.pinned is not None:
            self.pinned()
            self.pinned = None
        self._unlink()

    def _unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class ClipReaders(_SlabProcesses):
    """`workers` reader processes decoding clips of `shard_paths` into `slots` slots of a shared slab."""

    def __init__(self, shard_paths: list[Path], *, workers: int, slots: int, clip_len: int, pin: bool = False) -> None:
        self.names = [p.name for p in shard_paths]
        self.slot_tensors: list[Any] | None = None
        self.free = list(range(slots))[::-1]
        self.waiting: collections.deque[Ticket] = collections.deque()  # submitted, no slot yet
        self.in_hand: list[collections.deque[Ticket]] = [collections.deque() for _ in range(workers)]
        self.indexed: list[set[int]] = [set() for _ in range(workers)]  # shards each reader has indexed
        self.held: dict[int, Ticket] = {}  # slot -> decoded clip not yet released
        self.releasing: collections.deque[tuple[Any, int]] = collections.deque()  # (copy event, slot)
        self.tickets: dict[int, Ticket] = {}
        self.counter = 0
        self.seconds = {"read": 0.0, "decode": 0.0}
        self.spilled = 0
        self.prefetched: dict[str, Ticket] = {}  # clip key -> ticket submitted ahead, not yet asked for
        self.started, self.ready_s = time.monotonic(), None  # ready_s: until the last reader had mapped it (s)
        shape = (slots, 2, clip_len, *FRAME)  # slot, camera (road, wide), frame
        # the readers fill the slab's pages (each its own page tables); this process does not: madvise holds the
        # GIL for the seconds it takes, and on CUDA page-locking the slab faults every page in anyway
        super().__init__(name="label-reader", target=_reader, args=(shape, [str(p) for p in shard_paths]),
                         workers=workers,
                         nbytes=int(np.prod(shape)), dtype=np.uint8, shape=shape, pin=pin)

    @property
    def slots(self) -> int:
        return self.shape[0]

    def slot_tensor(self, ticket: Ticket) -> Any:
        """The ticket's slot as a torch tensor (2, clip_len, 6, 128, 256): page-locked when pinned."""
        if ticket.slot is None:
            return None
        if self.slot_tensors is None:
            import torch

            self.pinning.join()
            self.slot_tensors = [torch.from_numpy(np.asarray(self.slab[k])) for k in range(self.slots)]
        return self.slot_tensors[ticket.slot]

    def prefetch(self, refs: list[ClipRef]) -> None:
        """Start decoding the clips the pass will ask for first (its rows' first clips) while the teacher is
        built; `submit` of one of them then returns its ticket. One never asked for (its shard failed its
        check, say) keeps its slot only until it is spilled, and an error reading it is raised only if it is
        asked for."""
        for ref in refs:
            if ref.key not in self.prefetched:
                self.prefetched[ref.key] = self._submit(ref)

    def submit(self, ref: ClipRef) -> Ticket:
        ticket = self.prefetched.pop(ref.key, None)  # keys name one clip of the dataset each
        if ticket is not None:
            if ticket.error is not None:
                raise ticket.error
            return ticket
        return self._submit(ref)

    def _submit(self, ref: ClipRef) -> Ticket:
        ticket = Ticket(ref, self)
        self.waiting.append(ticket)
        self._dispatch()
        return ticket

    def _dispatch(self) -> None:
        while self.releasing and (self.releasing[0][0] is None or self.releasing[0][0].query()):
            self.free.append(self.releasing.popleft()[1])
        while self.waiting and self.free:
            ticket = self.waiting.popleft()
            ticket.slot = self.free.pop()
            shard = ticket.ref.shard  # the least busy reader, preferring one that has already indexed the shard
            ticket.worker = min(range(len(self.procs)),
                                key=lambda w: len(self.in_hand[w]) + (0 if shard in self.indexed[w] else _INDEX_COST))
            self.indexed[ticket.worker].add(shard)
            self.counter += 1
            self.tickets[self.counter] = ticket
            self.in_hand[ticket.worker].append(ticket)
            self.tasks[ticket.worker].put(ReadClip(self.counter, ticket.ref.shard, ticket.ref.key, ticket.slot))

    def _take(self, answer: ReaderMapped | ClipDecoded | ClipFailed) -> None:
        match answer:
            case ReaderMapped(at):
                self.ready_s = max(self.ready_s or 0.0, at - self.started)  # at: the reader's monotonic clock
                self._mapped()
            case ClipDecoded():
                self._decoded(answer)
            case ClipFailed():
                self._failed(answer)
            case _:
                raise TypeError(f"unexpected message from a reader process: {answer!r}")

    def _failed(self, answer: ClipFailed) -> None:
        ticket = self.tickets.pop(answer.number)
        self.in_hand[ticket.worker].remove(ticket)
        message = answer.message
        exc = (DatasetError if answer.bad_data else LabelError)(
            message if answer.bad_data else f"{self.names[ticket.ref.shard]}: {ticket.ref.key}: {message}")
        if self.prefetched.get(ticket.ref.key) is not ticket:
            raise exc
        ticket.error = exc  # not asked for yet, maybe never
        self.free.append(ticket.slot)
        ticket.slot = None

    def _decoded(self, answer: ClipDecoded) -> None:
        ticket = self.tickets.pop(answer.number)
        self.in_hand[ticket.worker].remove(ticket)
        self.seconds["read"] += answer.read_s
        self.seconds["decode"] += answer.decode_s
        clip = answer.clip
        n = clip.pop("frames")
        clip["road"], clip["wide"] = self.slab[ticket.slot, 0, :n], self.slab[ticket.slot, 1, :n]
        ticket.clip = clip
        self.held[ticket.slot] = ticket

    def poll(self) -> None:
        """Take every answer already there (never blocks)."""
        while True:
            try:
                answer = self.results.get_nowait()
            except queue.Empty:
                break
            self._take(answer)
        self._dispatch()

    def wait_for(self, ticket: Ticket) -> dict[str, Any]:
        """Block until `ticket` is decoded (spilling a held clip if every slot is taken by ones not waited for)."""
        self.poll()
        while ticket.clip is None:
            if ticket.slot is None and not self.free:
                if self.releasing:
                    event, slot = self.releasing.popleft()
                    if event is not None:
                        event.synchronize()
                    self.free.append(slot)
                elif self.held:
                    self._spill(next(iter(self.held.values())))
                self._dispatch()
                if ticket.slot is None and not any(self.in_hand):
                    raise AssertionError("no slot, nothing decoding and nothing to spill")
            try:
                self._take(self.results.get(timeout=0.2))
            except queue.Empty:
                self._check_alive()
            self._dispatch()
        return ticket.clip

    def _spill(self, ticket: Ticket) -> None:
        """Move a decoded clip out of its slot into private memory and free the slot."""
        ticket.clip["road"], ticket.clip["wide"] = ticket.clip["road"].copy(), ticket.clip["wide"].copy()
        del self.held[ticket.slot]
        self.free.append(ticket.slot)
        ticket.slot = None
        self.spilled += 1

    def _check_alive(self) -> None:
        for w, p in sorted(enumerate(self.procs), key=lambda wp: not self.in_hand[wp[0]]):  # one holding a clip first
            if p.exitcode is not None:
                held = self.in_hand[w]
                where = (f"while reading {self.names[held[0].ref.shard]} ({held[0].ref.key})" if held
                         else "with no clip in hand")
                raise LabelError(f"reader process {p.name} died (exit code {p.exitcode}) {where}; "
                                 "nothing was written for its shard: run the same command again to resume")

    def claim(self, ticket: Ticket) -> None:
        """The ticket's slot is about to be copied from: it is never spilled (until `release`)."""
        if ticket.slot is not None:
            self.held.pop(ticket.slot, None)

    def release(self, ticket: Ticket, event: Any = None) -> None:
        """The clip is on the device (once `event`, a CUDA event, has passed): its slot may be reused."""
        if ticket.slot is not None:
            self.held.pop(ticket.slot, None)
            self.releasing.append((event, ticket.slot))
            ticket.slot = None


def _pin(slab: np.ndarray) -> Any:
    """Page-lock the slab for CUDA (cudaHostRegister), so host->device copies from it are asynchronous;
    returns the function that undoes it, or None (logged) where it fails: copies then still work, synchronously."""
    import torch

    cudart = torch.cuda.cudart()
    ptr, size = slab.ctypes.data, slab.nbytes
    err = cudart.cudaHostRegister(ptr, size, 1)  # cudaHostRegisterPortable: page-locked for every device's context
    if int(getattr(err, "value", err)) != 0:
        log.warning("could not page-lock a %d MB slab (cudaHostRegister error %s); its copies are synchronous",
                    size >> 20, err)
        return None
    return lambda: cudart.cudaHostUnregister(ptr)


def _slab_file(nbytes: int, prefix: str) -> str:
    """A file of `nbytes` for a shared slab: in /dev/shm (tmpfs) when it has room for twice that, else in the
    temporary folder (slower, still correct)."""
    room = os.statvfs(_SHM).f_bavail * os.statvfs(_SHM).f_frsize if _SHM.is_dir() else 0
    fd, path = tempfile.mkstemp(prefix=prefix, dir=_SHM if room > 2 * nbytes else None)
    os.truncate(fd, nbytes)
    os.close(fd)
    return path


_OpenShards = dict[int, tuple[Path, str, list[str], dict[str, tuple[bytes, bytes, int]], list[float]]]


def _shard_writer(slab_path: str, shape: tuple[int, ...], width_v: int, tasks: Any, results: Any,
                  parent: int) -> None:
    """A writer process. Tasks: OpenShard before a shard's first clip; WriteClip: compress the clip's vision and
    policy outputs from the slab's row, hand the row back, and once the shard has every key write it (in the keys'
    order, .tmp then rename). Answers on `results`: RowFree, ShardWritten or WriteFailed (WriterMapped first)."""
    child_init(parent)
    slab = np.memmap(slab_path, np.float16, "r", shape=shape)
    results.put(WriterMapped())
    shards_open: _OpenShards = {}  # shard -> (folder, name, keys, encoded clips, writer seconds)
    for task in _tasks(tasks, parent):
        try:
            match task:
                case OpenShard(shard, folder, name, keys):
                    shards_open[shard] = (Path(folder), name, keys, {}, [0.0])
                case WriteClip():
                    _write_clip(task, slab, width_v, shards_open, results)
                case _:
                    raise TypeError(f"a writer process got {task!r}, not an OpenShard or a WriteClip")
        except Exception as e:  # reported by the main process, which stops the pass
            results.put(WriteFailed(getattr(task, "shard", None), f"{type(e).__name__}: {e}"))


def _write_clip(task: WriteClip, slab: np.ndarray, width_v: int, shards_open: _OpenShards, results: Any) -> None:
    """Compress a clip from its slab row, hand the row back, and write its shard once the shard has every clip."""
    shard, key, row, n = task
    start = time.perf_counter()
    encoded = (arrays.encode_array(slab[row, :n, :width_v]), arrays.encode_array(slab[row, :n, width_v:]), n)
    results.put(RowFree(row))
    folder, name, keys, got, seconds = shards_open[shard]
    got[key] = encoded
    if len(got) != len(keys):
        seconds[0] += time.perf_counter() - start
        return
    del shards_open[shard]
    writer = shards.ShardWriter(folder, name, shards.LABEL_MEMBERS)
    try:
        for k in keys:
            vision, policy, frames = got[k]
            writer.write({"__key__": k, "vision.npy.zst": vision, "policy.npy.zst": policy}, frames=frames)
        info = writer.close().to_json()
    except BaseException:
        writer.abort()
        raise
    results.put(ShardWritten(shard, info, seconds[0] + time.perf_counter() - start))


class LabelWriters(_SlabProcesses):
    """`workers` label shard writer processes fed through a shared output slab of `rows` clip rows (fp16 vision and
    policy outputs side by side): the device->host copy of finished clips lands in consecutive rows (page-locked on
    CUDA), and only (shard, key, row, frames) travels to the writer that owns the shard (shard % workers), which
    compresses the clip, hands its row back and writes the shard once it has every clip. The main process never
    pickles an output array. `poll` takes the answers: freed rows and written shards."""

    STOP_S = 10.0  # a writer may be writing a shard

    def __init__(self, *, workers: int, rows: int, clip_len: int, width_v: int, width_p: int, pin: bool) -> None:
        self.tensor: Any = None
        self.busy = np.zeros(rows, bool)
        self.head = 0
        self.opened: dict[int, int] = {}  # shard -> writer, for shards not yet written
        self.written: list[ShardWritten] = []  # answers not yet taken by `take_written`
        self.stopped = False
        shape = (rows, clip_len, width_v + width_p)
        super().__init__(name="label-writer", target=_shard_writer, args=(shape, width_v), workers=workers,
                         nbytes=int(np.prod(shape)) * 2, dtype=np.float16, shape=shape, pin=pin)

    def rows(self, k: int, drain: Callable[[], None] | None = None) -> tuple[int, Any]:
        """`k` consecutive free rows: the first row's index and the rows as a torch tensor (k, clip_len, width) to
        copy finished clips into. If they are still taken it waits for the writers to hand them back, calling
        `drain` meanwhile (the caller hands over clips that have landed, whose rows the writers then free)."""
        if k > len(self.busy):
            raise ValueError(f"{k} clips at once, the output slab holds {len(self.busy)}")
        if self.head + k > len(self.busy):
            self.head = 0
        while self.busy[self.head: self.head + k].any():
            if drain is not None:
                drain()
            self.poll(block=True, timeout=0.001)
        start, self.head = self.head, self.head + k
        self.busy[start: start + k] = True
        if self.tensor is None:
            import torch

            self.pinning.join()
            self.tensor = torch.from_numpy(np.asarray(self.slab))
        return start, self.tensor[start: start + k]

    def put(self, shard: int, key: str, row: int, frames: int, *, folder: Path, name: str, keys: list[str]) -> None:
        """Hand a finished clip (in `row`) to the writer of its shard (`folder`/`name`, whose clips are `keys`)."""
        w = shard % len(self.procs)
        if shard not in self.opened:
            self.opened[shard] = w
            self.tasks[w].put(OpenShard(shard, str(folder), name, list(keys)))
        self.tasks[w].put(WriteClip(shard, key, row, frames))

    def free(self, row: int) -> None:
        """A row whose clip is not written (its shard was finished by an earlier run)."""
        self.busy[row] = False

    def poll(self, *, block: bool = False, timeout: float | None = None) -> None:
        """Take the writers' answers (with `block`, wait for one: for good, or at most `timeout` s); a writer's
        error or death is a LabelError."""
        while True:
            try:
                answer = self.results.get(timeout=timeout or 0.2) if block else self.results.get_nowait()
            except queue.Empty:
                if not block:
                    return
                self._check_alive()
                if timeout is not None:
                    return
                continue
            block = False
            self._take(answer)

    def _take(self, answer: WriterMapped | RowFree | ShardWritten | WriteFailed) -> None:
        match answer:
            case RowFree(row):
                self.busy[row] = False
            case ShardWritten(shard):
                self.opened.pop(shard, None)
                self.written.append(answer)
            case WriteFailed(shard, message):
                raise LabelError(f"label shard writer failed on shard {shard}: {message}")
            case WriterMapped():
                self._mapped()
            case _:
                raise TypeError(f"unexpected message from a label shard writer process: {answer!r}")

    def take_written(self, *, wait: bool = False) -> list[ShardWritten]:
        """The shards written since the last call; with `wait`, once every shard handed over has been written."""
        self.poll()
        while wait and self.opened:
            self.poll(block=True)
        out, self.written = self.written, []
        return out

    def _check_alive(self) -> None:
        if self.stopped:
            return
        for p in self.procs:
            if p.exitcode is not None:
                held = sorted(s for s, w in self.opened.items() if self.procs[w] is p)
                raise LabelError(f"label writer process {p.name} died (exit code {p.exitcode}) with shards {held} "
                                 "unwritten; run the same command again to resume")

    def stop(self) -> None:
        """Let the writers finish the clips already handed over, then stop them: shards still missing clips are
        dropped, the ones written meanwhile come from `take_written`."""
        self.stopped = True
        self._stop(self.STOP_S)
        self.poll()
        self.opened.clear()
