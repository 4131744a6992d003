"""The notebooks in JupyterLab, in a real browser: what a user sees after `jupyter lab nbs/` and Run All.

One JupyterLab server (headless, 127.0.0.1 on a free port, a random token) serves copies of the notebooks with
their outputs cleared, so every picture checked here comes from this run. Headless Chromium (Debian's `chromium`
package, driven by playwright with `executable_path`; playwright's own browser download is not used) opens each
notebook of `BROWSER_NBS`, runs Run ▸ Run All Cells from the menu, and checks that every code cell ran (a numbered
prompt) with no error or stderr output, that every cell that draws (`test_notebooks.draws`) shows a decoded
image, and that moving the widget's slider with the keyboard changes the picture (the image data before and after
differ). 05_model is the model notebook and holds the layer-by-layer widget; 12_transforms holds the augmented
sample browser. The kernel gets IN_TEST=1, as in test_notebooks.py.

Needs `chromium` and `playwright` (`.ci/run` installs both): without them the test skips with the reason, and
fails under CI. Every wait is bounded; the server is killed at the end. `SCRFD_SCREENSHOTS=nbs/images` also
writes the README's screenshots (JPEG) there."""
import os, re, shutil, signal, socket, subprocess, sys, time, secrets, json, urllib.request
from pathlib import Path
import pytest
from conftest import require_shared, skip_or_fail
from test_notebooks import ROOT, USES_SHARED, draws, skipped

CHROMIUM = Path(os.environ.get('CHROMIUM', '/usr/bin/chromium'))
# notebook -> (code cell index of the widget among all cells, slider to move: 0-based among the widget's sliders)
BROWSER_NBS = {'05_model': 0, '12_transforms': 1}
SETTINGS = {   # user settings for the test's JupyterLab: no news or update checks, no autosave, every cell in the DOM
    '@jupyterlab/apputils-extension/notification': {'fetchNews': 'false', 'checkForUpdates': False},
    '@jupyterlab/docmanager-extension/plugin': {'autosave': False},
    '@jupyterlab/notebook-extension/tracker': {'windowingMode': 'none'},
    '@jupyterlab/extensionmanager-extension/plugin': {'enabled': False},
}
SERVER_START_S, PAGE_S, RUN_ALL_S, WIDGET_S = 120, 60, 600, 60


def _missing(msg):
    skip_or_fail(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "A JupyterLab server on copies of the notebooks (outputs cleared): yields (base url, token, log path)."
    if not CHROMIUM.exists(): _missing(f'{CHROMIUM} not found: install Debian\'s chromium (apt-get install -y chromium)')
    try: import playwright.sync_api, jupyterlab, ipykernel  # noqa: F401
    except ImportError as e: _missing(f'{e.name} is not installed (pip install playwright; jupyterlab and ipykernel come with .[dev])')
    if any(s in (ROOT/'nbs'/f'{n}.ipynb').read_text(encoding='utf-8') for n in BROWSER_NBS for s in USES_SHARED):
        require_shared()
    import nbformat
    tmp = tmp_path_factory.mktemp('lab')
    nbs = tmp/'nbs'
    nbs.mkdir()
    for name in BROWSER_NBS:
        nb = nbformat.read(ROOT/'nbs'/f'{name}.ipynb', as_version=4)
        assert not [i for i, c in enumerate(nb.cells) if c.cell_type == 'code' and skipped(c)], \
            f'{name} has cells that Run All would run but tests skip'
    for p in (ROOT/'nbs').glob('*.ipynb'):   # all of them, as the user's file browser lists them
        nb = nbformat.read(p, as_version=4)
        for c in nb.cells:
            if c.cell_type == 'code': c.outputs, c.execution_count = [], None
        nb.metadata.pop('widgets', None)
        nbformat.write(nb, nbs/p.name)
    if (ROOT/'nbs'/'images').is_dir(): shutil.copytree(ROOT/'nbs'/'images', nbs/'images')
    for key, val in SETTINGS.items():
        f = tmp/'settings'/f'{key}.jupyterlab-settings'
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(val))
    env = {k: v for k, v in os.environ.items() if k != 'MPLBACKEND'}
    env.update(IN_TEST='1', JUPYTERLAB_SETTINGS_DIR=str(tmp/'settings'), JUPYTERLAB_WORKSPACES_DIR=str(tmp/'ws'),
               JUPYTER_RUNTIME_DIR=str(tmp/'runtime'), JUPYTER_CONFIG_DIR=str(tmp/'config'))
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp/'jupyterlab.log'
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
           '--ServerApp.port_retries=0', f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={nbs}',
           '--ServerApp.terminals_enabled=False'] + (['--allow-root'] if os.geteuid() == 0 else [])   # CI runs as root
    with open(log, 'w') as logf:
        proc = subprocess.Popen(cmd, env=env, cwd=nbs, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None: pytest.fail(f'jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}')
            try:
                with urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=5) as r:
                    if r.status == 200: break
            except OSError: pass
            if time.monotonic() > deadline: pytest.fail(f'jupyter lab did not answer in {SERVER_START_S} s:\n{log.read_text()[-3000:]}')
            time.sleep(0.5)
        yield url, token, log
    finally:
        try:   # the kernels run in sessions of their own: shut them down through the server first
            with urllib.request.urlopen(f'{url}/api/kernels?token={token}', timeout=10) as r: kernels = json.load(r)
            for k in kernels:
                req = urllib.request.Request(f"{url}/api/kernels/{k['id']}?token={token}", method='DELETE')
                urllib.request.urlopen(req, timeout=30).close()
        except OSError: pass
        try: os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError: pass
        try: proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture(scope='module')
def browser(lab):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, timeout=PAGE_S * 1000,
                               args=['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'])
        try: yield b
        finally: b.close()


_STATE_JS = """() => {
  const cells = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell')];
  return cells.map(c => ({
    code: c.classList.contains('jp-CodeCell'),
    prompt: (c.querySelector('.jp-InputArea-prompt') || {}).textContent || '',
    stderr: [...c.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')].map(e => e.textContent.slice(0, 500)),
    images: [...c.querySelectorAll('.jp-OutputArea-output img')].filter(i => i.complete && i.naturalWidth > 0).length,
    widgetErrors: [...c.querySelectorAll('.jp-OutputArea-output')].filter(e => /Error displaying widget|Failed to load model/.test(e.textContent)).length,
  }));
}"""


def _wait(page, what, pred, seconds, poll=0.5):
    "Poll `pred()` until it is truthy (returned) or `seconds` pass (test fails naming `what`)."
    deadline = time.monotonic() + seconds
    while True:
        v = pred()
        if v: return v
        if time.monotonic() > deadline: pytest.fail(f'timed out after {seconds} s waiting for {what}')
        page.wait_for_timeout(poll * 1000)


def _shot(page, locator, name):
    "Scroll the cell to the top of the notebook and, with SCRFD_SCREENSHOTS set, save a JPEG screenshot there."
    out = os.environ.get('SCRFD_SCREENSHOTS')
    if not out: return
    locator.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.mouse.move(5, 5)   # no hover highlight
    page.wait_for_timeout(500)
    path = (ROOT/out if not Path(out).is_absolute() else Path(out))/name
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), type='jpeg', quality=70)


@pytest.mark.parametrize('name', list(BROWSER_NBS))
def test_notebook_in_jupyterlab(lab, browser, name):
    import nbformat
    url, token, log = lab
    nb = nbformat.read(ROOT/'nbs'/f'{name}.ipynb', as_version=4)
    plots = [i for i, c in enumerate(nb.cells) if draws(c)]
    widget = [i for i, c in enumerate(nb.cells) if c.cell_type == 'code' and 'interact(' in c.source]
    assert len(widget) == 1, f'{name}: expected one interact widget cell, found {widget}'
    widget = widget[0]
    page = browser.new_page(viewport={'width': 1280, 'height': 800})
    page.set_default_timeout(PAGE_S * 1000)
    console = []
    page.on('console', lambda m: console.append(m.text) if m.type == 'error' else None)
    page.on('pageerror', lambda e: console.append(str(e)))
    page.on('crash', lambda p: console.append('the page crashed'))
    t_start = time.monotonic()
    step = lambda what: print(f'[{time.monotonic() - t_start:6.1f} s] {name}: {what}', flush=True)
    try:
        page.goto(f'{url}/lab/tree/{name}.ipynb?token={token}', timeout=PAGE_S * 1000)
        page.wait_for_selector('.jp-NotebookPanel .jp-Notebook .jp-Cell')
        _wait(page, 'the kernel to start', lambda: page.locator(
            '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status="idle"]').count(), PAGE_S)
        _wait(page, f'the {len(nb.cells)} cells of {name} in the page', lambda: len(page.evaluate(_STATE_JS)) == len(nb.cells), PAGE_S)
        step('opened, kernel idle')
        started = lambda: any(c['code'] and re.search(r'\[(\*|\d+)\]', c['prompt']) for c in page.evaluate(_STATE_JS))
        for attempt in range(3):   # a click while the kernel is still connecting runs nothing: then click again
            page.locator('.lm-MenuBar-itemLabel', has_text=re.compile(r'^Run$')).click()
            page.locator('.lm-Menu-itemLabel', has_text=re.compile(r'^Run All Cells$')).click()
            t0 = time.monotonic()
            try: _wait(page, 'Run All to start', started, 20)
            except pytest.fail.Exception:
                if attempt == 2: raise
                page.keyboard.press('Escape')
                continue
            break

        def finished():
            st = page.evaluate(_STATE_JS)
            code = [c for c in st if c['code']]
            if any('*' in c['prompt'] for c in code): return None
            if any(c['stderr'] for c in code) or all(re.search(r'\[\d+\]', c['prompt']) for c in code): return st
        st = _wait(page, f'{name} to run all its cells', finished, RUN_ALL_S, poll=1)
        run_s = time.monotonic() - t0
        step(f'ran all cells in {run_s:.1f} s')
        bad = {i: c['stderr'] for i, c in enumerate(st) if c['stderr']}
        assert not bad, f'{name}: error or stderr outputs in cells {bad}'
        not_run = [i for i, c in enumerate(st) if c['code'] and not re.search(r'\[\d+\]', c['prompt'])]
        assert not not_run, f'{name}: cells {not_run} did not run'
        # the widget's picture is displayed after the kernel went idle: wait for it, bounded
        st = _wait(page, f'{name}: the pictures of cells {plots}',
                   lambda: (lambda s: s if all(s[i]['images'] for i in plots) else None)(page.evaluate(_STATE_JS)), WIDGET_S)
        assert not any(c['widgetErrors'] for c in st), f'{name}: a widget failed to display ({console[-5:]})'
        step('pictures displayed')
        cells = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell')
        if name == '05_model':
            _shot(page, cells.nth(plots[0] - 1), 'jupyterlab_05_model.jpg')   # from the markdown line above the figure
        # move the slider one step with the keyboard and wait for another picture
        wcell = cells.nth(widget)
        img = wcell.locator('.widget-interact img')
        handles = wcell.locator('.widget-interact .noUi-handle')
        readouts = wcell.locator('.widget-interact .widget-readout')
        before, value = img.first.get_attribute('src'), readouts.nth(BROWSER_NBS[name]).text_content()
        handles.nth(BROWSER_NBS[name]).focus()
        page.keyboard.press('ArrowRight')
        step('slider moved')
        _wait(page, f'{name}: the slider readout to move from {value}',
              lambda: readouts.nth(BROWSER_NBS[name]).text_content() != value, WIDGET_S)
        after = _wait(page, f'{name}: a new picture after moving the slider',
                      lambda: img.count() == 1 and (s := img.first.get_attribute('src')) and s != before and s, WIDGET_S)
        assert int(readouts.nth(BROWSER_NBS[name]).text_content()) == int(value) + 1
        assert after.startswith('data:image/png') and len(after) > 1000
        _wait(page, f'{name}: the new picture to be decoded',
              lambda: img.first.evaluate('i => i.complete && i.naturalWidth > 0'), WIDGET_S)
        if name == '05_model': _shot(page, cells.nth(widget), 'jupyterlab_05_model_widget.jpg')
        print(f'{name}: Run All took {run_s:.1f} s in JupyterLab; slider {value} -> {int(value) + 1} changed the picture')
    except BaseException:
        if os.environ.get('SCRFD_SCREENSHOTS') is None:
            page.screenshot(path=str(Path(log).parent/f'{name}_failure.png'))
        print(f'browser console errors: {console[-10:]}\nserver log: {Path(log).read_text()[-3000:]}')
        raise
    finally:
        page.close()
