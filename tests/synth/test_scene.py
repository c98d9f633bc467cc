# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The scene renderer's camera realism: sensor noise per frame, lens vignetting, reproducible output."""

from __future__ import annotations

import numpy as np

from spark_distill.modelframe import cameras_for
from spark_distill.synth.scene import NOISE_Y, VIGNETTE, CarPose, SceneRenderer, _vignette

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
