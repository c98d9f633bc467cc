# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""A procedural road scene rendered straight to I420 camera frames. Entry point: `SceneRenderer`.

The road is a flat ground plane with three 3.7 m lanes (dashed inner lines, solid edges), grass
beyond, a sky, and a lead car (a box in the ego lane). Each camera pixel's ray is intersected with
the ground once per camera; per frame only the car's motion (distance travelled, lateral position,
road curvature, lead distance) changes, so a frame costs a few vectorised numpy passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spark_distill.modelframe import VIEW_FROM_DEVICE, CameraModel, rot_from_euler

LANE_WIDTH = 3.7  # m
CAMERA_HEIGHT = 1.22  # m above the road, a typical windshield mount
LINES = (-1.5 * LANE_WIDTH, -0.5 * LANE_WIDTH, 0.5 * LANE_WIDTH, 1.5 * LANE_WIDTH)  # lateral, road frame
LINE_HALF_WIDTH = 0.075  # m
DASH_PERIOD, DASH_ON = 12.0, 4.0  # m
LEAD_HALF_WIDTH, LEAD_HEIGHT = 0.9, 1.5  # m

# (Y, U, V) colours, BT.601 limited range
ASPHALT = (88, 128, 128)
PAINT = (200, 128, 128)
EDGE_PAINT = (180, 100, 150)  # yellow-ish
GRASS = (95, 105, 112)
SKY = (170, 150, 112)
LEAD = (45, 140, 120)


@dataclass(frozen=True)
class CarPose:
    """The scene at one instant, in the road frame (x forward along the road, y right)."""

    distance: float  # m travelled along the road
    lateral: float  # m, car position right of the ego-lane centre
    curvature: float  # 1/m, road curvature ahead (positive bends right)
    lead_distance: float  # m, distance to the lead car's rear


class SceneRenderer:
    """Renders the scene for one camera mounted with calibration `rpy` (device from calibrated)."""

    def __init__(self, camera: CameraModel, rpy: tuple[float, float, float]) -> None:
        self.camera = camera
        # shaded at half resolution and upsampled 2x: 4x cheaper, and the scene has no fine detail
        self.grids = [self._rays(camera, 0.5, rpy), self._rays(camera, 0.25, rpy)]

    @staticmethod
    def _rays(camera: CameraModel, scale: float, rpy: tuple[float, float, float]) -> dict[str, np.ndarray]:
        """Per-pixel ray directions in the calibrated frame (x fwd, y right, z down), for a plane
        that samples the camera at `scale` (pixel-centre origin, as openpilot's U/V planes do)."""
        w, h = math.ceil(camera.width * scale), math.ceil(camera.height * scale)
        plane_from_camera = np.array([[scale, 0, 0.5 * scale - 0.5], [0, scale, 0.5 * scale - 0.5], [0, 0, 1]])
        k_inv = np.linalg.inv(plane_from_camera @ camera.intrinsics)
        calib_from_camera = rot_from_euler(rpy).T @ VIEW_FROM_DEVICE.T @ k_inv
        u, v = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        rays = np.einsum("ij,jhw->ihw", calib_from_camera.astype(np.float32), np.stack([u, v, np.ones_like(u)]))
        rx, ry, rz = rays
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(rz > 1e-4, CAMERA_HEIGHT / rz, np.inf)
        ground = np.isfinite(t) & (t * rx < 400)
        gx = np.where(ground, t * rx, 0).astype(np.float32)  # ground point, only where the ray hits
        gy = np.where(ground, t * ry, 0).astype(np.float32)
        return {"gx": gx, "gy": gy, "rx": rx, "ry": ry, "rz": rz, "ground": ground}

    def render(self, pose: CarPose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One frame as I420 planes: Y (H, W), U and V (H/2, W/2), uint8."""
        w, h = self.camera.width, self.camera.height
        return (_upsample(self._shade(self.grids[0], pose, channel=0), h, w),
                _upsample(self._shade(self.grids[1], pose, channel=1), h // 2, w // 2),
                _upsample(self._shade(self.grids[1], pose, channel=2), h // 2, w // 2))

    def _shade(self, g: dict[str, np.ndarray], pose: CarPose, *, channel: int) -> np.ndarray:
        gx, gy = g["gx"], g["gy"]
        # lateral position of each ground point relative to the ego-lane centre, road frame
        lat = gy + np.float32(pose.lateral) - np.float32(0.5 * pose.curvature) * gx * gx
        along = gx + np.float32(pose.distance)
        out = np.full(gx.shape, SKY[channel], dtype=np.uint8)
        road = g["ground"]
        out[road] = GRASS[channel]
        on_road = road & (np.abs(lat) < 1.5 * LANE_WIDTH + 0.3)
        if channel == 0:  # luma texture, so the road visibly moves between frames
            texture = ((np.floor(along * 1.7) + np.floor(lat * 2.3)) % 3).astype(np.int16) * 6 - 6
            out[on_road] = np.clip(ASPHALT[0] + texture[on_road], 0, 255).astype(np.uint8)
        else:
            out[on_road] = ASPHALT[channel]
        dashed = (np.mod(along, DASH_PERIOD) < DASH_ON)
        for i, line in enumerate(LINES):
            near = road & (np.abs(lat - line) < LINE_HALF_WIDTH + 0.002 * np.abs(gx))
            edge = i in (0, len(LINES) - 1)
            out[near if edge else near & dashed] = (EDGE_PAINT if edge else PAINT)[channel]
        # lead car: the plane x = lead_distance, a box of the ego lane's width
        rx, ry, rz = g["rx"], g["ry"], g["rz"]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(rx > 1e-3, np.float32(pose.lead_distance) / rx, np.inf)
            y_hit = t * ry + np.float32(pose.lateral) - np.float32(0.5 * pose.curvature * pose.lead_distance**2)
            z_hit = t * rz
        car = np.isfinite(t) & (np.abs(y_hit) < LEAD_HALF_WIDTH) & (z_hit < CAMERA_HEIGHT) & (
            z_hit > CAMERA_HEIGHT - LEAD_HEIGHT)
        out[car] = LEAD[channel]
        return out


def _upsample(plane: np.ndarray, h: int, w: int) -> np.ndarray:
    """2x nearest-neighbour upsampling, cropped to (h, w)."""
    return np.repeat(np.repeat(plane, 2, axis=0), 2, axis=1)[:h, :w]
