# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""A procedural road scene rendered straight to I420 camera frames. Entry point: `SceneRenderer`.

The road is a flat ground plane with three lanes (3.7 m unless the pose says otherwise; dashed inner lines,
solid edges), grass
beyond, a sky, and a lead car (a box in the ego lane). Each camera pixel's ray is intersected with
the ground once per camera; per frame only the car's motion (distance travelled, lateral position,
road curvature, lead distance) changes, so a frame costs a few vectorised numpy passes.

Pixels are made to look like a camera's, not a cartoon's, so that storage and loader figures
measured on synthetic drives mean something: asphalt and grass texture fixed to the ground (it moves
with the road), a sky brightening towards the horizon, a slowly drifting exposure, lens vignetting
and per-frame sensor noise. Tuned so a packed model frame compresses about as well as a real comma
frame (zstd level 3: ~2.2x; see benchmarks/storage.md). Geometry is untouched by all of this.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass

import numpy as np

from spark_distill.openpilot.modelframe import VIEW_FROM_DEVICE, CameraModel, rot_from_euler

LANE_WIDTH = 3.7  # m, the classic drive's (a varied drive draws its own)
CAMERA_HEIGHT = 1.22  # m above the road, a typical windshield mount
LINES = (-1.5, -0.5, 0.5, 1.5)  # lateral, in lane widths from the ego-lane centre (road frame)
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

# camera realism (Y in DN of 8-bit limited range); see the module docstring
NOISE_Y, NOISE_UV = 8.0, 3.0  # sensor noise std, per frame (what survives x265 at crf 28 sets the zstd ratio)
VIGNETTE = 0.3  # relative luma fall-off in the image corners
EXPOSURE_SWING = 0.05  # relative exposure drift with distance travelled


@dataclass(frozen=True)
class CarPose:
    """The scene at one instant, in the road frame (x forward along the road, y right)."""

    distance: float  # m travelled along the road
    lateral: float  # m, car position right of the ego-lane centre
    curvature: float  # 1/m, road curvature ahead (positive bends right)
    lead_distance: float  # m, distance to the lead car's rear
    lane_width: float = LANE_WIDTH  # m


class SceneRenderer:
    """Renders the scene for one camera mounted with calibration `rpy` (device from calibrated)."""

    def __init__(self, camera: CameraModel, rpy: tuple[float, float, float], *, seed: int = 0) -> None:
        self.camera = camera
        # shaded at half resolution and upsampled 2x: 4x cheaper; full-resolution detail comes from the noise
        self.grids = [self._rays(camera, 0.5, rpy), self._rays(camera, 0.25, rpy)]
        self.vignette = _vignette(*self.grids[0]["gx"].shape)
        self.seed = seed
        self.frames = 0  # frames rendered: seeds each frame's noise, so a renderer's output is reproducible

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
        gain = 1.0 + EXPOSURE_SWING * (0.7 * math.sin(pose.distance / 53.0) + 0.3 * math.sin(pose.distance / 17.3))
        luma = self._shade(self.grids[0], pose, channel=0).astype(np.float32)
        luma = 16.0 + (luma - 16.0) * (self.vignette * np.float32(gain))  # exposure, lens fall-off
        rng = np.random.default_rng((self.seed, self.frames))  # fresh noise every frame, never a repeat
        self.frames += 1
        planes = (_upsample(luma, h, w), _upsample(self._shade(self.grids[1], pose, channel=1), h // 2, w // 2),
                  _upsample(self._shade(self.grids[1], pose, channel=2), h // 2, w // 2))
        return tuple(_add_noise(p, rng, std) for p, std in  # type: ignore[return-value]
                     zip(planes, (NOISE_Y, NOISE_UV, NOISE_UV), strict=True))

    def _shade(self, g: dict[str, np.ndarray], pose: CarPose, *, channel: int) -> np.ndarray:
        gx, gy = g["gx"], g["gy"]
        # lateral position of each ground point relative to the ego-lane centre, road frame
        lat = gy + np.float32(pose.lateral) - np.float32(0.5 * pose.curvature) * gx * gx
        along = gx + np.float32(pose.distance)
        out = np.full(gx.shape, SKY[channel], dtype=np.uint8)
        road = g["ground"]
        on_road = road & (np.abs(lat) < 1.5 * pose.lane_width + 0.3)
        if channel == 0:  # sky brightens towards the horizon; ground texture moves with the road
            out[:] = np.clip(SKY[0] + 40.0 * np.exp(-8.0 * np.maximum(-g["rz"], 0)) - 20.0, 0, 255).astype(np.uint8)
            fade = np.clip(25.0 / np.maximum(gx, 1.0), 0.0, 1.0)  # far texture blurs out, as through a lens
            grain = _ground_texture(along, lat, cell=0.08) * 10.0 + _ground_texture(along, lat, cell=0.9) * 10.0
            blades = _ground_texture(along, lat, cell=0.25) * 28.0 + _ground_texture(along, lat, cell=2.5) * 18.0
            texture = np.where(on_road, ASPHALT[0] + grain * fade, GRASS[0] + blades * fade)
            out[road] = np.clip(texture[road], 0, 255).astype(np.uint8)
        else:
            out[road] = GRASS[channel]
            out[on_road] = ASPHALT[channel]
        dashed = (np.mod(along, DASH_PERIOD) < DASH_ON)
        for i, k in enumerate(LINES):
            near = road & (np.abs(lat - k * pose.lane_width) < LINE_HALF_WIDTH + 0.002 * np.abs(gx))
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


def _ground_texture(along: np.ndarray, lat: np.ndarray, *, cell: float) -> np.ndarray:
    """Value noise in [-0.5, 0.5) on a ground grid of `cell` metres: a hash of the cell's integer coordinates."""
    ix = np.floor(along / np.float32(cell)).astype(np.int64).astype(np.uint32)
    iy = np.floor(lat / np.float32(cell)).astype(np.int64).astype(np.uint32)
    hsh = ix * np.uint32(374761393) + iy * np.uint32(668265263)
    hsh = (hsh ^ (hsh >> np.uint32(13))) * np.uint32(1274126177)
    return ((hsh >> np.uint32(24)).astype(np.float32) - 128.0) / 256.0


def _vignette(h: int, w: int) -> np.ndarray:
    """Relative luma of a lens's fall-off: 1 at the centre, 1 - VIGNETTE in the corners (h, w) float32."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32),
                         indexing="ij")
    return 1.0 - np.float32(VIGNETTE / 2) * (xx * xx + yy * yy)


@functools.cache
def _gaussian_table(std: float) -> np.ndarray:
    """int16 (256,): Gaussian quantiles at the centres of 256 equal-probability bins, scaled to std `std` and
    rounded, so a look-up of uniform random bytes gives Gaussian-shaped noise (~5x faster than standard_normal)."""
    q = np.array([statistics.NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)])
    return np.rint(q * (std / q.std())).astype(np.int16)


def _add_noise(plane: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    """plane + fresh Gaussian noise of std `std`, saturated to uint8."""
    words = np.frombuffer(rng.bytes(plane.size), np.uint8).reshape(plane.shape)
    out = plane.astype(np.int16)
    out += np.take(_gaussian_table(std), words)
    return np.clip(out, 0, 255, out=out).astype(np.uint8)
