# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The project's shards in your own code, through webdataset's own API.

The shards are plain WebDataset tars, so `webdataset.WebDataset(urls)` already groups their members into
samples; what it cannot do is decode them. This module adds that, with the project's one decoder
(`shards.decode_member`: every camera codec, the checksummed `.npy.zst` arrays) and its one output parser
(`openpilot.outputs.parse_outputs`, with the label set's `output_slices`):

- `decoder(label_manifest=None)`: a handler for `WebDataset(...).decode(handler)`: camera members become uint8
  clips [T, 6, 128, 256], array members arrays, `meta.json` a dict, and with a label set's manifest the label
  members `vision.npy.zst` / `policy.npy.zst` become the teacher's parsed heads ({head: array or {mean, std, ...}},
  from float32; without one, the raw float16 vectors).
- `by_stem(sample)`: a decoded sample keyed by stem (`road`, `wide`, `desire`, `meta`, ...) whatever the codec,
  the heads of both label members merged under `heads`.
- `labelled_dataset(root, label_set)` and `frames_dataset(root)`: ready pipelines (`webdataset.DataPipeline` with
  the fluid interface: `.shuffle(n)`, `.batched(n)`, `.map(f)` ...) that yield one decoded clip per sample, frames
  joined with their label sample by key (a label shard has its frames shard's name and keys, in order). Shards
  are dealt to torchrun ranks and DataLoader workers by webdataset's `split_by_node` / `split_by_worker`.

docs/formats.md says what every member holds; README.md ("Your own training loop") has an example.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset

from spark_distill.data import shards
from spark_distill.data.dataset import frames_dir, label_widths
from spark_distill.data.index import plan_segments
from spark_distill.data.pairs import shard_pairs
from spark_distill.errors import DatasetError, first_line
from spark_distill.openpilot.outputs import parse_outputs

LABEL_STEMS = ("vision", "policy")


@dataclass(frozen=True)
class Decoder:
    """A webdataset decode handler (`handler(".road.y6d.zst", data)`, as `webdataset.Decoder` calls it): the decoded
    value of a spark-distill member, None for anything else. Parses label vectors into heads when it has the label
    set's `output_slices` and `widths`. `strict`: a member this project does not write is a DatasetError, not left
    to webdataset's other handlers (one of which unpickles). A class, not a closure, so a DataLoader can send it to
    spawned workers."""

    slices: dict[str, dict[str, list[int]]] | None = None
    widths: dict[str, int] | None = None
    strict: bool = False

    def __call__(self, key: str, data: bytes) -> Any:
        member = key.lstrip(".")
        name = member.split(".", 1)[0]
        if member not in shards.FRAMES_MEMBERS and member not in shards.LABEL_MEMBERS:
            if self.strict:
                raise DatasetError(f"unexpected member {member!r}: not a spark-distill shard")
            return None  # not ours: webdataset's own handlers (or the bytes) take it
        try:
            _, value = shards.decode_member(member, data)
        except (DatasetError, ValueError) as e:
            raise DatasetError(f"{member} does not decode ({first_line(e, 120)})") from e
        if self.slices is None or name not in LABEL_STEMS:
            return value
        assert self.widths is not None
        if value.ndim != 2 or value.shape[1] != self.widths[name]:
            raise DatasetError(f"{member} is {value.dtype} {list(value.shape)}; the label set's manifest says "
                               f"[frames, {self.widths[name]}]: is it this set's manifest?")
        return parse_outputs(value.astype(np.float32), self.slices[name])


def decoder(label_manifest: dict[str, Any] | None = None, *, strict: bool = False) -> Decoder:
    """A decode handler for `webdataset.WebDataset(urls).decode(decoder(...))` over frames or label shards. With a
    label set's manifest (`labels/<set>/manifest.json`, parsed), label members decode to the teacher's heads;
    without one, to the raw [T, width] float16 vectors. `strict`: see `Decoder`."""
    if label_manifest is None:
        return Decoder(strict=strict)
    if not isinstance(label_manifest, dict):
        raise DatasetError(f"a label set's manifest is a dict (the parsed JSON), not {type(label_manifest).__name__}")
    if problem := shards.output_slices_problem(label_manifest.get("output_slices")):
        raise DatasetError(f"not a label set's manifest: {problem}")
    return Decoder(label_manifest["output_slices"], label_widths(label_manifest), strict=strict)


def _own_error(exn: Exception) -> bool:
    """webdataset wraps a handler's error in a DecodingError without a message: ours comes out as one DatasetError
    naming the sample."""
    if isinstance(exn, webdataset.DecodingError) and isinstance(exn.__cause__, DatasetError):
        raise DatasetError(f"sample {exn.key}: {exn.__cause__}") from exn
    raise exn


def _decode(handler: Decoder) -> Any:
    """The decode stage of this module's pipelines: our handler alone (no webdataset defaults before or after)."""
    return webdataset.decode(handler, pre=[], post=[], handler=_own_error)


def by_stem(sample: dict[str, Any]) -> dict[str, Any]:
    """A decoded sample keyed by stem: `road.y6d.zst` -> `road`, `meta.json` -> `meta`, ...; label members parsed
    into heads are merged under `heads` (raw ones stay `vision`, `policy`). `__key__` and `__url__` are kept."""
    out: dict[str, Any] = {k: sample[k] for k in ("__key__", "__url__") if k in sample}
    for member, value in sample.items():
        if member.startswith("__"):
            continue
        name = member.split(".", 1)[0]
        if name in LABEL_STEMS and isinstance(value, dict):
            out.setdefault("heads", {}).update(value)
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class JoinLabels:
    """A pipeline stage: {"url": frames shard} -> the shard's samples, each with the members of the label sample of
    the same key from the label shard of the same name in `labels` (a folder or URL prefix). The two shards are read
    as streams side by side by webdataset's `tarfile_samples`; a key that differs is a DatasetError."""

    labels: str

    def __call__(self, sources: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for source in sources:
            url = source["url"]
            name = url.rsplit("/", 1)[-1]
            label_url = f"{self.labels}/{name}"
            labels = webdataset.tarfile_samples([{"url": label_url}])
            for frames in webdataset.tarfile_samples([{"url": url}]):
                lab = next(labels, None)
                if lab is None or lab["__key__"] != frames["__key__"]:
                    got = "nothing" if lab is None else lab["__key__"]
                    raise DatasetError(f"{name}: frames sample {frames['__key__']} has label sample {got} in "
                                       f"{label_url}; the label set does not match its frames shard")
                frames.update((k, v) for k, v in lab.items() if not k.startswith("__"))
                yield frames
            if (extra := next(labels, None)) is not None:
                raise DatasetError(f"{label_url}: label sample {extra['__key__']} has no frames sample in {url}")


class Pipeline(webdataset.DataPipeline, webdataset.FluidInterface):
    """A webdataset DataPipeline with the fluid interface (`.shuffle(n)`, `.batched(n)`, `.map(f)`, ...), as
    `webdataset.WebDataset` has; a torch IterableDataset."""


def _pipeline(urls: list[str], *stages: Any, seed: int | None) -> Pipeline:
    return Pipeline(webdataset.SimpleShardList(urls, seed=seed), webdataset.split_by_node,
                    webdataset.split_by_worker, *stages)


def labelled_dataset(root: str | Path, label_set: str, *, heads: bool = True, seed: int | None = None) -> Pipeline:
    """Every labelled clip of dataset ROOT with label set `label_set`, one dict per clip: `road`, `wide` (uint8
    [T, 6, 128, 256]), `desire`, `traffic`, `car`, `pose`, `gps` (and `modelv2` where logged) arrays, `meta`, and
    `heads` (the teacher's parsed outputs; `heads=False`: the raw `vision` and `policy` vectors instead), `__key__`.
    Clips come in shard order (`seed`: the shards in an order shuffled with it); shards are dealt to torchrun ranks
    and DataLoader workers. The set must be bound to this frames dataset, as `train` requires."""
    root = Path(root)
    pairs, manifest = shard_pairs(root, label_set, split="train", val_fraction=0)
    return _pipeline([str(p.frames) for p in pairs], JoinLabels(str(pairs[0].labels.parent)),
                     _decode(decoder(manifest if heads else None, strict=True)), webdataset.map(by_stem), seed=seed)


def frames_dataset(root: str | Path, *, seed: int | None = None) -> Pipeline:
    """Every clip of the frames dataset ROOT (no labels), one dict per clip as `labelled_dataset` gives."""
    folder = frames_dir(Path(root))
    manifest = shards.read_manifest(folder, shards.FRAMES_FORMAT)
    plan_segments(manifest)  # refuses a dataset an interrupted ingest left half-written
    if not manifest["shards"]:
        raise DatasetError(f"{root}: the frames dataset has no shards yet")
    return _pipeline([str(folder / e["name"]) for e in manifest["shards"]], webdataset.tarfile_to_samples(),
                     _decode(decoder(strict=True)), webdataset.map(by_stem), seed=seed)
