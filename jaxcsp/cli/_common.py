"""Arguments shared by several ``jaxcsp`` commands."""

from __future__ import annotations

import argparse


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    """``--no-progress`` / ``--quiet`` (the same switch): sets ``args.no_progress``."""
    p.add_argument(
        "--no-progress", "--quiet", dest="no_progress", action="store_true", help="no progress bar"
    )
