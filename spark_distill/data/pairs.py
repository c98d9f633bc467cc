# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""A label set beside its frames: the shard pairs of a split (`shard_pairs`), read in lockstep with keys checked
on both sides (`read_lockstep`), and the train/validation split every pass shares (`val_segments`, `val_clips`:
whole segments held out, or in a dataset of one segment its last seconds). Training, eval and export read
labeled data through here."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_distill.data import shards
from spark_distill.data.clips import IMAGE_STEMS
from spark_distill.data.dataset import frames_dir, label_set_dir
from spark_distill.data.index import SegmentPlan, frames_binding, plan_segments
from spark_distill.errors import DatasetError

# a label set built from a log (label --from-log) that leaves frames unlabelled and labels fewer than this many is
# refused by train: a qlog keeps 1 modelV2 in 40, so a short qlog drive labels a handful of frames
MIN_LABELLED_FRAMES = 100


@dataclass(frozen=True)
class ShardPair:
    name: str
    frames: Path
    labels: Path
    keys: tuple[str, ...]  # this split's clips in the shard, in shard order


def val_segments(names: list[str], *, fraction: float, seed: int) -> set[str]:
    """Held-out segments: a stable hash of (seed, name) below `fraction`; at least one when fraction > 0,
    and never all of them (one segment alone stays for training)."""
    if fraction <= 0 or len(names) < 2:
        return set()
    score = {n: int(hashlib.sha256(f"{seed}:{n}".encode()).hexdigest()[:8], 16) / 2**32 for n in names}
    ranked = sorted(names, key=score.__getitem__)
    chosen = {n for n in ranked if score[n] < fraction} or {ranked[0]}
    return chosen - {ranked[-1]}


def val_clips(plans: list[SegmentPlan], *, fraction: float, seed: int) -> set[str]:
    """Keys of the held-out clips: whole segments (`val_segments`) when there are several; in a dataset of one
    segment, its last `fraction` of clips (at least one, never all): a held-out time range."""
    if fraction <= 0:
        return set()
    if len(plans) == 1:
        clips = plans[0].clips
        n = min(len(clips) - 1, max(1, round(fraction * len(clips))))
        return {c.key for c in clips[len(clips) - n:]} if n > 0 else set()
    held = val_segments([p.name for p in plans], fraction=fraction, seed=seed)
    return {c.key for p in plans if p.name in held for c in p.clips}


def shard_pairs(root: Path, label_set: str, *, split: str, val_fraction: float = 0.1, seed: int = 0
                ) -> tuple[list[ShardPair], dict[str, Any]]:
    """The labeled shards with the clips of `split` ('train' or 'val'; val may be empty), and the label manifest."""
    fdir = frames_dir(root)
    frames = shards.read_manifest(fdir, shards.FRAMES_FORMAT)
    ldir = label_set_dir(root, label_set)
    labels = shards.read_manifest(ldir, shards.LABELS_FORMAT)
    binding = frames_binding(frames)
    if labels["frames_shards"] != binding[: len(labels["frames_shards"])]:
        raise DatasetError(f"label set {label_set} is bound to another frames dataset; label this one again")
    plans = plan_segments(frames)
    held_out = val_clips(plans, fraction=val_fraction, seed=seed)
    wanted = {c.key for p in plans for c in p.clips if (c.key in held_out) == (split == "val")}
    labeled = {s["name"] for s in labels["shards"]}
    pairs = []
    for i, entry in enumerate(frames["shards"]):
        if entry["name"] not in labeled:
            continue
        keys = tuple(c.key for p in plans for c in p.clips if c.shard == i and c.key in wanted)
        if keys:
            pairs.append(ShardPair(entry["name"], fdir / entry["name"], ldir / entry["name"], keys))
    if not pairs and split == "train":  # a split without validation clips is empty, not an error
        raise DatasetError(f"no labeled training clips in {root} with label set {label_set}")
    return pairs, labels


def read_lockstep(pair: ShardPair, *, images: bool = True, every: bool = False) -> Iterator[tuple[dict, dict]]:
    """(frames sample, labels sample) of the pair's wanted clips (`every`: of all its clips, in shard order), raw
    bytes, keys checked on both sides. `images=False` (feature-cached training) never reads the camera members'
    bytes."""
    wanted = None if every else set(pair.keys)
    labels = shards.iter_shard(pair.labels, shards.LABEL_MEMBERS)
    for f in shards.iter_shard(pair.frames, shards.FRAMES_MEMBERS, skip=frozenset() if images else IMAGE_STEMS):
        lab = next(labels, None)
        if lab is None or lab["__key__"] != f["__key__"]:
            got = "nothing" if lab is None else lab["__key__"]
            raise DatasetError(f"{pair.name}: frames sample {f['__key__']} has label sample {got}; "
                               "the label set does not match its frames shard")
        if wanted is None or f["__key__"] in wanted:
            yield f, lab
