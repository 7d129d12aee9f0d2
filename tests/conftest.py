"""Shared fixtures: the repository root, the seed spaces and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "spaces"
# ABC_SHARED_DATA points elsewhere (a git worktree has no ../shared next to it).
SHARED_DATA = Path(os.environ.get("ABC_SHARED_DATA") or ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared data sets are not at {SHARED_DATA}")
    return SHARED_DATA
