# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Worker processes: how many a pass starts by default (`worker_budget`, `core_share`), and that they never outlive
the pass that started them (`child_init`: every pool, manager and reader process runs it first). Ranks of a pass
spread over processes or machines: `torchrun_rank` (which one this process is under torchrun) and `process_group`
(the torch.distributed group a pass joins)."""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import signal
from collections.abc import Iterator

# glibc malloc settings (mallopt, whose value is a C int): M_TRIM_THRESHOLD -1 turns trimming off (mallopt(3)),
# M_MMAP_THRESHOLD 1 GiB; the environment's spelling of each
_MALLOPT = {-1: ("MALLOC_TRIM_THRESHOLD_", -1), -3: ("MALLOC_MMAP_THRESHOLD_", 1 << 30)}


def reuse_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of handing it back to the kernel.

    By default glibc serves every block over 32 MiB with its own mmap and unmaps it when freed, and trims the heap
    of what is freed at its top: a CPU pass's frame batches and activations (tens to hundreds of MB, allocated and
    freed every step) were then faulted in again, page by page, on every use. On a 2-core box that system time was
    more than the arithmetic: a 63 MB uint8 batch made fp32 40 times took 10.3 s, 9.1 s of it in the kernel, and
    1.7 s with this (benchmarks/cpu_memory.md). The process keeps its peak heap instead, as PyTorch's own CUDA
    allocator does. A setting the user made (MALLOC_*_ / GLIBC_TUNABLES) is kept; False where there is no glibc."""
    if "GLIBC_TUNABLES" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(bool(libc.mallopt(param, value)) for param, (env, value) in _MALLOPT.items()
                   if env not in os.environ)
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return False


def child_init(parent: int | None = None) -> None:
    """Ignore Ctrl-C (the main process stops its workers) and die with the main process `parent`, even when it
    is killed (-9, out of memory): such an orphan would otherwise wait on its task queue forever, holding its
    memory and the pass's stderr. A parent killed while this process was still starting (before
    PR_SET_PDEATHSIG took hold) is seen as a changed parent pid. Freed memory is kept for reuse
    (`reuse_freed_memory`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reuse_freed_memory()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def on_gpu(device: str | None) -> bool:
    """Whether work asked to run on `device` (None: the default, CUDA where there is one) runs on a GPU."""
    if device is not None:
        return device.startswith("cuda")
    import torch  # here, not at the top: reader processes import this module and never torch

    return torch.cuda.is_available()


def worker_budget(*, accelerator: bool, cpu_default: int = 2) -> int:
    """Worker processes a pass starts when --workers is left at 0 (auto). With an accelerator doing the arithmetic:
    every core of this process's share (its CPU affinity, split between torchrun's local ranks) but two, for the
    main process and its writer or pin-memory thread (14 on a 16-core H200 box: what the label pass and the
    training loader need to keep one GPU fed, benchmarks/label.md and train.md). On a CPU the model needs the
    cores itself: `cpu_default`, at most the share."""
    share = core_share()
    return max(1, share - 2) if accelerator else max(1, min(cpu_default, share))


def core_share() -> int:
    """The cores this process may use: its CPU affinity, split between torchrun's local ranks (LOCAL_WORLD_SIZE)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, cores // local)


def torchrun_rank() -> tuple[int, int]:
    """(world size, rank) from torchrun's environment (WORLD_SIZE, RANK); (1, 0) for a process on its own."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def process_group(rank: int, world: int, init_method: str | None, *,
                  timeout: datetime.timedelta | None = None) -> Iterator[bool]:
    """The gloo group of a pass of `world` processes (made here and destroyed after, unless the caller made one);
    yields whether this call made it. `timeout`: how long a collective waits for the slowest rank (torch's
    default, 30 min, unless given)."""
    import torch.distributed as dist

    own = world > 1 and not dist.is_initialized()
    if own:
        kwargs = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world, **kwargs)
    try:
        yield own
    finally:
        if own:
            dist.destroy_process_group()
