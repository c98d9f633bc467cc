# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`spark-distill bench remote`: label and train from an object store, through the local cache, against the same
data on local disk, as ratios in one run; and what the cache serves on a second epoch.

One synthetic route is ingested to a local root and its frames copied to the store (`--url s3://bucket/prefix`, under
a fresh prefix removed afterwards; default: an S3-API server on localhost, moto's server mode, so the figures are the
tool's own overhead: fetching, checking, publishing; a real store adds its network). Then, each phase with a cache of
its own (never the user's):
1. label the local root, then the remote one (frames fetched on first read, labels published): wall-time ratio, and
   whether the two label sets are byte-identical;
2. train one epoch on the local root, then on the remote one from an empty cache (every shard fetched), then again
   (the second epoch: every read a cache hit), then with the cache bound to half the dataset's shard bytes (the
   second epoch of a dataset larger than its cache), then locally again (the baseline is the faster local run: the
   first train of a process pays its start-up): wall-time ratios and the cache's hits, misses and bytes fetched.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from spark_distill.bench import scratch_dir
from spark_distill.data import shards, store
from spark_distill.errors import ConfigError
from spark_distill.progress import Stages

LOCAL_S3 = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the block (loader and label workers inherit them), then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def local_s3() -> Iterator[str]:
    """An S3-API server on a free localhost port (moto's server mode), this process pointed at it through the
    standard environment variables; yields a bucket URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        raise ConfigError("bench remote: pass --url s3://bucket/prefix (your own store), or install moto for a "
                          "server on localhost: pip install 'moto[server]'") from e
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with _environ(**LOCAL_S3, AWS_ENDPOINT_URL=f"http://{host}:{port}"):
            import fsspec

            fsspec.filesystem("s3", skip_instance_cache=True).mkdir("bench")
            yield "s3://bench"
    finally:
        server.stop()


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.tar")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cache_line(what: str, seconds: float, local: float, s: dict[str, int] | None = None) -> str:
    s = store.cache_stats() if s is None else s
    reads = s["hits"] + s["misses"]
    rate = f"{s['hits'] / reads:6.1%}" if reads else "   n/a"
    return (f"{what:44s} {seconds:7.1f} s  x{seconds / local:5.2f} of local   cache hits {rate} "
            f"({s['hits']} of {reads} shard reads, {s['fetched_bytes'] / 1e6:.1f} MB fetched)")


def bench_remote(*, url: str | None = None, segments: int = 3, seconds: float = 6.0, student: str = "compact-xs",
                 batch_size: int = 4, shard_clips: int = 3, workers: int = 2, workdir: Path | None = None,
                 on_progress: Callable[[int, int, str], None] | None = None) -> Iterator[str]:
    """Run the benchmark; yields report lines. `on_progress(measurements done, total, the one now)`."""
    if url is not None and (not store.is_url(url) or url.split(":", 1)[0] in store.READ_ONLY):
        raise ConfigError(f"--url {url}: give a writable object-store URL (s3://bucket/prefix or gs://bucket/prefix)")
    step = Stages(on_progress, 10)
    scratch = scratch_dir(workdir, "bench-remote-")
    try:
        with contextlib.ExitStack() as stack:
            if url is None:
                step("starting an S3-API server on localhost")
                base = stack.enter_context(local_s3())
                where = "an S3-API server on localhost (moto): the tool's overhead, no network"
            else:
                step("checking the store")
                base = url.rstrip("/")
                where = f"{store.public_url(base)} (scratch prefix removed afterwards)"
            remote = f"{base}/bench-remote-{uuid.uuid4().hex[:8]}"
            stack.callback(_remove_prefix, remote)
            yield f"store: {where}"
            yield from _run(remote, scratch, step, segments=segments, seconds=seconds, student=student,
                            batch_size=batch_size, shard_clips=shard_clips, workers=workers)
        step.end()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _remove_prefix(url: str) -> None:
    with contextlib.suppress(Exception):
        fs, path = store.filesystem(url)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def _run(remote: str, scratch: Path, step: Stages, *, segments: int, seconds: float, student: str,
         batch_size: int, shard_clips: int, workers: int) -> Iterator[str]:
    from spark_distill.ingest.run import IngestConfig, ingest
    from spark_distill.label.run import LabelConfig, label
    from spark_distill.synth.route import SynthConfig, write_route
    from spark_distill.synth.teacher import write_teacher
    from spark_distill.train.config import TrainConfig
    from spark_distill.train.loop import train

    step(f"synthesizing and ingesting {segments} segment(s) of {seconds:g} s")
    write_route(scratch / "route", SynthConfig(segments=segments, seconds=seconds))
    write_teacher(scratch / "teacher", seed=1)
    local = scratch / "local"
    ingest(IngestConfig(inputs=(str(scratch / "route"),), out=local, workers=workers, shard_clips=shard_clips))
    n = len(shards.read_manifest(local / "frames", shards.FRAMES_FORMAT)["shards"])
    fs, path = store.filesystem(remote)
    fs.put(str(local / "frames"), f"{path}/frames", recursive=True)
    data_bytes = sum(p.stat().st_size for p in (local / "frames").glob("*.tar"))
    yield f"dataset: {segments} segment(s) of {seconds:g} s, {n} frames shards, {data_bytes / 1e6:.1f} MB of frames"

    def labelled(root: Path) -> None:
        label(LabelConfig(root=root, teacher=(scratch / "teacher",), name="t", batch=4, workers=workers))

    step("label, local root")
    t_local = _timed(lambda: labelled(local))
    step("label, remote root (empty cache)")
    with _environ(SPARK_DISTILL_CACHE=str(scratch / "cache-label")):
        mirror = store.attach(remote, write=True)
        t_remote = _timed(lambda: labelled(mirror))
        same = _digest(local / "labels" / "t") == _digest(mirror / "labels" / "t")
        yield f"{'label, local root':44s} {t_local:7.1f} s"
        yield _cache_line("label, remote root (frames fetched, labels published)", t_remote, t_local)
    yield f"label sets byte-identical: {'yes' if same else 'NO'}"

    def trained(root: Path, run: str) -> None:
        train(TrainConfig(root=root, labels="t", run=run, runs_dir=scratch / "runs", student=student, epochs=1,
                          batch_size=batch_size, workers=workers, val_fraction=0.0, mask_warmup=False, seed=0))

    step("train 1 epoch, local root")
    first = _timed(lambda: trained(local, "local"))
    rows = []
    with _environ(SPARK_DISTILL_CACHE=str(scratch / "cache-train")):
        mirror = store.attach(remote)
        step("train, remote root: first epoch (empty cache)")
        rows.append(("train, remote: first epoch (empty cache)", _timed(lambda: trained(mirror, "r1")),
                     store.cache_stats()))
        store.reset_cache_stats()
        step("train, remote root: second epoch")
        rows.append(("train, remote: second epoch", _timed(lambda: trained(mirror, "r2")), store.cache_stats()))
    half = max(1, sum(p.stat().st_size for p in local.glob("*/**/*.tar")) // 2)  # frames and labels
    with _environ(SPARK_DISTILL_CACHE=str(scratch / "cache-half"), SPARK_DISTILL_CACHE_SIZE=str(half)):
        mirror = store.attach(remote)
        step("train, remote root, cache of half the data: first epoch")
        trained(mirror, "h1")
        store.reset_cache_stats()
        step("train, remote root, cache of half the data: second epoch")
        seconds = _timed(lambda: trained(mirror, "h2"))
        rows.append((f"train, remote: 2nd epoch, cache {half / 1e6:.1f} MB (half)", seconds, store.cache_stats()))
    step("train 1 epoch, local root, again")
    again = _timed(lambda: trained(local, "local-again"))
    t_local = min(first, again)  # the first train of a process also pays its one-time start-up
    yield f"{'train 1 epoch, local root (best of 2)':44s} {t_local:7.1f} s  ({first:.1f} s first, {again:.1f} s last)"
    for what, seconds, stats in rows:
        yield _cache_line(what, seconds, t_local, stats)
