# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Label shard writer processes: a shard written from the output slab's rows holds the same bytes as one encoded
from the arrays directly; rows are reused as writers hand them back; a dead writer is one error naming its shards."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spark_distill.data import arrays, shards
from spark_distill.errors import LabelError
from spark_distill.label.workers import LabelWriters, RowFree, WriteClip

CLIP_LEN, WV, WP = 5, 3, 4


def _clip(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, WV + WP)).astype(np.float16)


def test_shards_from_slab_rows_equal_shards_of_the_arrays_and_rows_are_reused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    keys = {0: [shards.clip_key("a", c) for c in range(3)], 1: [shards.clip_key("b", c) for c in range(2)]}
    clips = {k: _clip(rng, CLIP_LEN - (k == keys[0][2])) for ks in keys.values() for k in ks}  # one short clip
    (tmp_path / "out").mkdir()
    (tmp_path / "want").mkdir()
    writers = LabelWriters(workers=2, rows=3, clip_len=CLIP_LEN, width_v=WV, width_p=WP, pin=False)
    try:
        order = [keys[0][1], keys[1][0], keys[0][0], keys[1][1], keys[0][2]]  # out of order; 5 clips, 3 rows
        for key in order:
            shard = 0 if key in keys[0] else 1
            first, rows = writers.rows(1)
            rows[0, : len(clips[key])] = torch.from_numpy(clips[key])
            writers.put(shard, key, first, len(clips[key]), folder=tmp_path / "out", name=f"shard-{shard}.tar",
                        keys=keys[shard])
        written = writers.take_written(wait=True)
        slab = writers.path
    finally:
        writers.close()
    assert sorted(s for s, _, _ in written) == [0, 1] and not writers.busy.any()
    assert not [p for p in mp.active_children() if p.name.startswith("label-writer")] and not os.path.exists(slab)
    for shard, ks in keys.items():
        want = shards.ShardWriter(tmp_path / "want", f"shard-{shard}.tar", shards.LABEL_MEMBERS)
        for k in ks:
            want.write({"__key__": k, "vision.npy.zst": arrays.encode_array(clips[k][:, :WV]),
                        "policy.npy.zst": arrays.encode_array(clips[k][:, WV:])}, frames=len(clips[k]))
        want.close()
        got = tmp_path / "out" / f"shard-{shard}.tar"
        assert got.read_bytes() == (tmp_path / "want" / f"shard-{shard}.tar").read_bytes()


def test_a_writer_that_dies_is_one_error_naming_its_shards(tmp_path: Path) -> None:
    writers = LabelWriters(workers=1, rows=2, clip_len=CLIP_LEN, width_v=WV, width_p=WP, pin=False)
    try:
        first, _ = writers.rows(1)
        writers.put(7, shards.clip_key("a", 0), first, CLIP_LEN, folder=tmp_path, name="shard-7.tar",
                    keys=[shards.clip_key("a", 0), shards.clip_key("a", 1)])
        deadline = time.monotonic() + 30
        while writers.busy.any() and time.monotonic() < deadline:  # compressed: the row is handed back
            writers.poll(block=True, timeout=0.05)
        writers.procs[0].kill()
        writers.procs[0].join()
        with pytest.raises(LabelError, match=r"label writer process label-writer-0 died .* shards \[7\] unwritten"):
            writers.take_written(wait=True)
    finally:
        writers.close()
    assert not list(tmp_path.glob("shard-7*")), "nothing half-written"


def test_a_message_of_an_unknown_kind_is_an_error_both_ways(tmp_path: Path) -> None:
    writers = LabelWriters(workers=1, rows=2, clip_len=CLIP_LEN, width_v=WV, width_p=WP, pin=False)
    try:
        with pytest.raises(TypeError, match="unexpected message from a label shard writer"):
            writers._take(("free", 0))  # a tuple is no message, whatever it holds
        writers._take(RowFree(0))
        writers.tasks[0].put(("clip", 7, "a--c00000", 0, CLIP_LEN))
        writers.tasks[0].put(WriteClip(7, "a--c00000", 0, CLIP_LEN))  # its shard was never opened
        deadline = time.monotonic() + 30
        with pytest.raises(LabelError, match=r"failed on shard None: TypeError: a writer process got \('clip'"):
            while time.monotonic() < deadline:
                writers.poll(block=True, timeout=0.05)
        with pytest.raises(LabelError, match=r"failed on shard 7: KeyError"):
            while time.monotonic() < deadline:
                writers.poll(block=True, timeout=0.05)
    finally:
        writers.close()


def test_a_pass_has_four_writers_or_half_as_many_as_its_readers() -> None:
    from spark_distill.label.run import writer_count

    assert [writer_count(r) for r in (1, 2, 8, 9, 10, 14, 18)] == [4, 4, 4, 4, 5, 7, 9]
