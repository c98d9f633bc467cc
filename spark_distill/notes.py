# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Notes: a setting the tool chose or changed for the data at hand (a batch sized to the clips, a mode turned
off), which a user should see but which is not a problem. They go to one logger, `spark_distill.notes`, at
INFO; the command line prints them as `note: ...` lines, apart from warnings. Entry point: `note(message)`.
Notes, warnings and errors: docs/conventions.md.
"""

from __future__ import annotations

import logging

NOTES = logging.getLogger("spark_distill.notes")
NOTES.setLevel(logging.INFO)  # shown by the CLI at its default level (WARNING), where module INFO logs are not


def note(message: str) -> None:
    """Record a one-line note (no trailing period needed, no `note:` prefix)."""
    NOTES.info(message)
