# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Fit the stand-in teacher (`synth.drive_model`) to what the synthetic generator knows.

Two stages, both seeded and deterministic:
1. vision: varied synthetic drives (`SynthConfig(varied=True)`: speed, curvature, lead, lane-change
   direction and time, lane width drawn per seed) are rendered by the route writer's own scene renderer
   straight into the calibrated model frames (the geometry ingest's warp makes of any calibration; 30x
   cheaper than rendering 1928x1208 cameras, encoding, decoding and warping them); the conv net learns
   each frame's scene state (lateral position, curvature, lead distance and closing rate, speed, lane
   width) from the 2-frame stacks, with photometric augmentation (contrast, brightness, sensor noise, blur) so it holds
   on HEVC-compressed, ingested frames; its loss weighs curvature most (`VISION_LOSS_WEIGHT`: the plan
   bends with it). Its error on a held-out drive is measured.
2. policy: many short drives (each with its own lane change) are simulated without pixels; their scene
   state, with noise of the size the vision net showed, goes through modeld's own history buffers
   (`label.state.ModeldState`) exactly as the label pass feeds it, and the MLP learns the path actually
   driven (`train.gt_path.SegmentMotion` over the drive's pose, the same ground truth eval uses), the
   desire state and desired curvature.
Entry point: `fit_teacher(out, FitConfig)` -> FitResult; `spark-distill synth-teacher DIR --fit`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spark_distill.data import files, shards
from spark_distill.errors import ConfigError
from spark_distill.openpilot import contract as C
from spark_distill.synth.drive_model import PLAN_COLUMNS, STATE, STATE_LEN, DrivePolicy, DriveVision, ImageNet

log = logging.getLogger(__name__)

LANE_STATES = {"off": 0, "preLaneChange": 1, "laneChangeStarting": 2, "laneChangeFinishing": 3}
DIRECTIONS = {"none": 0, "left": 1, "right": 2}
SOURCES = ("fit.py", "drive_model.py")  # the code whose output the shipped pair is (fit.json records its digest)
# the least vision error the policy is fitted to tolerate, per scene-state entry (physical units); lane width
# is read from line spacing far less well on HEVC-compressed, warped frames than on the held-out render that
# measures the net (0.23 m RMS vs 0.08 m), and a policy that trusts it bends its lane-change path with it
NOISE_FLOOR = {"lateral": 0.02, "curvature": 2e-5, "lead_distance": 0.2, "lead_rate": 0.02, "speed": 0.2,
               "lane_width": 0.3}
# how much the vision's loss weighs each scene-state entry (of its O(1)-scaled error): the plan bends with the
# curvature it reads (1e-4 1/m is 0.1 m at 2 s at 22 m/s), far more than with lead or speed errors of their size
VISION_LOSS_WEIGHT = {"lateral": 1.0, "curvature": 4.0, "lead_distance": 0.5, "lead_rate": 0.5, "speed": 0.5,
                      "lane_width": 1.0}
FIT_STAGES = ("rendering drives", "rendering, encoding and ingesting drives", "vision net steps",
              "simulating the policy's drives", "policy net steps")
SHIPPED = Path(__file__).parent / "fitted"  # package data: <contract>/ holds the pair `fit_teacher(FitConfig())` wrote
PAIR_FILES = ("driving_vision.onnx", "driving_vision_metadata.pkl", "driving_policy.onnx",
              "driving_policy_metadata.pkl", "fit.json")


@dataclass(frozen=True, kw_only=True)
class FitConfig:
    """What to fit on and for how long. Defaults: the shipped teacher (a few CPU minutes)."""

    contract: str = "v1"
    seed: int = 0
    # many short drives rather than a few long ones, for the same frames: each brings its own lane width,
    # calibration, curvature and lane change (a 5 s drive holds its whole 4 s lane change), and fewer seconds of
    # video to encode and ingest
    routes: int = 40  # rendered drives the vision net learns from (one more is held out to measure it)
    seconds: float = 5.0  # per rendered drive: 100 frames
    vision_steps: int = 2000  # ~0.15 CPU-s each, one thread (1500 left 0.26 m lateral RMS on held-out ingested frames)
    vision_batch: int = 24
    ingested: int = 12  # of the rendered drives, also rendered as cameras, HEVC-encoded and ingested (and the held-out)
    ingested_weight: int = 2  # each ingested drive counts as this many rendered ones in the vision's samples
    # the policy learns each lane change from one simulated drive: 64 drives of 30 s (64 lane changes, none in
    # the first 4 s of cold history buffers) left it 0.6 m off at 2 s on held-out drives given the true scene
    # state; 1024 drives of 10 s: 0.35 m
    policy_drives: int = 1024  # simulated drives (no pixels) for the policy
    policy_seconds: float = 10.0
    policy_steps: int = 2000  # ~8 CPU-ms each
    policy_batch: int = 256

    def __post_init__(self) -> None:
        if self.contract != "v1":  # the one layout of the project's own; v2 (no release shipped it) is gone
            raise ConfigError(f"unknown contract {self.contract!r}: the fitted teacher has the project's own layout, "
                              "v1 (`synth-teacher --release` writes a release's)")
        if self.routes < 1 or self.seconds < 2.0 or self.policy_drives < 1 or self.policy_seconds < 1.0:
            raise ConfigError("fit needs at least 1 route of 2 s and 1 simulated drive of 1 s")
        if min(self.vision_steps, self.policy_steps, self.vision_batch, self.policy_batch) < 1:
            raise ConfigError("fit steps and batches must be >= 1")
        if self.ingested < 0 or self.ingested_weight < 1:
            raise ConfigError("fit: ingested drives >= 0, their weight >= 1")


@dataclass
class FitResult:
    files: dict[str, Path]
    vision_error: dict[str, float] = field(default_factory=dict)  # held-out route, RMS per state entry
    policy_loss: float = 0.0


def source_digest() -> str:
    """sha256 over the fitting code: a shipped pair whose fit.json names another digest is stale."""
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()


def copy_fitted(out: Path, contract: str = "v1") -> dict[str, Path]:
    """Copy the shipped fitted teacher pair (and its fit.json) into `out`."""
    src = SHIPPED / contract
    missing = [f for f in PAIR_FILES if not (src / f).exists()]
    if missing:
        raise ConfigError(f"no fitted {contract} teacher is shipped ({src / missing[0]} missing); "
                          "run `spark-distill synth-teacher DIR --fit`")
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in PAIR_FILES:
        tmp = out / (name + ".tmp")
        shutil.copyfile(src / name, tmp)
        tmp.replace(out / name)
        files[name] = out / name
    return files


# -- stage 1: vision ------------------------------------------------------------------------------------
def route_configs(cfg: FitConfig) -> list:
    """The varied drives of the fit (the last one held out); seeds far from the demo's and the tests'."""
    from spark_distill.synth.route import SynthConfig

    return [SynthConfig(segments=1, seconds=cfg.seconds, varied=True, seed=10_000 + 100 * cfg.seed + i)
            for i in range(cfg.routes + 1)]


def scene_state(dyn: object, t: np.ndarray) -> np.ndarray:
    """(len(t), STATE_LEN) physical scene state of a drive at times t (s from the route start)."""
    fns = (dyn.lateral, dyn.curvature, dyn.lead_distance, dyn.lead_rate, dyn.speed,  # type: ignore[attr-defined]
           dyn.lane_width)  # type: ignore[attr-defined]
    return np.array([[f(float(x)) for f in fns] for x in t], np.float64)


@dataclass(frozen=True)
class ModelFrameCamera:
    """The model frame itself as a pinhole camera, at twice its resolution (SceneRenderer shades at half)."""

    width: int
    height: int
    intrinsics: np.ndarray


def model_frame_renderers() -> dict[str, object]:
    """Renderers that draw the scene straight into the calibrated road (medmodel) and wide (sbigmodel) frames:
    the geometry ingest's warp produces from any calibration, without encoding, decoding and warping."""
    from spark_distill.openpilot.modelframe import MEDMODEL_INTRINSICS, MODEL_H, MODEL_W, SBIGMODEL_INTRINSICS
    from spark_distill.synth.scene import SceneRenderer

    up = np.array([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5], [0.0, 0.0, 1.0]])  # model pixel centres -> 2x pixel centres
    with np.errstate(invalid="ignore"):  # rays exactly at the horizon: inf * 0, masked out by the renderer
        return {cam: SceneRenderer(ModelFrameCamera(2 * MODEL_W, 2 * MODEL_H, up @ k), (0.0, 0.0, 0.0))  # type: ignore
                for cam, k in (("road", MEDMODEL_INTRINSICS), ("wide", SBIGMODEL_INTRINSICS))}


def render_model_frame(renderer: object, pose: object) -> np.ndarray:
    """One packed model frame [6, 128, 256] uint8: the 2x render averaged over 2x2 pixels."""
    from spark_distill.openpilot.modelframe import pack_yuv6

    planes = renderer.render(pose)  # type: ignore[attr-defined]
    half = [p.reshape(p.shape[0] // 2, 2, p.shape[1] // 2, 2).mean((1, 3)).round().astype(np.uint8) for p in planes]
    return pack_yuv6(*half)


def render_drives(configs: list, on_done: Callable[[int], None] | None = None) -> list[dict[str, np.ndarray]]:
    """Per drive: road, wide (N, 6, 128, 256) uint8 model frames at 20 Hz and the true state (N, STATE_LEN);
    `on_done(drives done)` after each."""
    from spark_distill.synth.route import FPS, Dynamics

    renderers = model_frame_renderers()
    data = []
    for rc in configs:
        dyn = Dynamics(rc, rc.segments * rc.seconds)
        t = np.arange(round(rc.segments * rc.seconds * FPS)) / FPS
        poses = [dyn.pose(float(x)) for x in t]
        data.append({cam: np.stack([render_model_frame(r, pose) for pose in poses]) for cam, r in renderers.items()})
        data[-1]["state"] = scene_state(dyn, t)
        if on_done is not None:
            on_done(len(data))
    return data


def ingested_drives(configs: list, work: Path, on_done: Callable[[int], None] | None = None
                    ) -> list[dict[str, np.ndarray]]:
    """`render_drives`' data for drives that go the user's way: camera frames rendered, HEVC-encoded, ingested
    (decoded and warped with the logged calibration). The geometry is the direct render's (tests/synth/
    test_semantic.py checks the lane marks to 0.2 px); what differs is appearance, which the net must not read
    lane width from."""
    from spark_distill.ingest.run import IngestConfig, ingest
    from spark_distill.synth.route import FPS, Dynamics, write_route

    data = []
    for k, rc in enumerate(configs):
        write_route(work / f"route{k}", rc)
        ingest(IngestConfig(inputs=(str(work / f"route{k}"),), out=work / f"ds{k}", workers=1))
        fdir = work / f"ds{k}" / "frames"
        frames: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for entry in shards.read_manifest(fdir, shards.FRAMES_FORMAT)["shards"]:
            for sample in shards.iter_shard(fdir / entry["name"], shards.FRAMES_MEMBERS):
                clip = shards.decode_sample(sample)
                for j, fid in enumerate(clip["meta"]["frame_ids"]):
                    frames[int(fid)] = (clip["road"][j], clip["wide"][j])
        fids = np.arange(max(frames) + 1)
        if len(frames) != len(fids):
            raise RuntimeError(f"ingested drive {k} lacks frames")  # a plain synthetic route drops none
        data.append({"road": np.stack([frames[int(f)][0] for f in fids]),
                     "wide": np.stack([frames[int(f)][1] for f in fids]),
                     "state": scene_state(Dynamics(rc, rc.segments * rc.seconds), fids / FPS)})
        shutil.rmtree(work / f"route{k}")
        shutil.rmtree(work / f"ds{k}")
        if on_done is not None:
            on_done(len(data))
    return data


def _stack(frames: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """(len(rows), 12, 128, 256) uint8: frames row-4 and row, as modeld stacks them."""
    return torch.from_numpy(np.concatenate([frames[rows - C.TEMPORAL_SKIP], frames[rows]], 1))


def _augment(planes: tuple[torch.Tensor, ...], gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Photometric augmentation per sample, the same for all of a sample's planes: contrast, brightness; blur
    and sensor noise on the road planes (the wide ones are read as 16x16 means, where neither shows)."""
    b = planes[0].shape[0]
    gain = torch.empty(b, 1, 1, 1).uniform_(0.7, 1.3, generator=gen)
    bias = torch.empty(b, 1, 1, 1).uniform_(-25.0, 25.0, generator=gen)
    sigma = torch.empty(b, 1, 1, 1).uniform_(0.0, 6.0, generator=gen) * math.sqrt(12.0)  # uniform noise, std sigma
    blur = torch.rand(b, 1, 1, 1, generator=gen) < 0.5  # softer edges, as HEVC at crf 28 leaves them
    out = []
    for k, x in enumerate(planes):
        if k < 2:
            x = torch.where(blur, F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), x)
            x = x + (torch.rand(x.shape, generator=gen) - 0.5) * sigma
        out.append(((x - 128.0) * gain + 128.0 + bias).clamp(0.0, 255.0))
    return tuple(out)


def _batch(data: list[dict[str, np.ndarray]], pick: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    roads, wides, states = [], [], []
    for r, i in pick:
        seg = data[r]
        rows = np.array([i])
        roads.append(_stack(seg["road"], rows))
        wides.append(_stack(seg["wide"], rows))
        states.append(seg["state"][i])
    scale = np.array(list(STATE.values()))
    return torch.cat(roads), torch.cat(wides), torch.from_numpy(np.stack(states) * scale).float()


def fit_vision(data: list[dict[str, np.ndarray]], *, steps: int, batch: int, seed: int,
               on_done: Callable[[int], None] | None = None) -> ImageNet:
    """Train the conv net on (route, frame) samples past the 4-frame stack warm-up."""
    torch.manual_seed(seed)
    net = ImageNet()
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    index = np.array([(r, i) for r, seg in enumerate(data) for i in range(C.TEMPORAL_SKIP, len(seg["state"]))])
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    weight = torch.tensor([VISION_LOSS_WEIGHT[k] for k in STATE])
    net.train()
    for step in range(steps):
        road, wide, target = _batch(data, index[rng.integers(0, len(index), batch)])
        out = net.head(*_augment(net.planes(road, wide), gen))
        loss = (F.smooth_l1_loss(out, target, beta=0.1, reduction="none") * weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("vision step %d/%d loss %.4f", step + 1, steps, loss.item())
        if on_done is not None:
            on_done(step + 1)
    return net.eval()


@torch.no_grad()
def vision_error(net: ImageNet, seg: dict[str, np.ndarray]) -> np.ndarray:
    """RMS error per state entry (physical units) over a route's frames past the stack warm-up."""
    rows = np.arange(C.TEMPORAL_SKIP, len(seg["state"]))
    scale = np.array(list(STATE.values()))
    pred = np.concatenate([net(_stack(seg["road"], r), _stack(seg["wide"], r)).numpy()
                           for r in np.array_split(rows, max(1, len(rows) // 64))]) / scale
    return np.sqrt(((pred - seg["state"][rows]) ** 2).mean(0))


# -- stage 2: policy ------------------------------------------------------------------------------------
def simulate(cfg: FitConfig, noise: np.ndarray, *, offset: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Policy inputs (exactly as the label pass builds them) and targets for simulated drives.

    Targets per sample: plan (33, 15) in device-frame units, then desire class, then desired curvature."""
    from spark_distill.data.gt_path import SegmentMotion
    from spark_distill.ingest.align import desire_onehot
    from spark_distill.openpilot.state import ModeldState
    from spark_distill.synth.route import FPS, Dynamics, SynthConfig
    from spark_distill.synth.teacher import policy_inputs

    names = list(policy_inputs(cfg.contract))
    lanes, seconds = cfg.policy_drives, cfg.policy_seconds
    n = round(seconds * FPS)
    total = n + round(C.T_IDXS[-1] * FPS) + 2  # the future the last sample's plan looks into
    rng = np.random.default_rng([cfg.seed, 2, offset])
    t = np.arange(total) / FPS
    states, desires, poses, lat_vel, accel = [], [], [], [], []
    for d in range(lanes):
        dyn = Dynamics(SynthConfig(segments=1, seconds=seconds, varied=True, seed=20_000 + 1000 * offset + d), seconds)
        states.append(scene_state(dyn, t))
        lc = [dyn.lane_change_state(float(x)) for x in t]
        desires.append(desire_onehot(np.array([[LANE_STATES[s], DIRECTIONS[k]] for s, k in lc], np.float64)))
        lat_vel.append([dyn.lateral_velocity(float(x)) for x in t])
        accel.append([dyn.accel(float(x)) for x in t])
    states, desires = np.stack(states), np.stack(desires)  # (L, total, S), (L, total, 8)
    lat_vel, accel = np.array(lat_vel), np.array(accel)
    speed, kappa = states[..., 4], states[..., 1]
    # livePose as route.py logs it: velocity, angular velocity, acceleration, orientation
    zero = np.zeros_like(speed)
    poses = np.stack([speed, lat_vel, zero, zero, zero, speed * kappa, accel, speed**2 * kappa, zero, zero, zero,
                      zero], -1)
    # vision's error, correlated over ~1 s as a net's error on similar views is
    eps = np.zeros((lanes, total, STATE_LEN))
    step = rng.normal(size=(lanes, total, STATE_LEN)) * noise
    for i in range(total):
        eps[:, i] = (0.9 * eps[:, i - 1] + math.sqrt(1 - 0.81) * step[:, i]) if i else step[:, i]
    seen = states + eps
    traffic = torch.from_numpy(np.eye(2, dtype=np.float32)[rng.integers(0, 2, lanes)])
    state = ModeldState(lanes, device=torch.device("cpu"))
    state.features = torch.zeros(lanes, state.full, STATE_LEN)  # only the scene-state part of hidden_state is read
    scale = np.array(list(STATE.values()))
    curv_target = np.concatenate([kappa[:, 4:], kappa[:, -1:].repeat(4, 1)], 1)  # ~0.2 s ahead (lat_delay)
    feeds: dict[str, list] = {k: [] for k in names}
    targets = []
    motions = [SegmentMotion.from_pose(np.arange(total), t, poses[d]) for d in range(lanes)]
    for i in range(n):
        state.push_features(torch.from_numpy(seen[:, i] * scale))
        state.push_desire(torch.from_numpy(desires[:, i]))
        v = torch.from_numpy(states[:, i, 4]).float()
        feed = state.policy_inputs(names, traffic, v)
        state.push_curvature(torch.from_numpy(curv_target[:, i] + 2e-5 * rng.normal(size=lanes)))
        if i % 2:
            continue
        for k in names:
            x = feed[k]
            feeds[k].append(x.float().clone())
        targets.append(_targets(motions, states, accel, lat_vel, desires, curv_target, i))
    return ({k: torch.cat(v) for k, v in feeds.items()}, torch.from_numpy(np.concatenate(targets)).float())


def _targets(motions: list, states: np.ndarray, accel: np.ndarray, lat_vel: np.ndarray, desires: np.ndarray,
             curv: np.ndarray, i: int) -> np.ndarray:
    """(lanes, 33*15 + 2) targets of frame i: plan columns, desire class, desired curvature (1/km)."""
    from spark_distill.synth.route import FPS

    lanes = len(motions)
    out = np.zeros((lanes, C.IDX_N, PLAN_COLUMNS))
    at = np.clip(np.rint(i + C.T_IDXS * FPS).astype(int), 0, states.shape[1] - 1)  # nearest frame of each horizon
    for d, m in enumerate(motions):
        pos, _ = m.future(np.array([i]))
        out[d, :, 0:3] = pos[0]
        out[d, :, 3] = states[d, at, 4]
        out[d, :, 4] = lat_vel[d, at]
        out[d, :, 6] = accel[d, at]
        out[d, :, 7] = states[d, at, 4] ** 2 * states[d, at, 1]
        out[d, :, 11] = np.interp(i / FPS + C.T_IDXS, m.times, m.heading) - m.heading[i]
        out[d, :, 14] = states[d, at, 4] * states[d, at, 1]
    return np.concatenate([out.reshape(lanes, -1), desires[:, i].argmax(-1)[:, None], curv[:, i:i + 1] * 1e3], 1)


def fit_policy(policy: DrivePolicy, feeds: dict[str, torch.Tensor], targets: torch.Tensor, *, steps: int,
               batch: int, seed: int, on_done: Callable[[int], None] | None = None) -> float:
    """Train the policy MLP on simulated feeds; returns the final training loss."""
    torch.manual_seed(seed)
    n = C.IDX_N * PLAN_COLUMNS
    args = [feeds[k] for k in policy.names]
    with torch.no_grad():
        resid = targets[:, :n].reshape(-1, C.IDX_N, PLAN_COLUMNS) - policy.baseline(*args)
    policy.plan_mean.copy_(resid.mean(0))
    policy.plan_scale.copy_(resid.std(0).clamp(min=1e-3))
    norm = ((resid - policy.plan_mean) / policy.plan_scale).flatten(1)
    desire, curv = targets[:, n].long(), targets[:, n + 1]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(policy.mlp.parameters(), lr=2e-3, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    loss = torch.zeros(())
    for step in range(steps):
        idx = torch.randint(0, len(targets), (batch,), generator=gen)
        r = policy.raw(*(a[idx] for a in args))
        loss = (F.mse_loss(r[:, :n], norm[idx]) + 0.1 * F.cross_entropy(r[:, n:n + 8], desire[idx])
                + F.mse_loss(r[:, -1], curv[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            log.info("policy step %d/%d loss %.4f", step + 1, steps, loss.item())
        if on_done is not None:
            on_done(step + 1)
    return float(loss.detach())


# -- the whole fit ------------------------------------------------------------------------------------
def fit_teacher(out: Path, cfg: FitConfig, *, on_progress: Callable[[int, int, str], None] | None = None
                ) -> FitResult:
    """Fit and write the teacher pair (+ fit.json) into `out`. `on_progress(done, total, stage)` through each of
    the fit's FIT_STAGES, counted in its own units (drives, steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float sums on any machine (and no spinning threads on a busy one)
    try:
        return _fit(out, cfg, on_progress)
    finally:
        torch.set_num_threads(threads)


def _stage(on_progress: Callable[[int, int, str], None] | None, k: int, total: int) -> Callable[[int], None] | None:
    """Stage k's on_done(count) for on_progress (reported at 0 at once), or None."""
    if on_progress is None:
        return None
    note = f"{FIT_STAGES[k]} ({k + 1}/{len(FIT_STAGES)})"
    on_progress(0, total, note)
    return functools.partial(_report, on_progress, total, note)


def _report(on_progress: Callable[[int, int, str], None], total: int, note: str, done: int) -> None:
    on_progress(done, total, note)


def _fit(out: Path, cfg: FitConfig, on_progress: Callable[[int, int, str], None] | None = None) -> FitResult:
    from spark_distill.synth.teacher import contract_slices, policy_inputs, write_pair

    configs = route_configs(cfg)
    data = render_drives(configs, _stage(on_progress, 0, len(configs)))
    train, held = (data[:-1], data[-1:]) if len(data) > 1 else (data, data)
    with tempfile.TemporaryDirectory(prefix="fit-ingest-") as work:  # a few drives the way a user's come in
        picked = configs[: cfg.ingested] + configs[-1:]
        real = ingested_drives(picked, Path(work), _stage(on_progress, 1, len(picked))) if cfg.ingested else []
    train = train + real[:-1] * cfg.ingested_weight
    net = fit_vision(train, steps=cfg.vision_steps, batch=cfg.vision_batch, seed=cfg.seed,
                     on_done=_stage(on_progress, 2, cfg.vision_steps))
    err = vision_error(net, held[0])
    log.info("vision RMS error on the held-out route: %s", dict(zip(STATE, err.round(4), strict=True)))
    if real:
        err_real = vision_error(net, real[-1])
        log.info("vision RMS error on the held-out route, ingested: %s",
                 dict(zip(STATE, err_real.round(4), strict=True)))
        err = np.maximum(err, err_real)
    del data, train, held, real
    vision_slices, policy_slices = contract_slices(cfg.contract)
    vision = DriveVision(vision_slices)
    vision.net = net
    policy = DrivePolicy(policy_inputs(cfg.contract), policy_slices)
    simulated = _stage(on_progress, 3, 1)
    feeds, targets = simulate(cfg, np.maximum(err, [NOISE_FLOOR[k] for k in STATE]))
    if simulated is not None:
        simulated(1)
    loss = fit_policy(policy, feeds, targets, steps=cfg.policy_steps, batch=cfg.policy_batch, seed=cfg.seed,
                      on_done=_stage(on_progress, 4, cfg.policy_steps))
    written = write_pair(out, vision.eval(), policy.eval(), contract=cfg.contract,
                         model_name=f"fitted-tiny-{cfg.contract}-seed{cfg.seed}")
    result = FitResult(written, {k: float(v) for k, v in zip(STATE, err, strict=True)}, loss)
    files.write_json_atomic(out / "fit.json", {
        "config": asdict(cfg), "source_sha256": source_digest(), "vision_rms_error_held_out": result.vision_error,
        "policy_loss": loss, "files": {p.name: files.sha256_file(p) for p in written.values()}})
    written["fit"] = out / "fit.json"
    return result
