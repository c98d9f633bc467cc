# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Eval's pictures: every line drawn in frames.png and errors_vs_horizon.png has its legend entry, and a horizon
the drive never reaches is not drawn."""

from __future__ import annotations

from typing import Any

import matplotlib
import numpy as np
import pytest

from spark_distill.evaluate.draw import CAMERA_HEIGHT, draw_overlay
from spark_distill.evaluate.run import errors_figure
from spark_distill.openpilot import contract as C
from spark_distill.openpilot.modelframe import FRAME_SHAPE

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _style(line: Any) -> tuple[str, str]:
    return matplotlib.colors.to_hex(line.get_color()), line.get_linestyle()


def _drawn_but_not_in_legend(ax: Any) -> list[tuple[str, str]]:
    """(colour, line style) of each line with points on the axes that no legend entry shows."""
    handles, _ = ax.get_legend_handles_labels()
    shown = {_style(h) for h in handles}
    drawn = {_style(line) for line in ax.get_lines() if np.isfinite(np.asarray(line.get_ydata(), float)).any()}
    return sorted(drawn - shown)


def test_frames_legend_names_paths_and_lane_lines() -> None:
    lanes = np.stack([np.stack([C.X_IDXS, np.full(C.IDX_N, y), np.full(C.IDX_N, CAMERA_HEIGHT)], -1)
                      for y in (-5.4, -1.8, 1.8, 5.4)])  # (4, 33, 3) straight lines ahead
    path = np.stack([20.0 * C.T_IDXS, np.zeros(C.IDX_N), np.full(C.IDX_N, CAMERA_HEIGHT)], -1)
    pred = {"path": path, "lanes": lanes, "lane_probs": np.array([0.1, 0.9, 0.9, 0.1])}
    fig, ax = plt.subplots()
    draw_overlay(ax, np.zeros(FRAME_SHAPE, np.uint8), [("driven (log)", {"path": path}, "#1f77b4"),
                                                       ("teacher", pred, "#2ca02c"), ("student", pred, "#ff7f0e")])
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["driven (log) path", "teacher path", "teacher lane lines (fainter: less probable)",
                      "student path", "student lane lines (fainter: less probable)"]
    assert len([line for line in ax.get_lines() if line.get_linestyle() == "--" and len(line.get_xdata())]) == 8
    assert _drawn_but_not_in_legend(ax) == []
    plt.close(fig)


def _summary(values: list[float | None]) -> dict[str, Any]:
    return {"mean": 1.0, "at": {}, "per_horizon": values}


def test_errors_legend_and_unreached_horizons() -> None:
    reached = [0.1 * i if i < 18 else None for i in range(C.IDX_N)]  # the drive reaches T_IDXS[17], 2.82 s
    metrics = {name: {"plan": _summary([0.2] * C.IDX_N), "lane_lines": _summary([0.3] * C.IDX_N),
                      "drive": {"student": _summary(reached), "teacher": _summary(reached),
                                "longest_horizon_s": float(C.T_IDXS[17])}} for name in ("a", "b")}
    fig = errors_figure(metrics)
    plan, drive, _lanes = fig.axes
    for ax in fig.axes:
        assert _drawn_but_not_in_legend(ax) == [], ax.get_title()
    assert drive.get_legend_handles_labels()[1] == ["a", "b", "teacher"]
    assert drive.get_title() == "plan vs driven path (m); the drive reaches 2.8 s"
    for line in drive.get_lines():  # nothing drawn past the drive's last horizon
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        assert x[np.isfinite(y)].max() == pytest.approx(C.T_IDXS[17])
    assert drive.get_xlim()[1] == pytest.approx(10.3) and plan.get_title() == "plan vs teacher (m)"
    plt.close(fig)
