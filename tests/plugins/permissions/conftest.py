"""Fixtures for the permissions plugin tests: the BoxBackend test backend owning box1 and box2."""

from __future__ import annotations

import pytest

from tests.core.testbox import BoxBackend


@pytest.fixture
def box():
    return BoxBackend()
