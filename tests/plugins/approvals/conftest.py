"""Fixtures for the approvals tests: the BoxBackend test backend and the plugin set."""

from __future__ import annotations

import pytest

from tests.core.testbox import BoxBackend


@pytest.fixture
def box():
    return BoxBackend()
