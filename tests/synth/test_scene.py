# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The scene renderer's camera realism: sensor noise per frame, lens vignetting, reproducible output."""

from __future__ import annotations

import numpy as np

from spark_distill.openpilot.modelframe import cameras_for
from spark_distill.synth.scene import CAMERA_HEIGHT, NOISE_Y, VIGNETTE, CarPose, SceneRenderer, _vignette

POSE = CarPose(distance=10.0, lateral=0.2, curvature=0.0, lead_distance=30.0)


def test_each_frame_gets_fresh_sensor_noise() -> None:
    renderer = SceneRenderer(cameras_for(1164, 874)[0], (0.0, 0.0, 0.0))
    frames = [renderer.render(POSE)[0].astype(np.int16) for _ in range(6)]
    for i in range(1, 6):  # same scene, so only the noise differs, and no frame repeats an earlier frame's noise
        diff = frames[i] - frames[0]
        assert abs(diff.mean()) < 0.2
        assert abs(diff.std() / np.sqrt(2) - NOISE_Y) < 0.25 * NOISE_Y


def test_renderers_with_one_seed_render_the_same_frames() -> None:
    cam = cameras_for(1164, 874)[0]
    a, b = SceneRenderer(cam, (0.0, 0.02, 0.0), seed=3), SceneRenderer(cam, (0.0, 0.02, 0.0), seed=3)
    for pa, pb in zip(a.render(POSE), b.render(POSE), strict=True):
        np.testing.assert_array_equal(pa, pb)
    assert not np.array_equal(SceneRenderer(cam, (0.0, 0.02, 0.0), seed=4).render(POSE)[0], a.render(POSE)[0])


def test_vignette_darkens_the_corners() -> None:
    v = _vignette(101, 201)
    assert v[50, 100] == 1.0
    np.testing.assert_allclose([v[0, 0], v[-1, -1], v[0, -1]], 1.0 - VIGNETTE, rtol=1e-6)
    assert 1.0 - VIGNETTE < v[0, 100] < 1.0


def test_lines_are_painted_at_the_poses_lane_width() -> None:
    """Straight road, car centred: each lane line's paint lies where a ground point at k lane widths projects
    (the inner lines' dashes at 25 m ahead), and nowhere near where another width would put it."""
    from spark_distill.synth.fit import model_frame_renderers

    renderer = model_frame_renderers()["road"]
    k = renderer.camera.intrinsics
    x = 25.0  # m ahead: inside a dash of the inner lines (4 m painted of every 12 m)

    def row_col(y: float) -> tuple[int, int]:  # calibrated frame (x fwd, y right, z down) -> render pixel
        u, v, w = k @ np.array([y, CAMERA_HEIGHT, x])
        return round(v / w), round(u / w)

    for width, other in ((3.3, 3.9), (3.9, 3.3)):
        luma = renderer.render(CarPose(distance=0.0, lateral=0.0, curvature=0.0, lead_distance=300.0,
                                       lane_width=width))[0].astype(np.float32)
        for lanes in (-1.5, -0.5, 0.5, 1.5):
            r, c = row_col(lanes * width)
            assert luma[r, c - 1:c + 2].mean() > 150, (width, lanes)  # paint (Y 200/180) on asphalt (Y ~88)
            r, c = row_col(lanes * other)
            assert luma[r, c - 1:c + 2].mean() < 130, (width, lanes)
