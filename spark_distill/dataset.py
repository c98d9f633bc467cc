# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Looking at a dataset: summary, full verification, and a contact sheet of what the model sees.

Main entry points: `summarize(root)`, `verify_frames(root)`, `contact_sheet(root, png)`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spark_distill import shards
from spark_distill.errors import DatasetError
from spark_distill.modelframe import FRAME_SHAPE

FPS = 20


def frames_dir(root: Path) -> Path:
    folder = root / "frames"
    if not (folder / shards.MANIFEST).exists():
        raise DatasetError(f"{root}: no frames dataset here (no frames/{shards.MANIFEST}); run spark-distill ingest")
    return folder


def label_sets(root: Path) -> list[str]:
    """Names of the label sets under ROOT/labels (folders with a manifest), sorted."""
    return sorted(p.parent.name for p in (root / "labels").glob(f"*/{shards.MANIFEST}"))


def label_set_dir(root: Path, name: str) -> Path:
    """ROOT/labels/<name>, or a DatasetError naming the sets that exist (or saying to run label first)."""
    folder = root / "labels" / name
    if (folder / shards.MANIFEST).exists():
        return folder
    existing = label_sets(root)
    if existing:
        raise DatasetError(f"no label set {name!r} in {root / 'labels'}; label sets there: {', '.join(existing)}")
    raise DatasetError(f"{root} has no label set yet; make one with "
                       f"`spark-distill label {shlex.quote(str(root))} --teacher DIR` (or --from-log)")


def summarize(root: Path) -> dict[str, Any]:
    """Counts from the manifest: segments, clips, frames, hours, bytes, warnings, skipped segments."""
    manifest = shards.read_manifest(frames_dir(root), shards.FRAMES_FORMAT)
    frames = sum(s["frames"] for s in manifest["shards"])
    return {
        "root": str(root),
        "segments": len(manifest["segments"]),
        "skipped": len(manifest.get("skipped", [])),
        "shards": len(manifest["shards"]),
        "clips": sum(s["samples"] for s in manifest["shards"]),
        "frames": frames,
        "hours": frames / FPS / 3600,
        "bytes": sum(s["bytes"] for s in manifest["shards"]),
        "frames_dropped": sum(s["frames_dropped"] for s in manifest["segments"]),
        "warnings": sum(len(s["warnings"]) for s in manifest["segments"]),
        "settings": manifest["settings"],
        "label_sets": sorted(p.parent.name for p in (root / "labels").glob(f"*/{shards.MANIFEST}")),
    }


@dataclass
class Verification:
    """Problems found by verify_frames, one line each."""

    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)


def check_frames_sample(s: dict[str, Any], car_columns: int | None, *, images: bool = True) -> list[str]:
    """Shape, dtype and meta problems of one decoded frames sample (empty when it is sound). `car_columns`
    None accepts any width; `images` False skips road and wide (a reader that did not decode them)."""
    meta = s.get("meta")
    fids = meta.get("frame_ids") if isinstance(meta, dict) else None
    if not (isinstance(fids, list) and fids and all(type(f) is int for f in fids)
            and isinstance(meta.get("segment"), str) and type(meta.get("clip")) is int):
        return ["meta.json lacks frame_ids (ints), segment or clip"]
    t = len(fids)
    expect = {
        "road": ((t, *FRAME_SHAPE), np.uint8), "wide": ((t, *FRAME_SHAPE), np.uint8),
        "desire": ((t, 8), np.float32), "traffic": ((2,), np.float32), "car": ((t, car_columns), np.float32),
        "pose": ((t, 12), np.float32), "gps": ((t, 6), np.float64),
    }
    if not images:
        del expect["road"], expect["wide"]
    problems = []
    for name, (shape, dtype) in expect.items():
        arr = s.get(name)
        if car_columns is None and name == "car" and arr is not None and arr.ndim == 2 and arr.shape[1] > 0:
            shape = (t, arr.shape[1])
        if arr is None:
            problems.append(f"missing {name}")
        elif arr.shape != shape or arr.dtype != dtype:
            problems.append(f"{name} is {arr.dtype}{list(arr.shape)}, expected {np.dtype(dtype)}{list(shape)}")
    return problems


def check_label_sample(d: dict[str, Any], frames: int, widths: dict[str, int]) -> list[str]:
    """Problems of one decoded label sample: one float16 row of each model's width per frame."""
    problems = []
    for member, width in widths.items():
        arr = d.get(member)
        if arr is None or arr.dtype != np.float16 or arr.shape != (frames, width):
            got = "missing" if arr is None else f"{arr.dtype}{list(arr.shape)}"
            problems.append(f"{member} is {got}, expected float16[{frames}, {width}]")
    return problems


def label_widths(manifest: dict[str, Any]) -> dict[str, int]:
    """Width of each model's output vector in a label set (from its output slices)."""
    return {m: max(v[1] for v in manifest["output_slices"][m].values()) for m in ("vision", "policy")}


def verify_frames(root: Path) -> Verification:
    """Re-hash every shard against the manifest, then decode every sample and check it."""
    folder = frames_dir(root)
    manifest = shards.read_manifest(folder, shards.FRAMES_FORMAT)
    result = Verification()
    ncar = len(manifest["car_columns"])
    for entry in manifest["shards"]:
        path = folder / entry["name"]
        result.shards += 1
        if not path.exists():
            result.problems.append(f"{entry['name']}: missing")
            continue
        if shards.sha256_file(path) != entry["sha256"]:
            result.problems.append(f"{entry['name']}: sha256 differs from the manifest (corrupt or modified)")
            continue
        count = 0
        try:
            for raw in shards.iter_shard(path, shards.FRAMES_MEMBERS):
                count += 1
                missing = shards.missing_members(raw)
                if missing:
                    result.problems.append(f"{entry['name']} {raw['__key__']}: missing {missing}")
                    continue
                sample = shards.decode_sample(raw)
                result.problems += [f"{entry['name']} {raw['__key__']}: {p}"
                                    for p in check_frames_sample(sample, ncar)]
        except DatasetError as e:
            result.problems.append(str(e))
        result.samples += count
        if count != entry["samples"]:
            result.problems.append(f"{entry['name']}: {count} samples, manifest says {entry['samples']}")
    return result


def verify_labels(root: Path, name: str) -> Verification:
    """Check label set `name` against its manifest and its frames: binding, sha256, keys in the same order,
    one float16 row per frame of the matching width."""
    folder = root / "labels" / name
    manifest = shards.read_manifest(folder, shards.LABELS_FORMAT)
    fdir = frames_dir(root)
    frames = shards.read_manifest(fdir, shards.FRAMES_FORMAT)
    result = Verification()
    binding = [{"name": s["name"], "sha256": s["sha256"]} for s in frames["shards"]]
    if manifest["frames_shards"] != binding[: len(manifest["frames_shards"])]:
        result.problems.append(f"labels/{name} is bound to another frames dataset")
        return result
    widths = label_widths(manifest)
    frames_by_name = {e["name"]: e for e in frames["shards"]}
    for entry in manifest["shards"]:
        path = folder / entry["name"]
        result.shards += 1
        if not path.exists() or shards.sha256_file(path) != entry["sha256"]:
            result.problems.append(f"labels/{name}/{entry['name']}: missing or sha256 differs from the manifest")
            continue
        try:
            labels = list(shards.iter_shard(path, shards.LABEL_MEMBERS))
            source = list(shards.iter_shard(fdir / frames_by_name[entry["name"]]["name"], shards.FRAMES_MEMBERS))
        except (DatasetError, KeyError) as e:
            result.problems.append(f"labels/{name}/{entry['name']}: {e}")
            continue
        if [x["__key__"] for x in labels] != [x["__key__"] for x in source]:
            result.problems.append(f"labels/{name}/{entry['name']}: keys differ from the frames shard")
            continue
        for lab, src in zip(labels, source, strict=True):
            try:
                t = len(json.loads(src["meta.json"])["frame_ids"])
                d = shards.decode_sample(lab)
            except (DatasetError, KeyError, TypeError, ValueError) as e:
                result.problems.append(f"labels/{name}/{entry['name']} {e}")
                continue
            result.problems += [f"labels/{name}/{entry['name']} {lab['__key__']}: {p}"
                                for p in check_label_sample(d, t, widths)]
        result.samples += len(labels)
    return result


def contact_sheet(root: Path, png: Path, *, clips: int = 4) -> Path:
    """A PNG of a few clips spread over the dataset: road and wide, first and last frame, as the model sees them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spark_distill.modelframe import yuv6_to_rgb

    folder = frames_dir(root)
    manifest = shards.read_manifest(folder, shards.FRAMES_FORMAT)
    total = sum(s["samples"] for s in manifest["shards"])
    wanted = set(np.linspace(0, max(total - 1, 0), num=min(clips, total)).round().astype(int).tolist())
    rows, index = [], 0
    for entry in manifest["shards"]:
        for raw in shards.iter_shard(folder / entry["name"], shards.FRAMES_MEMBERS):
            if index in wanted:
                s = shards.decode_sample(raw)
                rows.append((raw["__key__"], s["road"], s["wide"], s["meta"]))
            index += 1
    if not rows:
        raise DatasetError(f"{root}: the dataset has no clips to show")
    fig, axes = plt.subplots(len(rows), 4, figsize=(16, 2.2 * len(rows)), squeeze=False)
    for ax_row, (key, road, wide, meta) in zip(axes, rows, strict=True):
        last = len(road) - 1
        panels = [(road[0], "road, first"), (road[last], "road, last"), (wide[0], "wide, first"),
                  (wide[last], "wide, last")]
        for ax, (frame, title) in zip(ax_row, panels, strict=True):
            ax.imshow(yuv6_to_rgb(frame))
            ax.set_title(f"{key} {title}" if title == "road, first" else title, fontsize=7)
            ax.axis("off")
        if meta.get("flags"):
            ax_row[0].text(4, 250, ", ".join(meta["flags"]), color="yellow", fontsize=6)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(png.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png)
    return png
