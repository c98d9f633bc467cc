# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Reader processes: decoded clips equal the shard index's, any number of slots, a dead reader named."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest

from spark_distill.data import shards
from spark_distill.data.clips import decode_clip
from spark_distill.data.index import ShardIndex, plan_segments
from spark_distill.errors import DatasetError, LabelError
from spark_distill.label.workers import ClipReaders


def _frames(root: Path) -> tuple[list[Path], list]:
    manifest = shards.read_manifest(root / "frames", shards.FRAMES_FORMAT)
    paths = [root / "frames" / s["name"] for s in manifest["shards"]]
    return paths, [c for p in plan_segments(manifest) for c in p.clips]


def test_readers_decode_what_the_shard_index_reads_with_a_single_slot(labeled: Path) -> None:
    paths, refs = _frames(labeled)
    readers = ClipReaders(paths, workers=2, slots=1, clip_len=10)
    try:
        tickets = [readers.submit(r) for r in refs[:6]]
        for ticket in reversed(tickets):  # waits out of order: held clips are spilled to free the one slot
            clip = ticket.result()
            want = ShardIndex(paths[ticket.ref.shard], shards.FRAMES_MEMBERS).read(ticket.ref.key, tuple(
                shards.FRAMES_MEMBERS))
            assert clip["__key__"] == ticket.ref.key
            for name in ("road", "wide", "desire", "car", "traffic"):
                np.testing.assert_array_equal(clip[name], want[name], err_msg=name)
            assert clip["meta"] == want["meta"]
            readers.release(ticket)
        assert readers.spilled >= 4 and readers.seconds["decode"] > 0
        with pytest.raises(TypeError, match="unexpected message from a reader process"):
            readers._take(("mapped", None, 0.0, 0.0, None))  # a tuple is no message, whatever it holds
        deadline = time.monotonic() + 30
        while readers.mapped < 2 and time.monotonic() < deadline:  # the second reader may have had no task yet
            readers.poll()
            time.sleep(0.05)
        assert readers.mapped == 2 and not os.path.exists(readers.path), "unlinked once both readers mapped it"
        slab = readers.path
    finally:
        readers.close()
    assert not [p for p in mp.active_children() if p.name.startswith("label-reader")] and not os.path.exists(slab)


def test_a_reader_that_dies_is_one_error_naming_its_shard(labeled: Path) -> None:
    paths, refs = _frames(labeled)
    readers = ClipReaders(paths, workers=1, slots=2, clip_len=10)
    try:
        readers.submit(refs[0]).result()
        readers.procs[0].kill()
        readers.procs[0].join()
        with pytest.raises(LabelError, match=r"reader process label-reader-0 died \(exit code -9\) while reading "
                                             r"shard-000000\.tar .*run the same command again"):
            readers.submit(refs[1]).result()
    finally:
        readers.close()


def test_decode_clip_keeps_frames_and_labels_of_one_sample(labeled: Path) -> None:
    name = "shard-000000.tar"
    f = next(shards.iter_shard(labeled / "frames" / name, shards.FRAMES_MEMBERS))
    lab = list(shards.iter_shard(labeled / "labels" / "set" / name, shards.LABEL_MEMBERS))
    clip = decode_clip(f, lab[0], images=False)
    assert "road" not in clip and clip["policy"].dtype == np.float16 and len(clip["vision"]) == len(clip["desire"])
    with pytest.raises(DatasetError, match="paired with label sample"):
        decode_clip(f, lab[1])


def test_prefetched_clips_are_what_submit_returns_and_their_errors_wait_until_asked_for(labeled: Path,
                                                                                      tmp_path: Path) -> None:
    paths, refs = _frames(labeled)
    broken = tmp_path / paths[0].name
    broken.write_bytes(b"not a tar file " * 100)
    paths = [broken, *paths[1:]]
    bad, good = next(r for r in refs if r.shard == 0), next(r for r in refs if r.shard == 1)
    readers = ClipReaders(paths, workers=1, slots=2, clip_len=10)
    try:
        readers.prefetch([bad, good])
        ticket = readers.prefetched[good.key]
        assert readers.submit(good) is ticket and good.key not in readers.prefetched
        assert ticket.result()["__key__"] == good.key  # the bad clip's answer came first: kept, not raised
        assert readers.prefetched[bad.key].error is not None and len(readers.free) == 1
        with pytest.raises((DatasetError, LabelError), match="shard-000000"):
            readers.submit(bad)
        with pytest.raises((DatasetError, LabelError), match="shard-000000"):  # asked for afresh: raised at once
            readers.submit(bad).result()
    finally:
        readers.close()
