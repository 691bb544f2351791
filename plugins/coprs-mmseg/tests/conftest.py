"""Tiny models are built into a per-session folder, never into the user's cache."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _coprs_home(tmp_path_factory):
    old = os.environ.get("COPRS_HOME")
    os.environ["COPRS_HOME"] = str(tmp_path_factory.mktemp("coprs_home_mmseg"))
    yield
    if old is None:
        os.environ.pop("COPRS_HOME", None)
    else:
        os.environ["COPRS_HOME"] = old
