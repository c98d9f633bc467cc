# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Give a synthetic route the `modelV2` messages a comma device logs: a stand-in teacher run over the
route's own frames exactly as modeld runs (ingest + the label pass, in a scratch folder), its outputs
written as modelV2 events (matched to camera frames by frameId) into each segment's rlog, with the controls its
release derives from them in `action` (desiredCurvature; desiredAcceleration only where the schema has it, which
openpilot-logging's does not). The logged outputs are then consistent with the images, as on a car. Entry point:
`add_logged_model`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from spark_distill.data import shards
from spark_distill.errors import ConfigError
from spark_distill.ingest.logs import load_schema, read_log_bytes
from spark_distill.openpilot import modelv2 as M
from spark_distill.openpilot.controls import control_of, model_controls
from spark_distill.openpilot.delays import DelayChoice
from spark_distill.synth.rlog import event, write_log
from spark_distill.synth.upload import QLOG_DECIMATION

EXECUTION_TIME_S = 0.025  # what a comma 3X's modelExecutionTime looks like


def logged_controls(vision: np.ndarray, policy: np.ndarray, v_ego: np.ndarray, delays: np.ndarray, labels: dict
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(desired curvature, desired acceleration) per frame of one segment as the teacher's release derives them from
    its outputs (openpilot.controls, with each frame's [lateral, longitudinal] `delays` the label pass fed and the
    release's low-pass from modeld's start): what modeld logs in modelV2.action."""
    c = model_controls(vision, policy, labels["output_slices"], v_ego=v_ego, delays=delays,
                       control=control_of(labels["output_slices"], labels.get("layout")),
                       smooth=DelayChoice.of_labels(labels).smooth)
    return c[:, 0], c[:, 1]


def add_logged_model(route: Path, truths: list, cfg: object, teacher: Path) -> None:
    from spark_distill.evaluate.rollout import read_segment
    from spark_distill.ingest.run import IngestConfig, ingest
    from spark_distill.label.run import LabelConfig, label

    if "truncated-log" in cfg.faults:  # type: ignore[attr-defined]
        raise ConfigError("a truncated log cannot take appended modelV2 messages; drop --fault truncated-log")
    scratch = Path(tempfile.mkdtemp(prefix="synth-modelv2-"))
    try:
        ingest(IngestConfig(inputs=tuple(str(t.path) for t in truths), out=scratch, workers=1))
        label(LabelConfig(root=scratch, teacher=(teacher,), name="logged", backend="onnxruntime", batch=2,
                          device="cpu"))
        labels = shards.read_manifest(scratch / "labels" / "logged", shards.LABELS_FORMAT)
        slices = labels["output_slices"]
        names = [s["name"] for s in shards.read_manifest(scratch / "frames", shards.FRAMES_FORMAT)["segments"]]
        schema = load_schema()
        for truth in truths:
            name = next(n for n in names if n.replace("|", "_").replace("/", "_") == truth.name.replace("/", "_"))
            seg = read_segment(scratch, "logged", name)
            rows = M.rows_from_outputs(seg.teacher_vision, seg.teacher_policy, slices)
            blocks = M.split_blocks(rows)  # views into rows
            blocks["model_execution_time"][:] = EXECUTION_TIME_S
            blocks["frame_drop_perc"][:] = 0.0
            blocks["desired_curvature"][:, 0], blocks["desired_acceleration"][:, 0] = logged_controls(
                seg.teacher_vision, seg.teacher_policy, seg.v_ego, seg.delays, labels)
            events = []
            for fid, t_ns, row in zip(seg.frame_ids, seg.timestamps_ns, rows, strict=True):
                def fill(b, fid=int(fid), t_ns=int(t_ns), row=row):
                    b.frameId, b.timestampEof = fid, t_ns
                    M.fill_message(b, row)

                events.append(event(schema, int(t_ns) + int(EXECUTION_TIME_S * 1e9), "modelV2", fill)[1])
            log_path = next(p for p in truth.path.iterdir() if p.name.split(".")[0] in ("rlog", "qlog"))
            kind, _, ext = log_path.name.partition(".")
            if kind == "qlog":  # a qlog keeps 1 in 40 modelV2 messages (synth/upload.py)
                events = events[::QLOG_DECIMATION["modelV2"]]
            raw, _ = read_log_bytes(log_path)
            write_log(truth.path, ext or "raw", raw + b"".join(events), truncated=False, name=kind)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
