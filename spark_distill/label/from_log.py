# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Label sets from what the car logged, and the fidelity check of a teacher label set against it.

- `label_from_log(root, name)`: a label set built from the frames' `modelv2.npy.zst` (the car's own
  model outputs) instead of a teacher run — no model, no GPU. Same shards, keys and members as a teacher
  label set, split vectors (`VISION_HEADS` with a 55-wide meta; policy `plan`, `desire_state`); heads the log
  does not carry are NaN and the manifest names the heads it has (`available_heads`), so training refuses
  what it cannot use.
  Frames without a logged message are NaN rows, absent rather than values (training and eval use only the
  frames whose plan is finite: the "labelled" mask); the manifest counts them (`labelled_frames` of `frames`,
  per shard in `labelled`), which matters for a qlog: it keeps 1 modelV2 in 40. No warm-up frames: the car's
  model runs across segment boundaries, so its first outputs of a segment already have history.
- `verify_labels(root, label_set)`: a teacher label set against the logged modelV2 of the same frames,
  field by field and horizon by horizon (both sides through `modelv2.rows_from_outputs`), and the controls the
  set's release derives from its labels (`openpilot.controls.model_controls`: the layout's control source, the
  label pass's delays, the logged vEgo, modeld's low-pass over each segment's frames) against modelV2.action's
  desiredCurvature / desiredAcceleration where the log has them (a missing one is named, not an error). The
  controls are reported beside the verdict, not in it: a car's own delays (liveDelay) may differ from the label
  pass's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spark_distill import __version__
from spark_distill.data import arrays, files, shards
from spark_distill.data.dataset import frames_dir, label_set_dir
from spark_distill.data.index import ShardIndex, frames_binding, plan_segments
from spark_distill.errors import DatasetError, LabelError
from spark_distill.label.run import record_shard
from spark_distill.openpilot import contract as C
from spark_distill.openpilot import modelv2 as M
from spark_distill.openpilot.controls import control_of, model_controls
from spark_distill.openpilot.delays import DelayChoice
from spark_distill.openpilot.metadata import slices_to_json

# relative agreement that counts as "the same model": on-device fp16 inference and float16 label storage
AGREEMENT_TOLERANCE = 0.02
QLOG_MODELV2_DECIMATION = 40  # cereal/services.py: a qlog keeps 1 modelV2 message in 40


def log_slices() -> dict[str, dict[str, list[int]]]:
    return {"vision": slices_to_json(C.layout(C.VISION_HEADS, meta_width=55)),
            "policy": slices_to_json(C.layout(C.POLICY_HEADS_V2))}


def label_from_log(root: Path, name: str = "logged") -> dict[str, Any]:
    """Write labels/<name>/ from the logged modelV2; returns its manifest. Reruns skip finished shards."""
    fdir = frames_dir(root)
    frames = shards.read_manifest(fdir, shards.FRAMES_FORMAT)
    plan_segments(frames)  # refuses an incomplete dataset
    logged = [s["name"] for s in frames["segments"] if s.get("logged_model")]
    if not logged:
        raise LabelError(f"{root}: no segment's log has modelV2 messages; label with a teacher instead")
    folder = root / "labels" / name
    folder.mkdir(parents=True, exist_ok=True)
    binding = frames_binding(frames)
    frames_sha = files.sha256_file(fdir / shards.MANIFEST)
    if (folder / shards.MANIFEST).exists():
        manifest = shards.read_manifest(folder, shards.LABELS_FORMAT)
        if manifest.get("source") != "log" or manifest["frames_shards"] != binding[: len(manifest["frames_shards"])]:
            raise LabelError(f"label set {name} exists and is not the logged modelV2 of these frames; choose --name")
        manifest["frames_shards"], manifest["frames_manifest_sha256"] = binding, frames_sha
    else:
        manifest = {"format": shards.LABELS_FORMAT, "version": shards.FORMAT_VERSION,
                    "tool": f"spark-distill {__version__}", "name": name, "source": "log",
                    "frames_manifest_sha256": frames_sha, "frames_shards": binding,
                    "teacher": {"name": "logged modelV2", "sha256": "log",
                                "openpilot_versions": sorted({s["logged_model"]["openpilot_version"]
                                                              for s in frames["segments"] if s.get("logged_model")})},
                    "output_slices": log_slices(), "available_heads": list(M.LOGGED_HEADS), "backend": {"name": "log"},
                    "precision": "fp16", "warmup_frames": 0, "segments": {}, "shards": [], "skipped_shards": []}
    slices = manifest["output_slices"]
    done = shards.intact_shards(folder, manifest["shards"])  # a missing or damaged shard is written again
    per_shard = manifest.setdefault("labelled", {})  # shard -> [frames with a logged output, frames]
    for entry in frames["shards"]:
        if entry["name"] in done:
            continue
        writer = shards.ShardWriter(folder, entry["name"], shards.LABEL_MEMBERS)
        counts = [0, 0]
        try:
            for sample in shards.iter_shard(fdir / entry["name"], shards.FRAMES_MEMBERS):
                meta = json.loads(sample["meta.json"])
                n = len(meta["frame_ids"])
                rows = (M.widen(arrays.decode_array(sample["modelv2.npy.zst"])) if "modelv2.npy.zst" in sample
                        else np.full((n, M.WIDTH), np.nan, np.float32))
                vision, policy = M.outputs_from_rows(rows, slices)
                counts[0] += int(np.isfinite(rows[:, 0]).sum())
                counts[1] += n
                manifest["segments"].setdefault(meta["segment"], {"first_frame_id": meta["frame_ids"][0]})
                writer.write({"__key__": sample["__key__"], "vision.npy.zst": arrays.encode_array(
                    vision.astype(np.float16)), "policy.npy.zst": arrays.encode_array(policy.astype(np.float16))},
                    frames=n)
        except BaseException:
            writer.abort()
            raise
        per_shard[entry["name"]] = counts
        record_shard(manifest, frames, writer.close().to_json())
        shards.write_manifest(folder, manifest)
    manifest["labelled_frames"] = sum(c[0] for c in per_shard.values())
    manifest["frames"] = sum(c[1] for c in per_shard.values())
    manifest["logs"] = sorted({s.get("log", "rlog") for s in frames["segments"]})
    shards.write_manifest(folder, manifest)
    return manifest


CONTROL_NAMES = {"desired_curvature": ("desired curvature", "desiredCurvature"),
                 "desired_acceleration": ("desired acceleration", "desiredAcceleration")}
CONTROL_FLOOR = {"desired_curvature": 1e-4, "desired_acceleration": 1e-2}  # 1/m, m/s^2: under |logged| in relative


@dataclass
class Agreement:
    frames: int = 0  # frames with both a label and a logged message
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # block -> {max_abs, mean_abs, scale, ...}
    agree: bool = False  # every field within the tolerance (the verdict and exit code)
    derived_from: str = ""  # the layout's control source (openpilot.controls): plan, desired_curvature or action
    controls: dict[str, dict[str, Any]] = field(default_factory=dict)  # control -> {frames, max_abs, ...}
    controls_missing: dict[str, str] = field(default_factory=dict)  # control -> why it was not compared
    controls_agree: bool | None = None  # every compared control within the tolerance; None: none compared


def _difference(x: np.ndarray, y: np.ndarray, floor: float) -> dict[str, Any]:
    diff = np.abs(x - y)
    scale = float(np.abs(y).mean()) + floor
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "scale": scale,
            "relative": float(diff.mean() / scale)}


def verify_labels(root: Path, label_set: str, *, tolerance: float = AGREEMENT_TOLERANCE) -> Agreement:
    """Teacher labels vs the logged modelV2, per field (and per horizon for plan blocks), and the controls the
    label set's release derives from the labels (openpilot.controls, with the label pass's delays and the logged
    vEgo) vs modelV2.action's; the verdict (`agree`) is the fields'."""
    fdir = frames_dir(root)
    frames = shards.read_manifest(fdir, shards.FRAMES_FORMAT)
    labels = shards.read_manifest(label_set_dir(root, label_set), shards.LABELS_FORMAT)
    if labels.get("source") == "log":
        raise LabelError(f"label set {label_set} was built from the log itself; compare a teacher label set")
    slices = labels["output_slices"]
    control = control_of(slices, labels.get("layout"))
    choice = DelayChoice.of_labels(labels)  # each frame's delays, as the label pass fed them
    done = {s["name"] for s in labels["shards"]}
    ours, logged, derived = [], [], []
    prev, run_end = (0.0, 0.0), None  # the low-pass state after the last clip and (segment, frame id) it ended at
    for entry in frames["shards"]:
        if entry["name"] not in done:
            continue
        index = ShardIndex(fdir / entry["name"], shards.FRAMES_MEMBERS)
        try:
            lab_iter = shards.iter_shard(root / "labels" / label_set / entry["name"], shards.LABEL_MEMBERS)
            for lab in lab_iter:
                f = index.read(lab["__key__"], ("modelv2.npy.zst", "car.npy.zst", "meta.json"))
                if "modelv2" not in f:
                    continue
                rows = M.widen(f["modelv2"])  # a dataset ingested before the action columns: NaN there
                have = np.isfinite(rows[:, 0])
                if not have.any():
                    continue
                vision = arrays.decode_array(lab["vision.npy.zst"]).astype(np.float32)
                policy = arrays.decode_array(lab["policy.npy.zst"]).astype(np.float32)
                ours.append(M.rows_from_outputs(vision[have], policy[have], slices))
                logged.append(rows[have])
                # the controls over every frame of the clip (modeld's low-pass runs on, through frames a qlog did
                # not keep), carried on from the clip before where this one follows it in the segment
                ids = f["meta"]["frame_ids"]
                if run_end != (f["meta"]["segment"], ids[0] - 1):
                    prev = (0.0, 0.0)  # modeld's start-up
                controls = model_controls(vision, policy, slices, control=control,
                                          v_ego=np.nan_to_num(f["car"][:, 0], nan=0.0),  # as the label pass feeds it
                                          delays=choice.per_frame(f["meta"]), smooth=choice.smooth, prev=prev)
                prev, run_end = (float(controls[-1, 0]), float(controls[-1, 1])), (f["meta"]["segment"], ids[-1])
                derived.append(controls[have])
        finally:
            index.close()
    if not ours:
        raise DatasetError(f"{root}: no frame has both a label in {label_set} and a logged modelV2 message")
    a, b = np.concatenate(ours), np.concatenate(logged)
    result = Agreement(frames=len(a), derived_from=control)
    worst = 0.0
    for block, start, stop in M.columns():
        if block in ("model_execution_time", "frame_drop_perc", *M.CONTROLS):
            continue
        x, y = a[:, start:stop], b[:, start:stop]
        both = np.isfinite(x) & np.isfinite(y)
        if not both.any():
            continue
        entry = _difference(x[both], y[both], 1e-3)
        if block in dict(M.PLAN_FIELDS):  # per horizon: x, y, z at T_IDXS
            per = np.abs(x - y).reshape(len(x), 3, C.IDX_N)
            entry["per_horizon_mean_abs"] = [round(float(v), 6) for v in np.nanmean(per, axis=(0, 1))]
        result.fields[block] = entry
        worst = max(worst, entry["relative"])
    result.agree = worst <= tolerance
    _compare_controls(result, np.concatenate(derived), M.split_blocks(b), tolerance)
    return result


def _compare_controls(result: Agreement, derived: np.ndarray, logged: dict[str, np.ndarray],
                      tolerance: float) -> None:
    """Fill result.controls (or controls_missing) from derived (F, 2) and the logged action columns."""
    for k, block in enumerate(M.CONTROLS):
        label, capnp_name = CONTROL_NAMES[block]
        y = logged[block][:, 0]
        if not np.isfinite(y).any():
            result.controls_missing[block] = (
                f"{label}: the log has no modelV2.action.{capnp_name} (no action in its messages, or a schema "
                "without the field at ingest: openpilot-logging's cereal has desiredCurvature only; ingest "
                "--schema-dir DIR with a newer log.capnp reads it)")
            continue
        if not np.any(y[np.isfinite(y)]):
            result.controls_missing[block] = (f"{label}: modelV2.action.{capnp_name} is 0 in every message (a "
                                              "release whose action does not fill it)")
            continue
        x = derived[:, k]
        both = np.isfinite(x) & np.isfinite(y)
        if not both.any():
            result.controls_missing[block] = f"{label}: no frame where both the labels' and the log's are finite"
            continue
        result.controls[block] = {"frames": int(both.sum()), **_difference(x[both], y[both], CONTROL_FLOOR[block])}
    if result.controls:
        result.controls_agree = max(c["relative"] for c in result.controls.values()) <= tolerance
