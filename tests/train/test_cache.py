# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The feature cache replays exactly the batches the streaming loader yields (every epoch, every resume position,
every rank), and only when it fits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spark_distill.data.pairs import shard_pairs
from spark_distill.errors import ConfigError
from spark_distill.train.cache import FeatureCache
from spark_distill.train.loader import ClipStream, make_loader

CPU = torch.device("cpu")


def _stream(root: Path, **kw) -> ClipStream:
    pairs, manifest = shard_pairs(root, "set", split="train", val_fraction=0.25, seed=0)
    args = dict(batch=2, clip_len=10, burn_in=2, seed=7, mask_warmup=False, images=False) | kw
    return ClipStream(pairs, manifest, **args)


def _streamed(stream: ClipStream, epoch: int, skip: int) -> list[dict]:
    stream.epoch, stream.skip = epoch, skip
    return list(make_loader(stream))


def _assert_same(cached: list[dict], streamed: list[dict]) -> None:
    assert len(cached) == len(streamed) > 0
    for c, s in zip(cached, streamed, strict=True):
        assert c["keys"] == s["keys"] and set(c) == set(s)
        for k, v in s.items():
            if isinstance(v, torch.Tensor):
                assert c[k].dtype == v.dtype and torch.equal(c[k], v), k


@pytest.mark.parametrize("workers,rank,world", [(1, 0, 1), (2, 0, 1), (2, 1, 2)])
def test_cached_batches_are_the_streamed_batches(labeled: Path, workers: int, rank: int, world: int) -> None:
    stream = _stream(labeled, workers=workers, process_rank=rank, world=world)
    cache = FeatureCache.fill(stream, device=CPU, workers=2)
    assert cache is not None and len(cache.rows) == sum(len(p.keys) for p in stream.pairs)
    assert "road" not in cache.arrays and cache.arrays["mask"].device == CPU
    for epoch, skip in ((0, 0), (1, 0), (1, 1), (0, len(stream) - 1)):
        _assert_same(list(cache.batches(epoch, skip)), _streamed(stream, epoch, skip))
    assert [b["keys"] for b in cache.batches(0)] != [b["keys"] for b in cache.batches(1)], "epochs reshuffle"


def test_driven_path_targets_are_cached_too(labeled: Path) -> None:
    from spark_distill.data import shards
    from spark_distill.data.gt_path import segment_motions

    fdir = labeled / "frames"
    names = [s["name"] for s in shards.read_manifest(fdir, shards.FRAMES_FORMAT)["shards"]]
    stream = _stream(labeled, motions=segment_motions(fdir, names))
    cache = FeatureCache.fill(stream, device=CPU)
    assert "gt_path" in cache.arrays
    _assert_same(list(cache.batches(0)), _streamed(stream, 0, 0))


def test_the_cache_takes_only_its_share_of_memory(labeled: Path) -> None:
    stream = _stream(labeled)
    assert FeatureCache.fill(stream, device=CPU, mode="off") is None
    assert FeatureCache.fill(stream, device=CPU, budget=1000) is None, "auto streams when it does not fit"
    with pytest.raises(ConfigError, match=r"the feature cache needs .* GB for .* clips"):
        FeatureCache.fill(stream, device=CPU, mode="on", budget=1000)
    with pytest.raises(ConfigError, match="--feature-cache must be one of"):
        FeatureCache.fill(stream, device=CPU, mode="yes")
    with pytest.raises(ConfigError, match="no images"):
        FeatureCache.fill(_stream(labeled, images=True), device=CPU)
