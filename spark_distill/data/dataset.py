# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Looking at a dataset: summary, full verification, and a contact sheet of what the model sees.

Main entry points: `summarize(root)` (and `summary_rows`: its numbers in human units, with `segment_issues`),
`verify_frames(root)` and `verify_labels(root, name)` (one problem line per damaged file, with the next step),
`contact_sheet(root, png)`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spark_distill.data import files, shards, store
from spark_distill.errors import DatasetError, first_line
from spark_distill.openpilot.modelframe import FRAME_SHAPE

FPS = 20


def frames_dir(root: Path) -> Path:
    folder = root / "frames"
    if not (folder / shards.MANIFEST).exists():
        raise DatasetError(f"{root}: no frames dataset here (no frames/{shards.MANIFEST}); run spark-distill ingest")
    return folder


# why ingest dropped a segment's frames (the keys of a manifest segment's "dropped"), in words
DROP_REASONS = {"encoder_gaps": "never written by the encoder", "unindexed": "without an encode-index entry",
                "undecoded": "undecodable", "unpaired": "without a wide-camera frame",
                "wide_only": "wide-camera frames without a road frame (not counted as dropped)"}


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
    """Counts from the manifest: segments, clips, frames, seconds, bytes, warnings, skipped segments, and
    `segment_issues`: the segments with dropped frames, warnings or skipped."""
    manifest = shards.read_manifest(frames_dir(root), shards.FRAMES_FORMAT)
    frames = sum(s["frames"] for s in manifest["shards"])
    return {
        "root": str(root),
        "segments": len(manifest["segments"]),
        "skipped": len(manifest.get("skipped", [])),
        "shards": len(manifest["shards"]),
        "clips": sum(s["samples"] for s in manifest["shards"]),
        "frames": frames,
        "seconds": frames / FPS,
        "bytes": sum(s["bytes"] for s in manifest["shards"]),
        "frames_dropped": sum(s["frames_dropped"] for s in manifest["segments"]),
        "warnings": sum(len(s["warnings"]) for s in manifest["segments"]),
        "segment_issues": segment_issues(manifest),
        "settings": manifest["settings"],
        "label_sets": label_sets(root),
        "sources": segment_sources(manifest),
    }


def segment_sources(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    """How many segments came from each log kind (rlog/qlog), road video (file and size) and pose source; manifests
    from before these were recorded count as "fcamera.hevc" and "unrecorded"."""
    out: dict[str, dict[str, int]] = {"log": {}, "road video": {}, "pose from": {}}
    for seg in manifest["segments"]:
        cam = seg.get("camera") or {}
        video = f"{cam['file']} {cam['width']}x{cam['height']}" if cam else seg.get("sources", {}).get("road", "?")
        for key, value in (("log", seg.get("log") or "?"), ("road video", video),
                           ("pose from", seg.get("pose_source") or "unrecorded")):
            out[key][value] = out[key].get(value, 0) + 1
    return out


def segment_issues(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Per segment with dropped frames or warnings, and per skipped segment: name, frames kept, frames dropped,
    why (in words) and its warnings; skipped segments have kept 0, dropped None and ingest's reason."""
    rows = []
    for seg in manifest["segments"]:
        dropped = seg.get("dropped") if isinstance(seg.get("dropped"), dict) else {}  # older manifests lack it
        if seg["frames_dropped"] or dropped or seg["warnings"]:
            why = ", ".join(f"{n} {DROP_REASONS.get(k, str(k).replace('_', ' '))}" for k, n in dropped.items())
            rows.append({"segment": seg["name"], "kept": seg["frames_kept"], "dropped": seg["frames_dropped"],
                         "why": why, "warnings": [str(w) for w in seg["warnings"]]})
    rows += [{"segment": str(s.get("name")), "kept": 0, "dropped": None, "why": f"skipped: {s.get('reason')}",
              "warnings": []} for s in manifest.get("skipped", []) if isinstance(s, dict)]
    return rows


def summary_rows(s: dict[str, Any]) -> dict[str, str]:
    """`summarize`'s numbers as `inspect` prints them: durations and sizes in human units."""
    from spark_distill.units import format_duration, format_size

    issues = s["segment_issues"]
    dropping = sum(1 for r in issues if r["dropped"])
    warned = sum(1 for r in issues if r["warnings"])
    return {
        "segments": f"{s['segments']:,}" + (f" ({s['skipped']:,} skipped, listed below)" if s["skipped"] else ""),
        "shards": f"{s['shards']:,}", "clips": f"{s['clips']:,}",
        "frames": f"{s['frames']:,} ({format_duration(s['seconds'])} at {FPS} Hz)",
        "size": format_size(s["bytes"]),
        "frames dropped": f"{s['frames_dropped']:,}" + (f" in {dropping:,} segment(s), listed below" if dropping
                                                          else ""),
        "warnings": f"{s['warnings']:,}" + (f" in {warned:,} segment(s), listed below" if warned else ""),
        "label sets": ", ".join(s["label_sets"]) or "none (run spark-distill label)",
        **{key: ", ".join(f"{v} ({n:,} segment{'s' if n > 1 else ''})" for v, n in counts.items())
           for key, counts in s.get("sources", {}).items() if counts},
    }


@dataclass
class Verification:
    """What verify_frames or verify_labels found: one problem line per damaged file (what is wrong, then the next
    step), and notes on intact files that could not be checked in full (a label shard whose frames shard is
    damaged is not blamed for it)."""

    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    damaged: set[str] = field(default_factory=set)  # names of the shards with a problem


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
    """Width of each member's vector in a label set: the model's output width as the label pass recorded it
    (`widths`: padding included, e.g. a 0.10.3 policy's 1000 where its heads end at 998); label sets without it
    (older, or built from a log) end at their last head."""
    widths = manifest.get("widths")
    if isinstance(widths, dict) and all(isinstance(widths.get(m), int) for m in ("vision", "policy")):
        return {m: widths[m] for m in ("vision", "policy")}
    return {m: max(v[1] for v in manifest["output_slices"][m].values()) for m in ("vision", "policy")}


def state_start(frame_ids: np.ndarray, segment: dict[str, Any] | None) -> np.ndarray:
    """Per frame, the frame id where the label pass last started modeld's state from zeros: the segment's first
    frame or a later restart (the label manifest's `segments.<name>`: `first_frame_id`, and `resets`, where a hole
    longer than the history or unreadable clips started the state over). Without the segment's entry, its first
    frame is taken to be `frame_ids[0]`."""
    fids = np.asarray(frame_ids, np.int64)
    if segment is None:
        starts = fids[:1]
    else:
        starts = np.unique(np.asarray([segment.get("first_frame_id", 0), *segment.get("resets", [])], np.int64))
    return starts[np.clip(np.searchsorted(starts, fids, side="right") - 1, 0, None)]


def past_warmup(frame_ids: np.ndarray, segment: dict[str, Any] | None, warmup: int) -> np.ndarray:
    """Per frame, whether its label was made with the teacher's history full: `warmup` frames or more past the
    last start of modeld's state (`state_start`; labels after a restart come from start-up zeros again)."""
    fids = np.asarray(frame_ids, np.int64)
    return fids - state_start(fids, segment) >= warmup


def _first(issues: list[str], limit: int = 3) -> str:
    return "; ".join(issues[:limit]) + (f" (and {len(issues) - limit} more)" if len(issues) > limit else "")


def _own_words(e: Exception, shard: str) -> str:
    """A shard reader's message without the shard's name in front (the problem line names it already)."""
    return str(e).removeprefix(f"{shard}: ")


def segments_by_shard(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """Frames shard name -> the segments with clips in it (empty where the manifest is incomplete)."""
    from spark_distill.data.index import plan_segments

    try:
        plans = plan_segments(manifest)
    except DatasetError:
        return {}
    names = [s["name"] for s in manifest["shards"]]
    held: dict[str, list[str]] = {}
    for plan in plans:
        for i in dict.fromkeys(c.shard for c in plan.clips):
            held.setdefault(names[i], []).append(plan.name)
    return held


def frames_next_step(shard: str, segments: list[str]) -> str:
    """What to do about a damaged frames shard: it cannot be rewritten in place, but ingest writes it again."""
    named = ", ".join(segments[:5]) + (f" and {len(segments) - 5} more" if len(segments) > 5 else "")
    return ((f"it holds clips of {named}. " if segments else "")
            + "Next: restore it from a copy, or re-run the ingest command(s) that built this dataset, in the same "
              f"order, with a new --out and copy that frames/{shard} here (ingest is deterministic: the same inputs "
              "give the same shard, and the label sets stay valid)")


def _absent(path: Path) -> str | None:
    """Why a shard cannot be read, or None: one of a remote root's is fetched first (data/store.py)."""
    try:
        store.ensure_local(path)
    except DatasetError as e:
        return first_line(e)
    return None if path.exists() else "missing"


def _frames_shard_issues(path: Path, entry: dict[str, Any], car_columns: int, result: Verification) -> list[str]:
    if why := _absent(path):
        return [why]
    if files.sha256_file(path) != entry["sha256"]:
        return ["sha256 differs from the manifest (damaged or modified)"]
    issues, count = [], 0
    try:
        for raw in shards.iter_shard(path, shards.FRAMES_MEMBERS):
            count += 1
            missing = shards.missing_members(raw)
            if missing:
                issues.append(f"{raw['__key__']}: missing {missing}")
                continue
            sample = shards.decode_sample(raw)
            issues += [f"{raw['__key__']}: {p}" for p in check_frames_sample(sample, car_columns)]
    except DatasetError as e:
        issues.append(_own_words(e, path.name))
    result.samples += count
    if count != entry["samples"]:
        issues.append(f"{count} samples, manifest says {entry['samples']}")
    return issues


def verify_frames(root: Path) -> Verification:
    """Re-hash every shard against the manifest, then decode every sample and check it; a damaged shard is one
    problem line naming the segments it holds and the next step."""
    folder = frames_dir(root)
    manifest = shards.read_manifest(folder, shards.FRAMES_FORMAT)
    result = Verification()
    held = segments_by_shard(manifest)
    for entry in manifest["shards"]:
        result.shards += 1
        issues = _frames_shard_issues(folder / entry["name"], entry, len(manifest["car_columns"]), result)
        if issues:
            result.damaged.add(entry["name"])
            result.problems.append(f"frames/{entry['name']}: {_first(issues)}; "
                                   f"{frames_next_step(entry['name'], held.get(entry['name'], []))}")
    return result


def relabel_step(root: Path, name: str, manifest: dict[str, Any]) -> str:
    """The command that writes a missing or damaged shard of label set `name` again (a rerun labels just the
    shards that are not there intact)."""
    if manifest.get("source") == "log":
        return f"Next: re-run `spark-distill label {root} --from-log --name {name}`: it writes this shard again"
    teacher = manifest["teacher"]
    return (f"Next: re-run `spark-distill label {root} --teacher TEACHER --name {name} --backend "
            f"{manifest['backend'].get('name')} --precision {manifest['precision']}` (TEACHER: the folder of teacher "
            f"{teacher.get('name')!r}, sha256 {str(teacher.get('sha256'))[:8]}...): it labels this shard again")


def _frames_counterpart(fdir: Path, entry: dict[str, Any] | None, damaged: set[str] | None
                        ) -> tuple[list[dict[str, Any]] | None, str]:
    """(the frames shard's samples without their images, or None and why it cannot be compared)."""
    if entry is None:
        return None, "the frames manifest lists no such shard"
    if damaged is not None and entry["name"] in damaged:
        return None, f"frames/{entry['name']} is damaged (its own line says what to do)"
    try:
        return list(shards.iter_shard(fdir / entry["name"], shards.FRAMES_MEMBERS,
                                      skip=frozenset(shards.CAMERAS))), ""
    except DatasetError as e:
        return None, f"frames/{entry['name']} is unreadable ({_own_words(e, entry['name'])}; its own line says more)"


def _clip_frames(sample: dict[str, Any]) -> int | None:
    try:
        return len(json.loads(sample["meta.json"])["frame_ids"])
    except (KeyError, TypeError, ValueError):
        return None  # the frames shard's problem, reported with it


def verify_labels(root: Path, name: str, *, damaged_frames: set[str] | None = None) -> Verification:
    """Check label set `name` against its manifest and its frames: binding, sha256, keys in the same order,
    one float16 row per frame of the matching width. A label shard whose frames shard is damaged
    (`damaged_frames`, from verify_frames, or unreadable) is checked on its own and noted, not blamed."""
    folder = root / "labels" / name
    manifest = shards.read_manifest(folder, shards.LABELS_FORMAT)
    fdir = frames_dir(root)
    frames = shards.read_manifest(fdir, shards.FRAMES_FORMAT)
    result = Verification()
    binding = [{"name": s["name"], "sha256": s["sha256"]} for s in frames["shards"]]
    if manifest["frames_shards"] != binding[: len(manifest["frames_shards"])]:
        result.problems.append(f"labels/{name} is bound to another frames dataset. Next: label this one under a new "
                               f"--name (spark-distill label {root} --teacher TEACHER --name NEW)")
        return result
    widths = label_widths(manifest)
    frames_by_name = {e["name"]: e for e in frames["shards"]}
    for entry in manifest["shards"]:
        where, path = f"labels/{name}/{entry['name']}", folder / entry["name"]
        result.shards += 1
        issues = _label_shard_issues(path, entry, widths, result, fdir, frames_by_name.get(entry["name"]),
                                     damaged_frames, where)
        if issues:
            result.damaged.add(entry["name"])
            result.problems.append(f"{where}: {_first(issues)}. {relabel_step(root, name, manifest)}")
    return result


def _label_shard_issues(path: Path, entry: dict[str, Any], widths: dict[str, int], result: Verification,
                        fdir: Path, frames_entry: dict[str, Any] | None, damaged_frames: set[str] | None,
                        where: str) -> list[str]:
    if why := _absent(path):
        return [why]
    if files.sha256_file(path) != entry["sha256"]:
        return ["sha256 differs from the manifest (damaged or modified)"]
    try:
        labels = list(shards.iter_shard(path, shards.LABEL_MEMBERS))
    except DatasetError as e:
        return [_own_words(e, path.name)]
    result.samples += len(labels)
    source, why = _frames_counterpart(fdir, frames_entry, damaged_frames)
    if source is None:
        result.notes.append(f"{where}: checked on its own (sha256, members, dtypes, widths): intact; not compared "
                            f"with its frames: {why}")
        counts: list[int | None] = [None] * len(labels)
    elif [x["__key__"] for x in labels] != [x["__key__"] for x in source]:
        return ["keys differ from the frames shard"]
    else:
        counts = [_clip_frames(src) for src in source]
    issues = []
    for lab, frames in zip(labels, counts, strict=True):
        try:
            d = shards.decode_sample(lab)
        except (DatasetError, KeyError, TypeError, ValueError) as e:
            issues.append(f"{lab['__key__']}: {e}")
            continue
        if frames is None:  # no frames to count: the rows of its own first array
            frames = next((len(a) for m in widths if getattr(a := d.get(m), "ndim", 0) >= 1), 0)
        issues += [f"{lab['__key__']}: {p}" for p in check_label_sample(d, frames, widths)]
    return issues


def contact_sheet(root: Path, png: Path, *, clips: int = 4) -> Path:
    """A PNG of a few clips spread over the dataset: road and wide, first and last frame, as the model sees them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spark_distill.openpilot.modelframe import yuv6_to_rgb

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
