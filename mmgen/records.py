"""Provenance for the records the trainers, benchmarks and evaluation scripts write (training.json, metrics.json,
eval.json, benchmark JSON): the command line that produced them."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence


def command_line(prog: str, argv: Sequence | None = None) -> str:
    """``prog`` followed by ``argv`` (default: this process's ``sys.argv[1:]``), shell-quoted so that pasting the
    record into a shell reruns exactly that command (``--methods "LANTERN self"`` keeps its quotes)."""
    args = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    return f"{prog} {shlex.join(args)}" if args else prog
