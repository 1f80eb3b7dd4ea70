"""The embedded demo data: a seeded generator of the course-format sources."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def ensure_demo_data(folder: Path, scale: float, seed: int, shift_month: str) -> None:
    """Generate the demo sources into `folder` unless they are there already.

    Generated beside the folder and renamed into place, so two processes starting at once
    never see half-written files: the loser of the rename race discards its copy.
    """
    from ml_assets.demo.generator import SOURCE_NAMES, generate

    if all((folder / f"{name}.csv").is_file() for name in SOURCE_NAMES):
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(building, ignore_errors=True)
    generate(building, scale=scale, seed=seed, shift_month=shift_month)
    try:
        os.rename(building, folder)
    except OSError:
        if not all((folder / f"{name}.csv").is_file() for name in SOURCE_NAMES):
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
