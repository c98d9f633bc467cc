# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The shared shard/manifest reader-writer."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays as array_strategy

from spark_distill.data import arrays, files, shards
from spark_distill.errors import DatasetError

MEMBERS = {"road.npy.zst": "uint8", "meta.json": None}


def _sample(key: str, value: int) -> dict:
    return {"__key__": key, "road.npy.zst": arrays.encode_array(np.full((2, 3), value, np.uint8)),
            "meta.json": shards.encode_json({"v": value})}


def test_write_then_read_gives_the_same_samples(tmp_path: Path) -> None:
    w = shards.ShardWriter(tmp_path, "shard-000000.tar", MEMBERS)
    keys = [shards.clip_key("abc|2024-01-01--00-00-00--3", i) for i in range(3)]
    for i, k in enumerate(keys):
        w.write(_sample(k, i), frames=2)
    info = w.close()
    assert not (tmp_path / "shard-000000.tar.tmp").exists()
    assert info.samples == 3 and info.frames == 6 and info.sha256 == files.sha256_file(tmp_path / info.name)
    got = list(shards.iter_shard(tmp_path / info.name, MEMBERS))
    assert [g["__key__"] for g in got] == keys == [f"abc_2024-01-01--00-00-00--3--c0000{i}" for i in range(3)]
    for i, g in enumerate(got):
        d = shards.decode_sample(g)
        np.testing.assert_array_equal(d["road"], np.full((2, 3), i, np.uint8))
        assert d["meta"] == {"v": i}


def test_skipped_members_are_left_out_and_the_rest_read_as_without_skipping(tmp_path: Path) -> None:
    """Feature-cached training reads frames shards without their camera members (seeking past their bytes)."""
    w = shards.ShardWriter(tmp_path, "shard-000000.tar", MEMBERS)
    for i in range(3):
        w.write(_sample(shards.clip_key("abc|2024-01-01--00-00-00--3", i), i), frames=2)
    path = tmp_path / w.close().name
    full = list(shards.iter_shard(path, MEMBERS))
    lean = list(shards.iter_shard(path, MEMBERS, skip=frozenset({"road"})))
    assert [{k: v for k, v in f.items() if k != "road.npy.zst"} for f in full] == lean
    assert all("road.npy.zst" in f for f in full) and len(lean) == 3
    whole, caught = path.read_bytes(), 0
    for cut in range(100, len(whole), 300):  # a cut the stream reader reports, the skipping reader reports too
        path.write_bytes(whole[:cut])
        try:
            list(shards.iter_shard(path, MEMBERS))
        except DatasetError:
            caught += 1
            with pytest.raises(DatasetError, match=r"shard-000000\.tar"):
                list(shards.iter_shard(path, MEMBERS, skip=frozenset({"road"})))
    assert caught >= 10


def test_shards_are_byte_reproducible(tmp_path: Path) -> None:
    digests = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        w = shards.ShardWriter(tmp_path / name, "s.tar", MEMBERS)
        w.write(_sample("seg--c00000", 1), frames=2)
        digests.append(w.close().sha256)
    assert digests[0] == digests[1]


def test_shards_are_the_bytes_tarfile_writes_and_spans_copy_verbatim(tmp_path: Path) -> None:
    """The writer's blocks equal tarfile.addfile's (same names, headers, padding, end blocks, record size,
    also for a name past 100 characters); a span `write` returns, copied with `write_raw`, is that sample."""
    long_key = "d" * 90 + "--c00001"
    samples = [_sample("seg--c00000", 1), _sample(long_key, 2)]
    w = shards.ShardWriter(tmp_path, "mine.tar", MEMBERS)
    spans = [w.write(s, frames=2) for s in samples]
    info = w.close()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for s in samples:
            for member in sorted(k for k in s if k != "__key__"):
                ti = tarfile.TarInfo(f"{s['__key__']}.{member}")
                ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(s[member]), 0, 0o444, "spark", "spark"
                tar.addfile(ti, io.BytesIO(s[member]))
    data = (tmp_path / "mine.tar").read_bytes()
    assert data == buf.getvalue() and info.bytes == len(data)
    assert info.sha256 == files.sha256_file(tmp_path / info.name)
    assert spans[0][0] == 0 and spans[0][1] == spans[1][0] and spans[1][1] < len(data)
    copy = shards.ShardWriter(tmp_path, "copy.tar", MEMBERS)
    copy.write_raw(data[spans[1][0]:spans[1][1]], frames=2)
    got = list(shards.iter_shard(tmp_path / copy.close().name, MEMBERS))
    assert got == [samples[1]]
    scratch = shards.ShardWriter(tmp_path, "scratch.tar", MEMBERS, durable=False)
    with pytest.raises(DatasetError, match="not whole blocks"):
        scratch.write_raw(b"x" * 100, frames=1)
    assert scratch.close().sha256 == ""


@settings(max_examples=30, deadline=None)
@given(array_strategy(st.sampled_from([np.uint8, np.float16, np.float32, np.float64]), st.tuples(
    st.integers(0, 4), st.integers(1, 5))))
def test_array_encoding_round_trips(arr: np.ndarray) -> None:
    out = arrays.decode_array(arrays.encode_array(arr))
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_decode_refuses_pickled_objects() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    import zstandard

    with pytest.raises(DatasetError, match="object arrays are not accepted"):
        arrays.decode_array(zstandard.ZstdCompressor().compress(buf.getvalue()))


def test_invalid_keys_and_members_are_refused(tmp_path: Path) -> None:
    w = shards.ShardWriter(tmp_path, "s.tar", MEMBERS)
    with pytest.raises(DatasetError, match="invalid sample key"):
        w.write({"__key__": "bad.key--c00000"}, frames=1)
    with pytest.raises(DatasetError, match="unexpected member"):
        w.write({"__key__": "seg--c00000", "evil.sh": b"x"}, frames=1)
    w.abort()
    assert not list(tmp_path.iterdir())
    with pytest.raises(DatasetError, match="cannot form a sample key"):
        shards.sanitize_segment("route.with.dots")


def _tar_with(tmp_path: Path, add) -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        add(tar)
    return path


def test_reader_refuses_links_and_foreign_members(tmp_path: Path) -> None:
    def symlink(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("seg--c00000.road.npy.zst")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)

    with pytest.raises(DatasetError, match="non-file member"):
        list(shards.iter_shard(_tar_with(tmp_path, symlink), MEMBERS))

    def traversal(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("../../seg--c00000.road.npy.zst")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))

    with pytest.raises(DatasetError, match="unexpected member"):
        list(shards.iter_shard(_tar_with(tmp_path, traversal), MEMBERS))


def test_truncated_shard_is_a_dataset_error(tmp_path: Path) -> None:
    w = shards.ShardWriter(tmp_path, "s.tar", MEMBERS)
    for i in range(3):
        w.write(_sample(f"seg--c0000{i}", i), frames=2)
    info = w.close()
    path = tmp_path / info.name
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(DatasetError, match=r"s\.tar"):
        list(shards.iter_shard(path, MEMBERS))


def test_manifest_is_checked(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        shards.read_manifest(tmp_path, shards.FRAMES_FORMAT)
    files.write_json_atomic(tmp_path / "manifest.json", {"format": shards.LABELS_FORMAT, "version": 1})
    with pytest.raises(DatasetError, match="expected 'spark-distill/frames'"):
        shards.read_manifest(tmp_path, shards.FRAMES_FORMAT)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="unreadable"):
        shards.read_manifest(tmp_path, shards.FRAMES_FORMAT)
