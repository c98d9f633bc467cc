# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The shipped pre-trained student, v2: v1's vision with a policy half trained by `train --fresh-policy`.

v1 came from `bench distill --save-student` on an H100 (48 drives, 1000 steps: its vision learnt the lane lines,
its plan's lateral stayed at the label mean, benchmarks/distill.md). This renews its recurrent half and policy
heads and trains only them on its frozen vision, on the CPU: two varied 20 s drives (seeds 40,000-1, the bench's
training seeds, never the demo's) labelled by the fitted teacher, 150 steps of 8 clips. ~5 min on 2 cores.
Run again it gives the same student: the vision it starts from is v2's, the same as v1's.

    .venv/bin/python benchmarks/student_v2.py [WORKDIR]
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEST = REPO / "spark_distill" / "synth" / "student" / "v2"
TRAIN = ["--labels", "teacher", "--student", "pretrained", "--fresh-policy", "--max-steps", "150", "--batch-size",
         "8", "--device", "cpu", "--run", "fresh-policy"]


def main(work: Path) -> None:
    from spark_distill.bench.distill import drive_configs, make_dataset
    from spark_distill.models.pretrained import save_pretrained
    from spark_distill.synth.fit import copy_fitted

    shutil.rmtree(work, ignore_errors=True)
    copy_fitted(work / "teacher")
    make_dataset(work / "train", drive_configs(2, 20.0, base=40_000), work / "teacher", workers=2, device="cpu")
    cli = Path(sys.executable).with_name("spark-distill")
    subprocess.run([str(cli), "train", str(work / "train"), *TRAIN, "--runs-dir", str(work / "runs")], check=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    made_by = {"command": "python benchmarks/student_v2.py", "stage_1": "v1: bench distill --save-student on an "
               "H100 (see its pretrained.json in git history, benchmarks/distill.md)", "stage_2": "spark-distill "
               "train <2 drives, seeds 40000-1, 20 s> " + " ".join(TRAIN), "device": "cpu", "code": commit,
               "date": datetime.date.today().isoformat()}
    made = work / DEST.name  # written whole beside, then moved in
    save_pretrained(work / "runs" / "fresh-policy", made, teacher=work / "teacher", provenance={"made_by": made_by})
    shutil.rmtree(DEST, ignore_errors=True)
    shutil.move(made, DEST)
    for old in DEST.parent.iterdir():  # one shipped student per layout
        if old != DEST and old.is_dir():
            shutil.rmtree(old)
    print(f"wrote {DEST}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/student-v2"))
