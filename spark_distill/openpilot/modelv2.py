# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The car's logged model outputs (`modelV2`) as one float32 row per frame, and conversions.

One layout (`LAYOUT`: block name -> width) serves every direction, so ingest, the synthetic route
writer, `label --from-log` and `verify-labels` cannot drift apart:
- `row_from_message(m)`: a cereal ModelDataV2 reader -> row (ingest);
- `rows_from_outputs(vision, policy, slices)`: raw model vectors -> rows, as openpilot's modeld fills
  modelV2 (selfdrive/modeld/fill_model_msg.py: plan columns at T_IDXS, lane lines and road edges at
  X_IDXS with the first horizon's std, laneLineProbs = sigmoid(raw[1::2]), leadsV3 per selection,
  meta.desireState);
- `fill_message(b, row)`: row -> a ModelDataV2 builder (the synthetic route writer);
- `outputs_from_rows(rows, slices)`: rows -> raw vectors that `openpilot.outputs.parse_outputs` turns back
  into the logged values (NaN in the heads the log does not carry: `LOGGED_HEADS` names those it does);
- `widen(rows)`: stored rows of any age -> (T, WIDTH).
The last blocks, `CONTROLS`, are modelV2.action's desiredCurvature and desiredAcceleration (the controls modeld
derived from its outputs): NaN where the message has no action or the schema lacks the field (openpilot-logging's
cereal has desiredCurvature only); `rows_from_outputs` leaves them NaN (they are not model outputs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spark_distill.openpilot import contract as C
from spark_distill.openpilot.outputs import parse_outputs

N, L, E, LEADS, LT = C.IDX_N, C.NUM_LANE_LINES, C.NUM_ROAD_EDGES, 3, len(C.LEAD_T_IDXS)
PLAN_FIELDS = (("position", 0), ("velocity", 3), ("acceleration", 6), ("orientation", 9), ("orientation_rate", 12))
CAPNP_PLAN = {"position": "position", "velocity": "velocity", "acceleration": "acceleration",
              "orientation": "orientation", "orientation_rate": "orientationRate"}
LEAD_KEYS = ("x", "y", "v", "a")


def _layout() -> dict[str, int]:
    out: dict[str, int] = {}
    for name, _ in PLAN_FIELDS:
        out[name] = 3 * N  # x, y, z at T_IDXS
        out[f"{name}_std"] = 3 * N
    out["lane_lines"] = L * 2 * N  # y, z at X_IDXS
    out["lane_line_probs"], out["lane_line_stds"] = L, L
    out["road_edges"], out["road_edge_stds"] = E * 2 * N, E
    out["leads"], out["leads_std"], out["lead_probs"] = LEADS * 4 * LT, LEADS * 4 * LT, LEADS
    out["desire_state"] = C.DESIRE_LEN
    out["model_execution_time"], out["frame_drop_perc"] = 1, 1
    # appended last, so a row of a dataset ingested before them is a prefix (`widen`)
    out["desired_curvature"], out["desired_acceleration"] = 1, 1  # action.desiredCurvature / desiredAcceleration
    return out


LAYOUT = _layout()
WIDTH = sum(LAYOUT.values())
LOGGED_HEADS = ("plan", "lane_lines", "lane_lines_prob", "road_edges", "lead", "lead_prob", "desire_state")
CONTROLS = ("desired_curvature", "desired_acceleration")  # the blocks of modelV2.action: not model heads
ACTION_FIELDS = {"desired_curvature": "desiredCurvature", "desired_acceleration": "desiredAcceleration"}


def widen(rows: np.ndarray) -> np.ndarray:
    """Stored rows (T, <= WIDTH) as (T, WIDTH): a dataset ingested before the `CONTROLS` blocks lacks them (NaN)."""
    rows = np.asarray(rows, np.float32)
    if rows.shape[-1] == WIDTH:
        return rows
    return np.concatenate([rows, np.full((*rows.shape[:-1], WIDTH - rows.shape[-1]), np.nan, np.float32)], -1)


def columns() -> list[list[Any]]:
    """[[block, start, stop], ...] for the frames manifest."""
    out, start = [], 0
    for name, width in LAYOUT.items():
        out.append([name, start, start + width])
        start += width
    return out


def split_blocks(rows: np.ndarray) -> dict[str, np.ndarray]:
    """Each block of rows (..., WIDTH) by name, as views (writing into one writes into the rows)."""
    out, start = {}, 0
    for name, width in LAYOUT.items():
        out[name] = rows[..., start:start + width]
        start += width
    return out


def _join(blocks: dict[str, np.ndarray], lead: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([np.asarray(blocks[n], np.float32).reshape(*lead, w) for n, w in LAYOUT.items()], -1)


def rows_from_outputs(vision: np.ndarray, policy: np.ndarray, slices: dict[str, dict[str, list[int]]]) -> np.ndarray:
    """(F, WIDTH) rows from raw vectors (F, Nv), (F, Np), as modeld fills modelV2 (NaN where a head is absent)."""
    v = parse_outputs(np.asarray(vision, np.float32), slices["vision"])
    p = parse_outputs(np.asarray(policy, np.float32), slices["policy"])
    f = len(policy)
    nan = lambda w: np.full((f, w), np.nan, np.float32)  # noqa: E731
    blocks = {n: nan(w) for n, w in LAYOUT.items()}
    if "plan" in p:
        mean = np.asarray(p["plan"]["mean"]).reshape(f, N, C.PLAN_WIDTH)
        std = np.asarray(p["plan"]["std"]).reshape(f, N, C.PLAN_WIDTH)
        for name, col in PLAN_FIELDS:
            blocks[name] = mean[..., col:col + 3].transpose(0, 2, 1).reshape(f, -1)
            blocks[f"{name}_std"] = std[..., col:col + 3].transpose(0, 2, 1).reshape(f, -1)
    if "lane_lines" in v:
        ll = np.asarray(v["lane_lines"]["mean"]).reshape(f, L, N, 2)
        blocks["lane_lines"] = ll.transpose(0, 1, 3, 2).reshape(f, -1)
        blocks["lane_line_stds"] = np.asarray(v["lane_lines"]["std"]).reshape(f, L, N, 2)[:, :, 0, 0]
    if "lane_lines_prob" in v:
        blocks["lane_line_probs"] = np.asarray(v["lane_lines_prob"]).reshape(f, 2 * L)[:, 1::2]
    if "road_edges" in v:
        re_ = np.asarray(v["road_edges"]["mean"]).reshape(f, E, N, 2)
        blocks["road_edges"] = re_.transpose(0, 1, 3, 2).reshape(f, -1)
        blocks["road_edge_stds"] = np.asarray(v["road_edges"]["std"]).reshape(f, E, N, 2)[:, :, 0, 0]
    if "lead" in v:
        blocks["leads"] = np.asarray(v["lead"]["mean"]).reshape(f, LEADS, LT, 4).transpose(0, 1, 3, 2).reshape(f, -1)
        blocks["leads_std"] = np.asarray(v["lead"]["std"]).reshape(f, LEADS, LT, 4).transpose(0, 1, 3, 2).reshape(f, -1)
    if "lead_prob" in v:
        blocks["lead_probs"] = np.asarray(v["lead_prob"]).reshape(f, LEADS)
    if "desire_state" in p:
        blocks["desire_state"] = np.asarray(p["desire_state"]).reshape(f, C.DESIRE_LEN)
    return _join(blocks, (f,))


def row_from_message(m: Any) -> np.ndarray:
    """One ModelDataV2 reader -> (WIDTH,) row; NaN for lists the message leaves empty or short."""
    blocks: dict[str, Any] = {n: np.full(w, np.nan, np.float32) for n, w in LAYOUT.items()}

    def xyz(d: Any, std: bool) -> np.ndarray | None:
        keys = ("xStd", "yStd", "zStd") if std else ("x", "y", "z")
        vals = [list(getattr(d, k)) for k in keys]
        return np.array(vals, np.float32).reshape(-1) if all(len(x) == N for x in vals) else None

    for name, _ in PLAN_FIELDS:
        d = getattr(m, CAPNP_PLAN[name])
        for suffix, std in (("", False), ("_std", True)):
            vals = xyz(d, std)
            if vals is not None:
                blocks[name + suffix] = vals
    for block, items, count in (("lane_lines", m.laneLines, L), ("road_edges", m.roadEdges, E)):
        if len(items) == count and all(len(x.y) == N and len(x.z) == N for x in items):
            blocks[block] = np.array([[list(x.y), list(x.z)] for x in items], np.float32).reshape(-1)
    for block, items, count in (("lane_line_probs", m.laneLineProbs, L), ("lane_line_stds", m.laneLineStds, L),
                                ("road_edge_stds", m.roadEdgeStds, E)):
        if len(items) == count:
            blocks[block] = np.array(list(items), np.float32)
    leads = list(m.leadsV3)
    if len(leads) == LEADS and all(len(ld.x) == LT for ld in leads):
        blocks["leads"] = np.array([[list(getattr(ld, k)) for k in LEAD_KEYS] for ld in leads], np.float32).reshape(-1)
        blocks["leads_std"] = np.array([[list(getattr(ld, k + "Std")) for k in LEAD_KEYS] for ld in leads],
                                       np.float32).reshape(-1)
        blocks["lead_probs"] = np.array([ld.prob for ld in leads], np.float32)
    if len(m.meta.desireState) == C.DESIRE_LEN:
        blocks["desire_state"] = np.array(list(m.meta.desireState), np.float32)
    blocks["model_execution_time"] = np.array([m.modelExecutionTime], np.float32)
    blocks["frame_drop_perc"] = np.array([m.frameDropPerc], np.float32)
    if "action" in m.schema.fieldnames and m._has("action"):  # releases before 0.9.5 log no action
        names = m.action.schema.fieldnames  # the schema's: openpilot-logging's has no desiredAcceleration
        for block, name in ACTION_FIELDS.items():
            if name in names:
                blocks[block] = np.array([getattr(m.action, name)], np.float32)
    return _join(blocks, ())


def fill_message(b: Any, row: np.ndarray) -> None:
    """Set a ModelDataV2 builder's fields from a row (the synthetic route writer)."""
    blocks = split_blocks(np.asarray(row, np.float32))
    for name, _ in PLAN_FIELDS:
        d = getattr(b, CAPNP_PLAN[name])
        mean, std = blocks[name].reshape(3, N), blocks[f"{name}_std"].reshape(3, N)
        d.t = C.T_IDXS.tolist()
        d.x, d.y, d.z = (mean[k].tolist() for k in range(3))
        d.xStd, d.yStd, d.zStd = (std[k].tolist() for k in range(3))
    for block, count, field_name in (("lane_lines", L, "laneLines"), ("road_edges", E, "roadEdges")):
        lines = b.init(field_name, count)
        values = blocks[block].reshape(count, 2, N)
        for i in range(count):
            lines[i].x, lines[i].t = C.X_IDXS.tolist(), C.T_IDXS.tolist()
            lines[i].y, lines[i].z = values[i, 0].tolist(), values[i, 1].tolist()
    b.laneLineProbs = blocks["lane_line_probs"].tolist()
    b.laneLineStds = blocks["lane_line_stds"].tolist()
    b.roadEdgeStds = blocks["road_edge_stds"].tolist()
    leads = b.init("leadsV3", LEADS)
    mean, std = blocks["leads"].reshape(LEADS, 4, LT), blocks["leads_std"].reshape(LEADS, 4, LT)
    for j in range(LEADS):
        leads[j].prob, leads[j].t = float(blocks["lead_probs"][j]), C.LEAD_T_IDXS.tolist()
        for k, key in enumerate(LEAD_KEYS):
            setattr(leads[j], key, mean[j, k].tolist())
            setattr(leads[j], key + "Std", std[j, k].tolist())
    b.meta.desireState = blocks["desire_state"].tolist()
    b.modelExecutionTime = float(blocks["model_execution_time"][0])
    b.frameDropPerc = float(blocks["frame_drop_perc"][0])
    names = b.schema.fields["action"].schema.fieldnames if "action" in b.schema.fieldnames else ()
    for block, name in ACTION_FIELDS.items():  # what the schema has of what the row has
        if name in names and np.isfinite(blocks[block][0]):
            setattr(b.action, name, float(blocks[block][0]))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def outputs_from_rows(rows: np.ndarray, slices: dict[str, dict[str, list[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """Raw (vision, policy) vectors whose parse gives back the logged values of `LOGGED_HEADS`; other heads NaN.

    The plan becomes one confident hypothesis (the logged plan) and copies with low weight; leads become
    the (at most two) distinct logged trajectories, each selection picking its own."""
    rows = np.asarray(rows, np.float32)
    f = len(rows)
    blocks = split_blocks(rows)
    width = {side: max(b for _, b in s.values()) for side, s in slices.items()}
    out = {side: np.full((f, width[side]), np.nan, np.float32) for side in slices}

    def put(head: str, value: np.ndarray) -> None:
        for side in ("vision", "policy"):
            if head in slices[side]:
                a, b = slices[side][head]
                out[side][:, a:b] = value.reshape(f, b - a)

    log = lambda x: np.log(np.maximum(x, 1e-12))  # noqa: E731
    if "plan" in slices["policy"]:
        mean = np.concatenate([blocks[n].reshape(f, 3, N).transpose(0, 2, 1) for n, _ in PLAN_FIELDS], -1)
        std = np.concatenate([blocks[f"{n}_std"].reshape(f, 3, N).transpose(0, 2, 1) for n, _ in PLAN_FIELDS], -1)
        hyp = np.concatenate([mean.reshape(f, -1), log(std).reshape(f, -1), np.full((f, 1), -10.0)], -1)
        plan = np.repeat(hyp[:, None], C.PLAN_MHP_N, 1)
        plan[:, 0, -1] = 10.0
        put("plan", plan)
    for head, stds, count in (("lane_lines", "lane_line_stds", L), ("road_edges", "road_edge_stds", E)):
        m = blocks[head].reshape(f, count, 2, N).transpose(0, 1, 3, 2)  # (f, count, N, 2)
        s = np.broadcast_to(blocks[stds].reshape(f, count, 1, 1), m.shape)
        put(head, np.concatenate([m.reshape(f, -1), log(s).reshape(f, -1)], -1))
    probs = np.stack([_logit(1 - blocks["lane_line_probs"]), _logit(blocks["lane_line_probs"])], -1)
    put("lane_lines_prob", probs.reshape(f, -1))
    if "lead" in slices["vision"]:
        mean = blocks["leads"].reshape(f, LEADS, 4, LT).transpose(0, 1, 3, 2)  # (f, 3, LT, 4)
        std = blocks["leads_std"].reshape(f, LEADS, 4, LT).transpose(0, 1, 3, 2)
        # two hypotheses: selection 0's trajectory and the first other selection that differs from it; each
        # selection then picks the nearer one (a 2-hypothesis model never logs more than two distinct leads)
        differs = np.abs(mean[:, 1] - mean[:, 0]).sum((-1, -2)) > 0
        second = np.where(differs[:, None, None], mean[:, 1], mean[:, 2])
        second_std = np.where(differs[:, None, None], std[:, 1], std[:, 2])
        pairs = ((mean[:, 0], std[:, 0]), (second, second_std))
        dist = np.stack([np.abs(mean - m[:, None]).sum((-1, -2)) for m, _ in pairs], 1)  # (f, 2, 3)
        pick = dist.argmin(1)  # (f, 3): the hypothesis each selection takes
        hyps = []
        for h, (m, s_) in enumerate(pairs):
            logits = np.where(pick == h, 10.0, -10.0).astype(np.float32)
            hyps.append(np.concatenate([m.reshape(f, -1), log(s_).reshape(f, -1), logits], -1))
        put("lead", np.stack(hyps, 1))
    put("lead_prob", _logit(blocks["lead_probs"]))
    put("desire_state", log(blocks["desire_state"]))
    return out["vision"], out["policy"]
