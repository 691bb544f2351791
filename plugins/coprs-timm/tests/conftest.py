"""Tiny models are built into a per-session folder, never into the user's cache."""

from __future__ import annotations

import pytest

from coprs.utils import using_coprs_home


@pytest.fixture(scope="session", autouse=True)
def _coprs_home(tmp_path_factory):
    with using_coprs_home(tmp_path_factory.mktemp("coprs_home_timm")):
        yield
