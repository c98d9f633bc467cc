# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The label pass's worker processes: clip readers that decode into one shared slab, and the shard writer.
Entry points: `ClipReaders` (submit a ClipRef, get a decoded clip) and `write_label_shard`.

Readers, stage by stage: the main process `submit`s a ClipRef -> when a slab slot is free the task goes to
the reader process with the fewest tasks in hand (each reader has its own queue, so the main process
always knows which shard a reader holds) -> the reader preads the clip's members (`clips.read_raw`),
decodes them (`clips.decode_clip`, so any codec of `shards` works) and copies both cameras into the
slot -> it answers on the one result queue with the small arrays (desire, car, traffic, meta) and its
read/decode seconds -> the main process copies the slot to the device and `release`s it (on CUDA once
the copy's event has passed; the slab is page-locked there, so that copy is asynchronous).

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
import multiprocessing as mp
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spark_distill import shards
from spark_distill.children import child_init
from spark_distill.clips import LABEL_PASS_STEMS, decode_clip, read_raw
from spark_distill.errors import DatasetError, LabelError
from spark_distill.label.plan import Arena, ClipRef, ShardIndex

log = logging.getLogger(__name__)
FRAME = (6, 128, 256)  # one camera frame as the vision model takes it (YUV420 packed in 6 planes)
_INDEX_COST = 2  # a shard's tar index costs a reader about as much as decoding two clips (14 ms, 375 MB shard)
_OPEN_SHARDS = 8  # shard files a reader keeps open (the indexes of all stay)


def _reader(slab_path: str, shape: tuple[int, ...], shard_paths: list[str], tasks: Any, results: Any,
            parent: int) -> None:
    """A reader process: tasks (ticket, shard, key, slot) in, (ticket, small arrays, read s, decode s, error) out."""
    child_init(parent)
    slab = np.memmap(slab_path, np.uint8, "r+", shape=shape)
    results.put(("mapped", None, 0.0, 0.0, None))  # the main process unlinks the slab's file once all have it
    indexes: dict[int, ShardIndex] = {}  # every shard's member offsets, parsed once (a tar header walk)
    open_files: collections.OrderedDict[int, None] = collections.OrderedDict()  # shards whose file is open, LRU
    arena = Arena()  # reused from clip to clip: reads without page faults
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if task is None:
            break
        ticket, shard, key, slot = task
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
            results.put((ticket, clip, read - start, time.perf_counter() - read, None))
        except Exception as e:  # reported by the main process, which stops the pass
            results.put((ticket, None, 0.0, 0.0, (isinstance(e, DatasetError), str(e))))
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

    def done(self) -> bool:
        """Decoded, as of the owner's last `poll` (one poll per step serves every lane)."""
        return self.clip is not None

    def result(self) -> dict[str, Any]:
        return self.owner.wait_for(self)


class ClipReaders:
    """`workers` reader processes decoding clips of `shard_paths` into `slots` slots of a shared slab."""

    def __init__(self, shard_paths: list[Path], *, workers: int, slots: int, clip_len: int, pin: bool = False) -> None:
        self.names = [p.name for p in shard_paths]
        self.shape = (slots, 2, clip_len, *FRAME)  # slot, camera (road, wide), frame
        shm = Path("/dev/shm")
        room = os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize if shm.is_dir() else 0
        fd, path = tempfile.mkstemp(prefix="spark-label-slab-", dir=shm if room > 2 * np.prod(self.shape) else None)
        os.close(fd)
        self.path = path
        self.slab = np.memmap(path, np.uint8, "w+", shape=self.shape)
        self.pinned: Any = None
        self.pinning = None
        if pin:  # page-locking GBs takes most of a second: done in a thread (the GIL is released) while readers start
            self.pinning = threading.Thread(target=lambda: setattr(self, "pinned", _pin(self.slab)), daemon=True)
            self.pinning.start()
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
        self.mapped = 0  # readers that have mapped the slab
        ctx = mp.get_context("spawn")  # safe under torchrun and with CUDA initialised; readers never import torch
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(workers)]
        self.procs = [ctx.Process(target=_reader, name=f"label-reader-{w}", daemon=True,
                                  args=(path, self.shape, [str(p) for p in shard_paths], self.tasks[w], self.results,
                                        os.getpid()))
                      for w in range(workers)]
        try:
            for p in self.procs:
                p.start()
        except BaseException:
            self.close()
            raise

    def slot_tensor(self, ticket: Ticket) -> Any:
        """The ticket's slot as a torch tensor (2, clip_len, 6, 128, 256): page-locked when pinned."""
        if ticket.slot is None:
            return None
        if self.slot_tensors is None:
            import torch

            if self.pinning is not None:
                self.pinning.join()

            self.slot_tensors = [torch.from_numpy(np.asarray(self.slab[k])) for k in range(self.shape[0])]
        return self.slot_tensors[ticket.slot]

    def submit(self, ref: ClipRef) -> Ticket:
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
            self.tasks[ticket.worker].put((self.counter, ticket.ref.shard, ticket.ref.key, ticket.slot))

    def _take(self, answer: tuple) -> None:
        number, clip, read_s, decode_s, error = answer
        if number == "mapped":
            self.mapped += 1
            if self.mapped == len(self.procs):  # every process holds the mapping: no file left behind, even on kill -9
                self._unlink()
            return
        ticket = self.tickets.pop(number)
        self.in_hand[ticket.worker].remove(ticket)
        if error is not None:
            is_dataset, message = error
            raise (DatasetError if is_dataset else LabelError)(
                message if is_dataset else f"{self.names[ticket.ref.shard]}: {ticket.ref.key}: {message}")
        self.seconds["read"] += read_s
        self.seconds["decode"] += decode_s
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

    def close(self) -> None:
        """Stop the readers (bounded time) and delete the slab; safe to call twice."""
        for q in self.tasks:
            with contextlib.suppress(OSError, ValueError):
                q.put(None)
        deadline = time.monotonic() + 3.0
        for p in self.procs:
            if p.pid is None:
                continue
            p.join(max(0.0, deadline - time.monotonic()))
            if p.exitcode is None:
                p.terminate()
                p.join(1.0)
            if p.exitcode is None:
                p.kill()
                p.join()
        for q in (*self.tasks, self.results):
            q.cancel_join_thread()
            q.close()
        self.procs = []
        if self.pinning is not None:
            self.pinning.join()
        if self.pinned is not None:
            self.pinned()
            self.pinned = None
        self._unlink()

    def _unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _pin(slab: np.ndarray) -> Any:
    """Page-lock the slab for CUDA (cudaHostRegister), so host->device copies from it are asynchronous;
    returns the function that undoes it, or None (logged) where it fails: copies then still work, synchronously."""
    import torch

    cudart = torch.cuda.cudart()
    ptr, size = slab.ctypes.data, slab.nbytes
    err = cudart.cudaHostRegister(ptr, size, 1)  # cudaHostRegisterPortable: page-locked for every device's context
    if int(getattr(err, "value", err)) != 0:
        log.warning("could not page-lock the %d MB clip slab (cudaHostRegister error %s); copies are synchronous",
                    size >> 20, err)
        return None
    return lambda: cudart.cudaHostUnregister(ptr)


def write_label_shard(folder: Path, name: str, clips: list[tuple[str, np.ndarray, np.ndarray]]) -> tuple[dict, float]:
    """Encode and write one label shard (keys in the given order); returns its ShardInfo JSON and the seconds it
    took. Runs in the writer process: a shard appears complete (renamed from .tmp) or not at all."""
    start = time.perf_counter()
    writer = shards.ShardWriter(folder, name, shards.LABEL_MEMBERS)
    try:
        for key, vision, policy in clips:
            writer.write({"__key__": key, "vision.npy.zst": shards.encode_array(vision),
                          "policy.npy.zst": shards.encode_array(policy)}, frames=len(vision))
    except BaseException:
        writer.abort()
        raise
    return writer.close().to_json(), time.perf_counter() - start
