# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Read a clip from its shards and decode it: the one implementation the label pass and the training
loader share. Entry points: `read_raw(index, key, stems)` (a clip's member bytes from a frames shard, by
random access) and `decode_clip(frames, labels)` (decoded arrays of a clip, labels beside frames).

Members are chosen by stem (`road`, `wide`, `desire`, ...), not by full member name, and every array is
decoded by `shards.decode_sample`, which picks the codec from the member name: a new storage codec for
a member (another extension) plugs in without a change here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spark_distill.data import arrays, codecs, shards
from spark_distill.data.index import Arena, ShardIndex
from spark_distill.errors import DatasetError

IMAGE_STEMS = frozenset({"road", "wide"})
LABEL_PASS_STEMS = IMAGE_STEMS | {"desire", "traffic", "car", "meta"}  # what the teacher's modeld state reads


def stem(member: str) -> str:
    """`road` of `road.npy.zst` (a member's name without its codec extensions)."""
    return member.split(".", 1)[0]


def read_raw(index: ShardIndex, key: str, stems: frozenset[str], arena: Arena | None = None) -> dict[str, Any]:
    """Member bytes of sample `key` whose stem is in `stems`, plus `__key__` (pread; nothing decoded). `arena`: a
    buffer to read the large members into (see ShardIndex.read_raw)."""
    return index.read_raw(key, tuple(m for m in index.members.get(key, ()) if stem(m) in stems), arena)


def decode_clip(frames: dict[str, Any], labels: dict[str, Any] | None = None, *,
                images: bool = True, into: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """A clip's arrays by stem (`road`, `desire`, `meta`, ... and, given `labels`, `vision` and `policy`).

    `images=False` never decompresses the camera members (feature-cached training does not look at
    them). `into` ({camera: uint8 buffer of at least the clip's frames}) decodes the cameras into those
    buffers (plain members with no intermediate copy) and returns views of them. Frames and labels must
    be the same sample: a key mismatch is a DatasetError."""
    out: dict[str, Any] = {}
    if not images or into is not None:
        rest = {k: v for k, v in frames.items() if stem(k) not in IMAGE_STEMS}
        for member, data in frames.items() if images else ():
            if stem(member) in IMAGE_STEMS:
                out[stem(member)] = _decode_image_into(frames["__key__"], member, data, into[stem(member)])
        frames = rest
    out.update(shards.decode_sample(frames))
    if labels is not None:
        if labels["__key__"] != frames["__key__"]:
            raise DatasetError(f"frames sample {frames['__key__']} paired with label sample {labels['__key__']}")
        lab = shards.decode_sample(labels)
        out.update((k, v) for k, v in lab.items() if k != "__key__")
    return out


def _decode_image_into(key: str, member: str, data: bytes, buf: np.ndarray) -> np.ndarray:
    if member.endswith("." + codecs.PLAIN_EXT):
        try:
            return arrays.decode_array_into(data, buf)
        except DatasetError as e:
            raise DatasetError(f"sample {key}: {member} does not decode ({e})") from e
    clip = shards.decode_sample({"__key__": key, member: data})[stem(member)]
    if clip.dtype != buf.dtype or clip.shape[1:] != buf.shape[1:] or len(clip) > len(buf):
        raise DatasetError(f"sample {key}: {member} is {clip.dtype} {clip.shape}, which does not fit "
                           f"{buf.dtype} {buf.shape}")
    buf[: len(clip)] = clip
    return buf[: len(clip)]
