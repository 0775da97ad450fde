"""Fixtures shared by the Ray end-to-end tests."""

import shutil
import tempfile

import pytest


@pytest.fixture()
def ray_tmp():
    """A Ray temp dir of this test's own (short: Ray's socket paths must stay short)."""
    path = tempfile.mkdtemp(prefix="cr", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)
