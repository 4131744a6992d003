"""Run every notebook in nbs/ top to bottom in a real Jupyter kernel (nbclient + ipykernel), one pytest test each.

Notebooks are the source of truth and their demo cells are tests. They run here the way a user's "Run All" runs
them: a fresh ipykernel per notebook started by nbclient, matplotlib's inline backend, `display`, ipywidgets'
comm messages and the notebook's folder as working directory. Each notebook must finish without an error output,
and every cell that draws a figure (`draws` below) must have produced a picture (image/png or image/jpeg, directly
or inside an interact widget's Output).

Flags keep their meaning: cells flagged `#| cuda`, `#| npu` or `#| notest` (settings.ini `tst_flags`, minus
`slow`) and `#| eval: false` cells are removed before the run, exactly the cells nbdev's own runner skips. Cells
flagged `#| slow` (minutes, e.g. the default training job) do run, since the whole suite fits CI's time;
`nbdev_test` alone skips them. `IN_TEST=1` is set in the kernel as nbdev's runner sets it, so notebooks that
shorten their demos under test do so here too.

Why one run and not two: this real-kernel run *replaces* the execnb run (nbdev's `test_nb`) that used to be here,
so CI runs each notebook once. execnb is what `nbdev_test` uses; `test_execnb_matches_kernel` keeps a cheap check
that it still gives the same results as the kernel (same cells with output, same printed text up to timings and
addresses, pictures in the same cells) on two small notebooks, one of them with a figure. Notebooks that read the
reference folder are skipped when it is absent (and fail under CI, where it must be present)."""
import ast, os, re
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.process import extract_directives
from fastcore.basics import AttrDict
from conftest import require_shared

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT/'nbs').rglob('*.ipynb')
             if not any(part.startswith(('_', '.')) for part in p.relative_to(ROOT/'nbs').parts))
USES_SHARED = ('shared_file(', 'shared_dir(', 'golden(')
SKIP_FLAGS = set(get_config().tst_flags.split()) - {'slow'}
# a cell that draws: a matplotlib figure, an image display, or a widget that shows one
PLOTS = re.compile(r'plt\.(subplots|figure|imshow|plot|show)\b|\.imshow\(|show_feature\(|plot_pr\(|display\(\s*Image\(')
IMAGE_MIMES = ('image/png', 'image/jpeg')
WIDGET_VIEW = 'application/vnd.jupyter.widget-view+json'
CELL_TIMEOUT = 1800   # seconds per cell: the slow training cells take minutes on 2 CPU cores


def skipped(cell) -> bool:
    "True for cells nbdev's runner does not run: markdown, `nbdev_export(` calls, `eval: false`, `SKIP_FLAGS`."
    if cell['cell_type'] != 'code': return True
    if 'nbdev_export' + '(' in cell['source']: return True
    d = extract_directives(AttrDict(source=cell['source']), remove=False)
    if d.get('eval:', [''])[0].lower() == 'false': return True
    return bool(SKIP_FLAGS & d.keys())


def only_definitions(source:str) -> bool:
    "True for a cell that only imports and defines (functions, classes): drawing code inside runs when called."
    lines = [l for l in source.splitlines() if not l.lstrip().startswith(('#|', '%', '!'))]
    try: body = ast.parse('\n'.join(lines)).body
    except SyntaxError: return False
    return bool(body) and all(isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)) for n in body)


def draws(cell) -> bool:
    "A code cell that shows a picture when run: it calls a drawing function (`PLOTS`) and is not a definition."
    if cell['cell_type'] != 'code' or not PLOTS.search(cell['source']): return False
    d = extract_directives(AttrDict(source=cell['source']), remove=False)
    return not {'export', 'exports', 'exporti'} & d.keys() and not only_definitions(cell['source'])


def read_runnable(nb_path):
    "The notebook (nbformat) with the cells that are not run removed and every output cleared."
    import nbformat
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells = [c for c in nb.cells if not (c.cell_type == 'code' and skipped(c))]
    for c in nb.cells:
        if c.cell_type == 'code': c.outputs, c.execution_count = [], None
    return nb


def kernel_env() -> dict:
    "The kernel's environment: this one, with IN_TEST=1 (as nbdev's runner sets) and matplotlib's default backend."
    env = {k: v for k, v in os.environ.items() if k != 'MPLBACKEND'}
    env['IN_TEST'] = '1'
    return env


def polling_client(nb, **kw):
    """An nbclient `NotebookClient` whose wait for a cell's reply polls the shell channel every half second.

    nbclient 0.11 waits for the execute reply with one `get_msg(timeout=cell timeout)`; after a cell that displays an
    ipywidgets `interact` drawing a figure, that call sometimes returns only when the timeout expires, although the
    reply has arrived (jupyter/nbclient#312; measured here: 1 in 3 runs of such a cell waited the full timeout, which
    is 30 minutes under CI). Short polls pick the reply up at once; the cell's deadline is unchanged."""
    from queue import Empty
    from time import monotonic
    from nbclient import NotebookClient
    class PollingClient(NotebookClient):
        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            get = kc.shell_channel.get_msg
            async def get_msg(timeout=None):
                deadline = None if timeout is None else monotonic() + timeout
                while True:
                    step = 0.5 if deadline is None else max(0.0, min(0.5, deadline - monotonic()))
                    try: return await get(timeout=step)
                    except Empty:
                        if deadline is not None and monotonic() >= deadline: raise
            kc.shell_channel.get_msg = get_msg
            return kc
    return PollingClient(nb, **kw)


def run_in_kernel(nb_path, timeout=CELL_TIMEOUT):
    "Execute the runnable cells of `nb_path` in a fresh ipykernel, as 'Run All' does; → the executed notebook."
    nb = read_runnable(nb_path)
    polling_client(nb, timeout=timeout, kernel_name='python3', allow_errors=False,
                   resources={'metadata': {'path': str(Path(nb_path).parent)}}).execute(env=kernel_env())
    return nb


def widget_images(nb, output) -> int:
    "Pictures inside the widget an output displays (an interact's Output widget), from the saved widget state."
    state = nb.metadata.get('widgets', {}).get('application/vnd.jupyter.widget-state+json', {}).get('state', {})
    todo, seen, n = [output['data'][WIDGET_VIEW]['model_id']], set(), 0
    while todo:
        mid = todo.pop()
        if mid in seen or mid not in state: continue
        seen.add(mid)
        s = state[mid]['state']
        todo += [c.removeprefix('IPY_MODEL_') for c in s.get('children', []) if isinstance(c, str)]
        n += sum(any(m in o.get('data', {}) for m in IMAGE_MIMES) for o in s.get('outputs', []))
    return n


def cell_images(nb, cell) -> int:
    "Pictures a code cell shows: image outputs, plus those inside widgets it displays."
    n = 0
    for o in cell.get('outputs', []):
        data = o.get('data', {})
        n += any(m in data for m in IMAGE_MIMES)
        if WIDGET_VIEW in data: n += widget_images(nb, o)
    return n


def errors(nb) -> list[str]:
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb.cells) if c.cell_type == 'code'
            for o in c.outputs if o.get('output_type') == 'error']


def test_found_notebooks():
    assert len(NBS) >= 2, f"no notebooks found under {ROOT/'nbs'}"


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.stem)
def test_notebook(nb):
    if any(s in nb.read_text(encoding='utf-8') for s in USES_SHARED): require_shared()
    from nbclient.exceptions import CellExecutionError
    try: out = run_in_kernel(nb)
    except CellExecutionError as e: pytest.fail(f'{nb.name} failed in the kernel:\n{e}', pytrace=False)
    assert not errors(out), f'{nb.name}: error outputs {errors(out)}'
    missing = [i for i, c in enumerate(out.cells) if draws(c) and not cell_images(out, c)]
    assert not missing, f'{nb.name}: cells {missing} draw a figure but showed no picture'


# --- execnb and the kernel agree -------------------------------------------------------------------------------
SAME_AS_EXECNB = ['01_config', '06_anchors']
_VOLATILE = re.compile(r'0x[0-9a-f]+|\d+(\.\d+)?\s*(s|ms|µs|us|sec|seconds)\b')


def _summary(nb) -> list:
    "Per code cell: printed text (timings and addresses masked), result text, and whether a picture was shown."
    rows = []
    for c in nb.cells:
        if c.get('cell_type') != 'code': continue
        text = ''.join(''.join(o.get('text', '')) for o in c.get('outputs', []) if o.get('output_type') == 'stream')
        res = [''.join(o['data'].get('text/plain', '')) for o in c.get('outputs', [])
               if o.get('output_type') == 'execute_result']
        pics = any(m in o.get('data', {}) for o in c.get('outputs', []) for m in IMAGE_MIMES)
        rows.append((_VOLATILE.sub('<v>', text), [_VOLATILE.sub('<v>', r) for r in res], pics))
    return rows


@pytest.mark.parametrize('name', SAME_AS_EXECNB)
def test_execnb_matches_kernel(name):
    "nbdev's runner (execnb, in this process) and a real kernel print the same things and draw in the same cells."
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    nb_path = ROOT/'nbs'/f'{name}.ipynb'
    if any(s in nb_path.read_text(encoding='utf-8') for s in USES_SHARED): require_shared()
    kernel = run_in_kernel(nb_path)
    ex = read_nb(nb_path)
    ex.cells = [c for c in ex.cells if not (c.cell_type == 'code' and skipped(c))]
    for c in ex.cells:
        if c.cell_type == 'code': c.outputs = []
    os.environ['IN_TEST'] = '1'
    with working_directory(nb_path.parent): CaptureShell(nb_path).run_all(ex, exc_stop=True)
    a, b = _summary(ex), _summary(kernel)
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)): assert x == y, f'{name}, code cell {i}: execnb {x!r} != kernel {y!r}'
    assert any(r[2] for r in b) or name != '06_anchors', 'the comparison should include a figure'
