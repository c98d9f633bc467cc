# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The built-in compact student: a small efficient conv backbone per camera, a GRU made of Linear
projections (so DoRA can target it), and one Linear head per output, laid out exactly like the
teacher's vision and policy output vectors (the label set's `output_slices`), so the one output parser
serves teacher and student alike.

Main entry points: `CompactStudent(cfg, vision_slices, policy_slices)`, presets `compact_s()` /
`compact_xs()`, and `DEFAULT_TARGETS` (DoRA targets: the policy dense layers, the GRU projections, the
output heads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spark_distill.models.depthwise import Depthwise
from spark_distill.openpilot import contract as C

DEFAULT_TARGETS = ["policy.*", "gru_x", "gru_h", "heads.*"]
POLICY_HALF = ("policy.", "gru_x", "gru_h", "heads.policy_")  # the recurrent half and the policy heads, by name
SPEED_SCALE = 0.1  # v_ego (m/s) to O(1) in the policy's input


@dataclass(frozen=True, kw_only=True)
class CompactConfig:
    """Backbone widths (one stride-2 stage each), feature and recurrent sizes."""

    widths: tuple[int, ...] = (16, 32, 64, 96, 128)  # five stride-2 stages: 128x256 -> 4x8
    expand: int = 4  # MBConv expansion
    features: int = C.FEATURE_LEN  # per-frame feature, the student's hidden_state
    hidden: int = 512  # GRU state
    # the policy reads the car's speed (v_ego, m/s), as openpilot's v1 policy does (lateral_control_params) and the
    # fitted teacher's plan is built on: without it the plan's length must come from image motion, metres off at 2 s
    # (benchmarks/distill.md). Runs written before it existed build without it (student.json has no "speed").
    speed: bool = False
    # the plan is a residual on constant speed: v_ego * t added to every hypothesis's x position and v_ego to its x
    # velocity (`speed_prior`). A plan's length is metres to hundreds of metres and scales with the speed; Adam moves
    # a weight by about the learning rate a step, so learning x = v * t through the layers took the GPU run no
    # closer than the mean plan in 750 steps (benchmarks/distill.md). Needs `speed`; older runs build without it.
    plan_from_speed: bool = False


def compact_s() -> CompactConfig:
    return CompactConfig()


def compact_xs() -> CompactConfig:
    return CompactConfig(widths=(8, 16, 32, 48, 64), expand=2, features=C.FEATURE_LEN, hidden=128)


PRESETS = {"compact": compact_s, "compact-xs": compact_xs}


class _Block(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise (stride 2), 1x1 project."""

    def __init__(self, cin: int, cout: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(nn.Conv2d(cin, mid, 1), nn.BatchNorm2d(mid), nn.SiLU(),
                                  Depthwise(mid, mid, 3, 2, 1, groups=mid), nn.BatchNorm2d(mid), nn.SiLU(),
                                  nn.Conv2d(mid, cout, 1), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _Backbone(nn.Module):
    def __init__(self, cfg: CompactConfig) -> None:
        super().__init__()
        stages, cin = [], 12
        for w in cfg.widths:
            stages.append(_Block(cin, w, cfg.expand))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.squeeze = nn.Conv2d(cin, 16, 1)
        self.out_features = 16 * (128 >> len(cfg.widths)) * (256 >> len(cfg.widths))

    def squeeze_dtype(self) -> torch.dtype:
        """The weights' dtype (fp32 in training, fp16 in an fp16 export)."""
        return next(self.stages.parameters()).dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 12, 128, 256) uint8
        x = x.to(self.squeeze_dtype()) * (1.0 / 255.0) - 0.5
        return self.squeeze(self.stages(x)).flatten(1)  # (B, out_features)


class CompactStudent(nn.Module):
    """One step: (img, big_img, desire (B, 8), traffic (B, 2), state (B, H)) ->
    (vision vector (B, Nv), policy vector (B, Np), next state (B, H))."""

    def __init__(self, cfg: CompactConfig, vision_slices: dict[str, slice], policy_slices: dict[str, slice]) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision_slices, self.policy_slices = dict(vision_slices), dict(policy_slices)
        self.road, self.wide = _Backbone(cfg), _Backbone(cfg)
        self.vision_proj = nn.Sequential(nn.Linear(2 * self.road.out_features, cfg.features), nn.ReLU())
        self.policy = nn.Sequential(nn.Linear(cfg.features + C.DESIRE_LEN + C.TRAFFIC_CONVENTION_LEN + int(cfg.speed),
                                              cfg.hidden), nn.ReLU())
        self.gru_x = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.gru_h = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        heads = {}
        for prefix, slices, source in (("vision", vision_slices, cfg.features), ("policy", policy_slices, cfg.hidden)):
            for name, s in slices.items():
                if prefix == "vision" and name == "hidden_state":
                    continue  # the features themselves
                heads[f"{prefix}_{name}"] = nn.Linear(source, s.stop - s.start)
        self.heads = nn.ModuleDict(heads)
        self.vision_width = max(s.stop for s in vision_slices.values())
        self.policy_width = max(s.stop for s in policy_slices.values())
        if cfg.plan_from_speed and not cfg.speed:
            raise ValueError("plan_from_speed needs speed (the policy's v_ego input)")
        prior = speed_prior(policy_slices, self.policy_width) if cfg.plan_from_speed else None
        self.register_buffer("speed_prior", prior, persistent=False)  # not in the state dict: built from the layout

    @torch.no_grad()
    def init_heads(self, vision_mean: torch.Tensor | None, policy_mean: torch.Tensor) -> None:
        """Start every output head at the given mean output vectors (the label set's, `train.head_init`): each
        head's bias is its slice of the mean, so a fresh student predicts the average plan, lane lines and lead
        from step 0 instead of zeros metres away; its weights learn only the deviation from it. `vision_mean`
        None: the vision heads keep their biases."""
        for prefix, slices, mean in (("vision", self.vision_slices, vision_mean), ("policy", self.policy_slices,
                                                                                   policy_mean)):
            if mean is None:
                continue
            for name, s in slices.items():
                if f"{prefix}_{name}" in self.heads:  # hidden_state has none: it is the features themselves
                    head = self.heads[f"{prefix}_{name}"]
                    head.bias.copy_(mean[s].to(head.bias.dtype))
        if self.speed_prior is not None and "plan" in self.policy_slices:  # the heads give the residual on v * t:
            s = self.policy_slices["plan"]  # less each hypothesis's constant-speed plan at its own speed at t = 0
            prior = self.speed_prior[s].to(policy_mean.dtype)
            head = self.heads["policy_plan"]
            head.bias.sub_((prior * _speed_at_start(policy_mean[s].clone())).to(head.bias.dtype))

    def in_policy_half(self, name: str) -> bool:
        """Whether parameter `name` belongs to the recurrent half or a policy head (what `reset_policy` renews)."""
        return name.startswith(POLICY_HALF)

    @torch.no_grad()
    def reset_policy(self, policy_mean: torch.Tensor) -> None:
        """Fresh weights for the recurrent half and the policy heads, those heads' biases at `policy_mean`; the
        vision half and its heads keep theirs. The start of a second stage that trains the policy alone on a trained,
        frozen vision, as openpilot trains its policy on its vision model's features: trained jointly from random
        weights, the recurrent half settled on the label mean while the features were still uninformative and its
        plan's lateral never left it (benchmarks/distill.md)."""
        for name, module in self.named_modules():
            if name.startswith(POLICY_HALF) and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        self.init_heads(None, policy_mean)

    def initial_state(self, batch: int, device: torch.device | None = None) -> torch.Tensor:
        return torch.zeros(batch, self.cfg.hidden, device=device)

    def encode(self, img: torch.Tensor, big_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The vision half, stateless per frame (so it runs over any number N of frames in one call):
        (vision vector (N, Nv), features (N, features), what the recurrent half reads)."""
        feats = self.vision_proj(torch.cat([self.road(img), self.wide(big_img)], dim=1))  # (N, features)
        vision = _assemble(self.vision_slices, {n: feats if n == "hidden_state" else self.heads[f"vision_{n}"](feats)
                                                for n in self.vision_slices}, self.vision_width)
        return vision, feats

    def recurrent_step(self, feats: torch.Tensor, desire: torch.Tensor, traffic: torch.Tensor, state: torch.Tensor,
                       v_ego: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The recurrent half of one frame: (policy vector (B, Np), next state (B, H))."""
        parts = [feats, desire.to(feats.dtype), traffic.to(feats.dtype)]
        if self.cfg.speed:
            if v_ego is None:
                raise ValueError("this compact student reads the car's speed: pass v_ego")
            parts.append(torch.nan_to_num(v_ego.to(feats.dtype)).reshape(-1, 1) * SPEED_SCALE)  # no speed logged: 0
        z = self.policy(torch.cat(parts, dim=1))  # (B, hidden)
        xr, xu, xn = self.gru_x(z).chunk(3, dim=1)
        hr, hu, hn = self.gru_h(state).chunk(3, dim=1)
        r, u = torch.sigmoid(xr + hr), torch.sigmoid(xu + hu)
        nxt = (1 - u) * torch.tanh(xn + r * hn) + u * state  # (B, hidden)
        policy = _assemble(self.policy_slices, {n: self.heads[f"policy_{n}"](nxt) for n in self.policy_slices},
                           self.policy_width)
        if self.speed_prior is not None:  # in the prior's dtype: under bf16 autocast, 200 m in bf16 is 1 m steps
            prior = self.speed_prior
            speed = torch.nan_to_num(v_ego.to(prior.dtype)).reshape(-1, 1)
            policy = policy.to(prior.dtype) + speed * prior
        return policy, nxt

    def forward(self, img: torch.Tensor, big_img: torch.Tensor, desire: torch.Tensor, traffic: torch.Tensor,
                state: torch.Tensor, v_ego: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        vision, feats = self.encode(img, big_img)
        policy, nxt = self.recurrent_step(feats, desire, traffic, state, v_ego)
        return vision, policy, nxt


def _plan_rows(width: int) -> tuple[int, int]:
    """(hypotheses, entries per hypothesis) of a plan head `width` wide: mean, log-std (and a logit) each."""
    from spark_distill.openpilot.outputs import mdn_args

    hyps = max(mdn_args("plan", width)["in_n"], 1)
    return hyps, width // hyps


def _plan_means(plan: torch.Tensor) -> list[torch.Tensor]:
    """Views (IDX_N, PLAN_WIDTH) of each hypothesis's mean in a plan vector."""
    hyps, rows = _plan_rows(plan.shape[0])
    n = C.IDX_N * C.PLAN_WIDTH
    return [plan[h * rows: h * rows + n].view(C.IDX_N, C.PLAN_WIDTH) for h in range(hyps)]


def speed_prior(policy_slices: dict[str, slice], width: int) -> torch.Tensor:
    """(width,) the policy vector of a car at a constant 1 m/s: in every plan hypothesis's mean, x position = t
    (`C.T_IDXS`) and x velocity = 1; zero elsewhere (log-stds, logits, other heads)."""
    out = torch.zeros(width)
    if "plan" in policy_slices:
        for mean in _plan_means(out[policy_slices["plan"]]):
            mean[:, C.PLAN_POSITION.start] = torch.as_tensor(C.T_IDXS, dtype=torch.float32)
            mean[:, C.PLAN_VELOCITY.start] = 1.0
    return out


def _speed_at_start(plan: torch.Tensor) -> torch.Tensor:
    """(plan width,) each hypothesis's x velocity at t = 0 in a plan vector, over all of that hypothesis's entries:
    the speed whose constant-speed plan `init_heads` takes out of the mean plan."""
    _, rows = _plan_rows(plan.shape[0])
    out = torch.zeros_like(plan)
    for h, mean in enumerate(_plan_means(plan)):
        out[h * rows:(h + 1) * rows] = mean[0, C.PLAN_VELOCITY.start]
    return out


def _assemble(slices: dict[str, slice], parts: dict[str, torch.Tensor], width: int) -> torch.Tensor:
    """The flat output vector: one concatenation where the slices tile [0, width) (an export then holds a single
    Concat), else zeros with each head written into its slice."""
    order = sorted(slices, key=lambda n: slices[n].start)
    tiled = [slices[n].start for n in order] == [0] + [slices[n].stop for n in order[:-1]]
    if tiled and slices[order[-1]].stop == width:
        return torch.cat([parts[n] for n in order], dim=1)
    first = next(iter(parts.values()))
    out = first.new_zeros(first.shape[0], width)
    for n, s in slices.items():
        out[:, s] = parts[n]
    return out
