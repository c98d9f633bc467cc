# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The openpilot driving-model layouts the tool supports, and how a teacher folder is recognised as one.

A layout is recognised from the teacher's file set (topology) and its graphs' inputs (history semantics), never
from a release number. Rows refer to ../shared/openpilot_releases.md (the layouts read from real releases):
- `supercombo-20hz` (rows A-C: 0.9.6, 0.9.7, master mid-2024): one `supercombo.onnx`; image pair (t-1, t); the
  99 past hidden states at 20 Hz; desire pulses at 20 Hz (1, 100, 8) including this frame; `prev_desired_curv`
  (1, 100, 1) the model's own previous outputs; `lateral_control_params`; 0.9.6's `nav_*` fed zeros (modeld fed
  zeros without navigation).
- `supercombo-5hz` (row D: master late 2024): one `supercombo.onnx`; pair (t-4, t); 24 past hidden states every
  4th frame (t-96 .. t-4: the model appends this frame's own); desire pulses max-pooled over 4 (1, 25, 8);
  `prev_desired_curv` (1, 25, 1) fed zeros, taken to be as 0.10.0's modeld fed it (that era's modeld source was not
  at hand here: an assumption, not a reading).
- `split-lateral` (row G: 0.10.0): `driving_vision.onnx` + `driving_policy.onnx`; pair (t-4, t); 25 hidden states
  every 4th frame including this one (vision runs first); desire pooled; `lateral_control_params`;
  `prev_desired_curv` fed zeros (modeld: `0*self.full_prev_desired_curv[...]`).
- `split` (rows H-I: 0.10.1 .. 0.10.3): the pair with `desire` or `desire_pulse`, `traffic_convention`,
  `features_buffer` only.
- `driving-supercombo` (row K: 0.11): one `driving_supercombo.onnx`; as `supercombo-5hz`'s history without the
  lateral inputs, plus `action_t` (1, 2) = [lateral delay + 1.5 DT_MDL, longitudinal delay + 1.5 DT_MDL].
Smoothing seconds (`Layout.smooth`): modeld of 0.10.1 and later feeds the delays of the log plus its
LAT_SMOOTH_SECONDS / LONG_SMOOTH_SECONDS (split: 0.1 / 0.3, read from a copy of 0.10.3's modeld.py; 0.11: 0.0 / 0.3,
from 0.11-era modeld.py copies; 0.10.0: 0.0 / 0.0, commaai 6c6be47), and the plan layouts low-pass the controls
they derive with the same time constants (openpilot.controls).
Not supported (one line says what was found): the 2026 three-file split (row J), `driving.onnx` with a full-rate
queue (row L), a stateful graph (row M), anything else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spark_distill.errors import UnknownTeacherError

DT_MDL = 0.05  # s, one model frame at 20 Hz (openpilot common/realtime.py)
ACTION_T_FRAMES = 1.5  # action_t = delay + 1.5 * DT_MDL (openpilot_releases.md, row K)
# the delays modeld feeds where a segment's log says nothing (ingest/delays.py reads them from the log)
DEFAULT_LAT_DELAY = 0.2  # s: openpilot's CP.steerActuatorDelay + 0.2 estimate, when the log says nothing
DEFAULT_LONG_DELAY = 0.15  # s: openpilot's default CarParams.longitudinalActuatorDelay (interfaces.get_std_params)


@dataclass(frozen=True)
class History:
    """How modeld keeps the recurrent inputs of one layout (all buffers at 20 Hz, zero at start-up)."""

    pair_skip: int  # frames between the two images of a pair: 1 (t-1, t) or 4 (t-4, t)
    features: int  # entries of features_buffer
    stride: int  # 20 Hz frames between two entries of features_buffer and of the pooled desire
    includes_current: bool  # features_buffer's newest entry is this frame's hidden_state (split: vision ran first)
    desire: int  # entries of the desire input; each is the max over `stride` 20 Hz pulses (1: no pooling)
    prev_curv: str  # "own": the model's previous desired curvatures (20 Hz, past only); "zeros"; "absent"

    @property
    def full(self) -> int:
        """20 Hz entries of the features buffer kept."""
        return self.features * self.stride

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Layout:
    """One supported layout: topology, history semantics and where the controls come from."""

    key: str
    rows: str  # rows of openpilot_releases.md
    releases: str
    topology: str  # "split" (vision + policy) or "combined" (one model)
    control: str  # "desired_curvature" output, "plan" (curvature and acceleration from it) or "action" head
    history: History
    lateral_params: bool  # lateral_control_params [v_ego, lateral delay]
    action_t: bool  # action_t [lateral, longitudinal delay + 1.5 DT_MDL]
    # s: modeld's (LAT_SMOOTH_SECONDS, LONG_SMOOTH_SECONDS), added to the log's delays and the time constants of the
    # low-pass on the controls derived from a plan
    smooth: tuple[float, float] = (0.0, 0.0)

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "rows": self.rows, "releases": self.releases, "topology": self.topology,
                "control": self.control, "history": self.history.describe(),
                "lateral_control_params": self.lateral_params, "action_t": self.action_t,
                "smooth_seconds": list(self.smooth)}


SUPERCOMBO_20HZ = Layout("supercombo-20hz", "A-C", "0.9.6, 0.9.7, master mid-2024", "combined", "desired_curvature",
                         History(1, 99, 1, False, 100, "own"), True, False)
SUPERCOMBO_5HZ = Layout("supercombo-5hz", "D", "master late 2024", "combined", "desired_curvature",
                        History(4, 24, 4, False, 25, "zeros"), True, False)
SPLIT_LATERAL = Layout("split-lateral", "G", "0.10.0", "split", "plan", History(4, 25, 4, True, 25, "zeros"), True,
                       False)
SPLIT = Layout("split", "H-I", "0.10.1 .. 0.10.3", "split", "plan", History(4, 25, 4, True, 25, "absent"), False,
               False, (0.1, 0.3))
DRIVING_SUPERCOMBO = Layout("driving-supercombo", "K", "0.11", "combined", "action",
                            History(4, 24, 4, False, 25, "absent"), False, True, (0.0, 0.3))
LAYOUTS = {lay.key: lay for lay in (SUPERCOMBO_20HZ, SUPERCOMBO_5HZ, SPLIT_LATERAL, SPLIT, DRIVING_SUPERCOMBO)}
SUPPORTED = ("supported: supercombo.onnx (0.9.6/0.9.7/mid-2024, 20 Hz; late-2024 5 Hz), driving_vision.onnx + "
             "driving_policy.onnx (0.10.0 .. 0.10.3), driving_supercombo.onnx (0.11)")

IMAGE_INPUTS = {"img": "road", "input_imgs": "road", "big_img": "wide", "big_input_imgs": "wide"}
IMAGE_SHAPE = (1, 12, 128, 256)
COMBINED_FILES = ("supercombo.onnx", "driving_supercombo.onnx")
SPLIT_FILES = ("driving_vision.onnx", "driving_policy.onnx")
UNSUPPORTED_FILES = {"driving_off_policy.onnx": "the 2026 three-file split (vision + on-policy + off-policy)",
                     "driving_on_policy.onnx": "the 2026 three-file split (vision + on-policy + off-policy)",
                     "driving.onnx": "driving.onnx (2026, a full-rate history queue)"}


def unknown(found: str) -> UnknownTeacherError:
    """The one-line error for a teacher of no supported layout."""
    return UnknownTeacherError(f"unsupported openpilot model layout: {found}; {SUPPORTED}")


def model_files(folder: Path) -> tuple[str, list[Path]]:
    """(topology, ONNX paths) of a teacher folder, from its file set: split (vision, policy) or combined (one)."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    for name, what in UNSUPPORTED_FILES.items():
        if name in names:
            raise unknown(f"{folder} holds {what}")
    if all(n in names for n in SPLIT_FILES):
        return "split", [folder / n for n in SPLIT_FILES]
    combined = [n for n in COMBINED_FILES if n in names]
    if len(combined) == 1:
        return "combined", [folder / combined[0]]
    pickles = sorted(n for n in names if n.endswith("_tinygrad.pkl"))
    if pickles and not any(n.endswith(".onnx") for n in names):
        raise unknown(f"{folder} holds only {', '.join(pickles)}: a compiled tinygrad pickle is a pickle of code, "
                      "never loaded (loading it would run it; no metadata can be read from it); put the release's "
                      "ONNX beside it")
    onnx = sorted(n for n in names if n.endswith(".onnx"))
    raise unknown(f"{folder} holds {', '.join(onnx) or 'no ONNX model'}" if folder.is_dir() else f"{folder}")


Inputs = dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype)


def _shape(inputs: Inputs, name: str) -> tuple[int, ...] | None:
    return inputs[name][0] if name in inputs else None


def _summary(inputs: Inputs) -> str:
    return ", ".join(f"{k}{list(s)}" for k, (s, _) in inputs.items())


def recognise(topology: str, inputs: Inputs, policy_inputs: Inputs | None = None) -> Layout:
    """The layout of a teacher from its topology and its graphs' inputs (the vision's or the combined model's
    `inputs`, the policy's `policy_inputs`); an input set no layout has is one UnknownTeacherError line."""
    every = {**inputs, **(policy_inputs or {})}
    images = [n for n in inputs if n in IMAGE_INPUTS]
    found = f"a {topology} model with inputs {_summary(inputs)}" + (
        f" and a policy with {_summary(policy_inputs)}" if policy_inputs is not None else "")
    if sorted(IMAGE_INPUTS[n] for n in images) != ["road", "wide"] or any(
            inputs[n][0] != IMAGE_SHAPE for n in images):
        raise unknown(found)
    feats = _shape(every, "features_buffer")
    desire_name = "desire_pulse" if "desire_pulse" in every else "desire"
    desire = _shape(every, desire_name)
    lateral = "lateral_control_params" in every
    candidates = ([SUPERCOMBO_20HZ, SUPERCOMBO_5HZ, DRIVING_SUPERCOMBO] if topology == "combined"
                  else [SPLIT_LATERAL, SPLIT])
    for lay in candidates:
        h = lay.history
        expected = {"features_buffer": (1, h.features, 512), desire_name: (1, h.desire, 8),
                    "traffic_convention": (1, 2)}
        if lay.lateral_params:
            expected["lateral_control_params"] = (1, 2)
        if h.prev_curv != "absent":
            expected["prev_desired_curv"] = (1, h.desire, 1)
        if lay.action_t:
            expected["action_t"] = (1, 2)
        optional = {"nav_features": (1, 256), "nav_instructions": (1, 150)} if lay is SUPERCOMBO_20HZ else {}
        rest = {k: s for k, (s, _) in every.items() if k not in IMAGE_INPUTS}
        if lateral != lay.lateral_params or feats != expected["features_buffer"] or desire is None:
            continue
        if all(rest.get(k) == s for k, s in expected.items()) and all(
                k in expected or optional.get(k) == s for k, s in rest.items()):
            return lay
    raise unknown(found)
