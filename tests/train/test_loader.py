# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The streaming loader: lockstep keys, splits, equal batches per rank, exact mid-epoch resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from spark_distill.data import shards
from spark_distill.data.pairs import read_lockstep, shard_pairs, val_segments
from spark_distill.errors import DatasetError
from spark_distill.train.loader import ClipStream, make_loader


def _stream(root: Path, split: str = "train", **kw) -> ClipStream:
    pairs, manifest = shard_pairs(root, "set", split=split, val_fraction=0.25, seed=0)
    args = dict(batch=3, clip_len=10, burn_in=2, seed=7, mask_warmup=False) | kw
    return ClipStream(pairs, manifest, **args)


def _keys(stream: ClipStream, epoch: int = 0, skip: int = 0) -> list[str]:
    stream.epoch, stream.skip = epoch, skip
    return [k for b in make_loader(stream) for k in b["keys"]]


def test_splits_are_by_segment_and_disjoint(labeled: Path) -> None:
    train = {k for p in shard_pairs(labeled, "set", split="train", val_fraction=0.25, seed=0)[0] for k in p.keys}
    val = {k for p in shard_pairs(labeled, "set", split="val", val_fraction=0.25, seed=0)[0] for k in p.keys}
    assert train and val and not train & val
    seg = lambda k: k.rsplit("--c", 1)[0]  # noqa: E731
    assert not {seg(k) for k in train} & {seg(k) for k in val}
    assert val_segments(["a", "b"], fraction=0.0, seed=0) == set()
    assert val_segments(["a"], fraction=0.9, seed=0) == set(), "a lone segment trains"
    assert len(val_segments(["a", "b", "c"], fraction=1.0, seed=0)) == 2, "one segment always trains"


def test_batches_hold_frames_and_labels_of_the_same_clip(labeled: Path) -> None:
    stream = _stream(labeled)
    batch = next(iter(make_loader(stream)))
    assert batch["road"].shape == (3, 10, 6, 128, 256) and batch["vision"].shape[:2] == (3, 10)
    assert batch["mask"].shape == (3, 10) and not batch["mask"][:, :2].any(), "burn-in frames take no loss"
    key = batch["keys"][0]
    for e in shards.read_manifest(labeled / "labels" / "set", shards.LABELS_FORMAT)["shards"]:
        for s in shards.iter_shard(labeled / "labels" / "set" / e["name"], shards.LABEL_MEMBERS):
            if s["__key__"] == key:
                want = shards.decode_sample(s)["vision"]
                np.testing.assert_array_equal(batch["vision"][0, : len(want)].numpy(), want)


def test_epochs_reshuffle_and_resume_is_exact(labeled: Path) -> None:
    stream = _stream(labeled, workers=2)
    full = _keys(stream)
    assert len(full) == len(set(full)) == len(stream) * 3, "each clip at most once, whole batches"
    assert _keys(stream, epoch=1) != full
    for p in range(1, len(stream)):
        assert _keys(stream, skip=p) == full[3 * p:], f"resume at batch {p}"


def test_ranks_get_equal_batches_and_disjoint_clips(labeled: Path) -> None:
    a, b = _stream(labeled, process_rank=0, world=2), _stream(labeled, process_rank=1, world=2)
    ka, kb = _keys(a), _keys(b)
    assert len(ka) == len(kb) > 0 and not set(ka) & set(kb)


def test_key_mismatch_names_the_shard(labeled: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(labeled / "frames", root / "frames")
    shutil.copytree(labeled / "labels" / "set", root / "labels" / "set")
    pairs, manifest = shard_pairs(root, "set", split="train", val_fraction=0.25, seed=0)
    first = pairs[0]
    other = next(p for p in pairs if p.name != first.name)
    shutil.copy(root / "labels" / "set" / other.name, root / "labels" / "set" / first.name)
    stream = ClipStream([first], manifest, batch=1, clip_len=10, burn_in=0, seed=0, train=False)
    with pytest.raises(DatasetError, match=f"{first.name}: frames sample .* has label sample"):
        list(make_loader(stream))


def test_an_epoch_where_some_worker_lacks_a_batch_yields_nothing_anywhere(labeled: Path) -> None:
    """Every rank must run the same number of steps: when the smallest share holds less than one batch, no rank
    yields one (a rank that did would wait forever in DDP for the others)."""
    pairs, manifest = shard_pairs(labeled, "set", split="train", val_fraction=0)
    probe = ClipStream(pairs, manifest, batch=1, clip_len=10, burn_in=4, seed=0, world=2)
    shares = [sum(len(p.keys) for p in probe._shards(0, r, 0)) for r in range(2)]
    assert shares[0] != shares[1], shares
    batch = max(shares)  # the larger share holds exactly one batch, the smaller none
    counts = []
    for rank in range(2):
        stream = ClipStream(pairs, manifest, batch=batch, clip_len=10, burn_in=4, seed=0, process_rank=rank, world=2)
        assert len(stream) == 0
        counts.append(sum(1 for _ in make_loader(stream)))
    assert counts == [0, 0]


def test_frames_within_the_warmup_after_a_modeld_restart_take_no_loss(labeled: Path, tmp_path: Path) -> None:
    """A hole longer than the history (or unreadable clips) restarts modeld's state mid-segment: the labels of the
    frames after it come from start-up zeros again, like the segment's first ones (the label manifest's resets)."""
    root = tmp_path / "copy"
    shutil.copytree(labeled / "frames", root / "frames")
    shutil.copytree(labeled / "labels" / "set", root / "labels" / "set")
    manifest = shards.read_manifest(root / "labels" / "set", shards.LABELS_FORMAT)
    pairs, _ = shard_pairs(root, "set", split="train", val_fraction=0.0, seed=0)
    masks: dict[str, dict[int, bool]] = {}
    for restart in (False, True):
        seg = next(iter(manifest["segments"]))
        first = manifest["segments"][seg].get("first_frame_id", 0)
        manifest["warmup_frames"] = 4
        manifest["segments"][seg]["resets"] = [first + 13] if restart else []
        stream = ClipStream(pairs, manifest, batch=1, clip_len=10, burn_in=0, seed=0, train=False)
        got: dict[int, bool] = {}
        for f, lab in (s for p in pairs for s in read_lockstep(p)):
            if f["__key__"].rsplit("--c", 1)[0] == shards.sanitize_segment(seg):
                arrays = stream.clip_arrays(f, lab)
                fids = shards.decode_sample(f)["meta"]["frame_ids"]
                got |= {int(i) - first: bool(m) for i, m in zip(fids, arrays["mask"], strict=False)}
        masks[str(restart)] = got
    plain, restarted = masks["False"], masks["True"]
    assert [k for k, m in sorted(plain.items()) if not m] == [0, 1, 2, 3], "the segment's own warm-up"
    assert [k for k, m in sorted(restarted.items()) if not m] == [0, 1, 2, 3, 13, 14, 15, 16]
