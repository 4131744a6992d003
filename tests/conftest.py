"""Shared pytest fixtures: where the read-only reference folder is, and what to do when it is absent."""
import os
import pytest
from scrfd_nb.core import shared_dir

IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')


def require_shared():
    "The reference folder; skip the test when it is absent, except under CI, where it must be there."
    d = shared_dir(required=False)
    if d is None:
        msg = ("reference folder ../shared not found (set SCRFD_SHARED): it holds the golden outputs, "
               "official ONNX models and WIDER FACE ground truth these tests compare against")
        if IN_CI: pytest.fail(msg)
        pytest.skip(msg)
    return d


@pytest.fixture
def shared():
    return require_shared()
