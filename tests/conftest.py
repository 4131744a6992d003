"""Shared pytest fixtures: where the read-only reference folder is, and what to do when it or an optional package is
absent: skip with the reason on a developer's machine, fail under CI (`CI=true`), where `.ci/run` provides both."""
import importlib, os
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


def skip_or_fail(msg:str):
    "Skip the test with `msg`; under CI fail instead: what CI installs must be there, so nothing is skipped silently."
    if IN_CI: pytest.fail(msg + ' (required under CI: .ci/run provides it)')
    pytest.skip(msg)


INSIGHTFACE_HINT = ("install it with `pip install --no-deps insightface==2.1` plus scikit-image, scipy, tqdm, requests "
                    "(never its opencv-python dependency), as .ci/run does")


def require_package(name:str, hint:str=''):
    "Import and return module `name` (e.g. 'insightface.model_zoo.scrfd', 'onnxsim'); `skip_or_fail` when it is missing."
    try: return importlib.import_module(name)
    except ImportError as e:
        skip_or_fail(f"{name} is not installed ({e})" + (f"; {hint}" if hint else ''))


@pytest.fixture
def shared():
    return require_shared()
