"""Run every notebook in nbs/ as one pytest test each, with nbdev's own test runner and tst_flags.

Notebooks are the source of truth and their demo cells are tests; running them here gives one summary line
for notebooks and pytest tests together. Notebooks that read the reference folder are skipped when it is
absent (and fail under CI, where it must be present). Cells flagged `#| slow` (minutes, e.g. the default
training job) run here too, since the whole suite fits CI's time; `nbdev_test` alone skips them. Device-only
cells (`npu`, `cuda`) and `notest` cells are skipped."""
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook  # aliased: pytest would collect a bare `test_nb`
from conftest import require_shared

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT/'nbs').rglob('*.ipynb')
             if not any(part.startswith(('_', '.')) for part in p.relative_to(ROOT/'nbs').parts))
USES_SHARED = ('shared_file(', 'shared_dir(', 'golden(')


def test_found_notebooks():
    assert len(NBS) >= 2, f"no notebooks found under {ROOT/'nbs'}"


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.stem)
def test_notebook(nb):
    if any(s in nb.read_text(encoding='utf-8') for s in USES_SHARED): require_shared()
    skip = [f for f in get_config().tst_flags.split() if f != 'slow']
    ok, secs = run_notebook(nb, skip_flags=skip, basepath=ROOT)
    assert ok, f'{nb.name} failed (traceback above)'
