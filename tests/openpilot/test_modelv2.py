# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""modelV2 rows: modelV2.action's controls through the writer and reader, per schema, and older stored rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from spark_distill.ingest.logs import load_schema
from spark_distill.openpilot import modelv2 as M


def _row(curvature: float, accel: float) -> np.ndarray:
    row = np.random.default_rng(0).standard_normal(M.WIDTH).astype(np.float32)
    blocks = M.split_blocks(row)
    blocks["lane_line_probs"][:] = blocks["lead_probs"][:] = blocks["desire_state"][:] = 0.5
    blocks["desired_curvature"][:], blocks["desired_acceleration"][:] = curvature, accel
    return row


def _through_a_message(schema, row: np.ndarray | None) -> np.ndarray:
    ev = schema.Event.new_message()
    b = ev.init("modelV2")
    if row is not None:
        M.fill_message(b, row)
    with schema.Event.from_bytes(ev.to_bytes()) as read:
        return M.row_from_message(read.modelV2)


def test_action_controls_are_logged_where_the_schema_has_them(tmp_path: Path) -> None:
    row = _row(0.0123, -0.75)
    stock = M.split_blocks(_through_a_message(load_schema(), row))  # openpilot-logging: desiredCurvature only
    assert stock["desired_curvature"][0] == np.float32(0.0123) and np.isnan(stock["desired_acceleration"][0])
    np.testing.assert_allclose(stock["position"], M.split_blocks(row)["position"])
    assert np.isnan(M.split_blocks(_through_a_message(load_schema(), None))["desired_curvature"][0]), "no action"

    import openpilot_logging  # a newer cereal: Action {desiredCurvature, desiredAcceleration, shouldStop}

    shutil.copytree(Path(openpilot_logging.__file__).parent / "cereal", tmp_path / "cereal")
    log = tmp_path / "cereal" / "log.capnp"
    text = log.read_text()
    old = "    desiredCurvature @0 :Float32;\n  }\n}"
    assert text.count(old) == 1
    log.write_text(text.replace(old, "    desiredCurvature @0 :Float32;\n    desiredAcceleration @1 :Float32;\n"
                                     "    shouldStop @2 :Bool;\n  }\n}"))
    newer = M.split_blocks(_through_a_message(load_schema(tmp_path / "cereal"), row))
    assert newer["desired_curvature"][0] == np.float32(0.0123)
    assert newer["desired_acceleration"][0] == np.float32(-0.75)


def test_rows_stored_before_the_action_columns_read_as_nan_there() -> None:
    old = np.ones((3, M.WIDTH - len(M.CONTROLS)), np.float32)  # a dataset ingested before them
    wide = M.widen(old)
    assert wide.shape == (3, M.WIDTH) and (wide[:, : old.shape[1]] == 1).all()
    assert all(np.isnan(M.split_blocks(wide)[c]).all() for c in M.CONTROLS)
    now = np.zeros((2, M.WIDTH), np.float32)
    assert M.widen(now) is now or np.array_equal(M.widen(now), now)
    assert [b for b, _, _ in M.columns()][-2:] == list(M.CONTROLS), "appended last: old rows are a prefix"
