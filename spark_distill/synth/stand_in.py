# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The stand-in teacher `spark-distill synth-teacher` writes: the shipped fitted pair, which drives
(`synth/fitted/v1/`, what `synth-teacher --fit` makes with its defaults), or seeded random weights, whose
outputs mean nothing (tests and timing), both in the project's own layout (recognised as `split-lateral`). Entry
point: `write_stand_in(out, weights=..., size=...)`.

The default is the fitted pair; random weights where none fits (`--size bench`: the fit is tiny) or where the
package lacks its files (with a note saying how to fit one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spark_distill.errors import ConfigError

WEIGHTS = ("fitted", "random")


@dataclass(frozen=True)
class StandIn:
    weights: str  # fitted or random
    files: dict[str, Path]
    note: str | None = None  # why a default turned into random weights


def shipped_fit() -> bool:
    """Whether the package ships the fitted teacher pair (synth/fitted/v1/)."""
    from spark_distill.synth.fit import PAIR_FILES, SHIPPED  # not fit.py itself: its digest pins the shipped pair

    return all((SHIPPED / "v1" / f).exists() for f in PAIR_FILES)


def write_stand_in(out: Path, *, weights: str | None = None, size: str = "tiny", seed: int | None = None
                   ) -> StandIn:
    """Write the fitted pair (`weights="fitted"`, the default where one is shipped) or a random-weight teacher of
    `seed` (default 0) into `out`."""
    from spark_distill.synth.fit import copy_fitted
    from spark_distill.synth.teacher import write_teacher

    if weights is not None and weights not in WEIGHTS:
        raise ConfigError(f"--weights {weights!r}: choose {' or '.join(WEIGHTS)}")
    note = None
    if weights is None:
        if size != "tiny" or seed is not None:
            weights = "random"
        elif shipped_fit():
            weights = "fitted"
        else:
            weights = "random"
            note = ("no fitted teacher is shipped with this package: random weights (its outputs mean nothing); "
                    "`spark-distill synth-teacher DIR --fit` fits one (a few CPU minutes)")
    if weights == "random":
        return StandIn("random", write_teacher(out, size=size, seed=seed or 0), note)
    if size != "tiny":
        raise ConfigError(f"the fitted teacher is tiny; --size {size} has random weights only (--weights random)")
    if seed is not None:
        raise ConfigError("--seed seeds random weights or a fit; the shipped fitted teacher is the fit of seed 0: "
                          "add --weights random or --fit")
    return StandIn("fitted", copy_fitted(out))
