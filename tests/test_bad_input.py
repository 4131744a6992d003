"""Issue 13: every command line on bad input, run as a user would (a subprocess): one `error:` line naming the argument
or file, exit status 2 (usage) or 1 (runtime), no traceback (except with --debug), inputs never changed, and the
results of the good inputs of a batch all written."""
import hashlib, json, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from conftest import require_shared

ROOT = Path(__file__).resolve().parents[1]


def run(module, *args, timeout=120):
    return subprocess.run([sys.executable, '-m', f'scrfd_nb.{module}', *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def sha(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def fails(r, code, *needles):
    "Exit `code`, no traceback, the last stderr line is the one error line and names every needle."
    out = r.stdout + r.stderr
    assert r.returncode == code, (r.returncode, out)
    assert 'Traceback' not in out, out
    last = r.stderr.strip().splitlines()[-1]
    assert 'error: ' in last, r.stderr
    for n in needles: assert str(n) in last, (n, last)
    return last


@pytest.fixture(scope='module')
def w():
    return require_shared()/'data'/'models'/'det_500m.onnx'


@pytest.fixture(scope='module')
def photos():
    d = require_shared()/'data'/'images'
    return d/'0_Parade_marchingband_1_20.jpg', d/'19_Couple_Couple_19_743.jpg'


def test_detect_never_overwrites_its_input(w, photos, tmp_path):
    p = tmp_path/'photo.jpg'; p.write_bytes(photos[0].read_bytes()); h = sha(p)
    fails(run('detect', '--weights', w, '--image', p, '--out', p), 2, '--out', p, 'is also an input')
    fails(run('detect', '--weights', w, '--image', p, '--json', p), 2, '--json', 'is also an input')
    assert sha(p) == h


def test_detect_folder_goes_on_past_bad_images(w, photos, tmp_path):
    src = tmp_path/'imgs'; src.mkdir()
    (src/'a.jpg').write_bytes(photos[0].read_bytes()); (src/'c.jpg').write_bytes(photos[1].read_bytes())
    (src/'b_cut.jpg').write_bytes(photos[0].read_bytes()[:20000])        # truncated: OpenCV would decode half of it
    (src/'d_junk.png').write_bytes(b'not a png')
    before = {p.name: sha(p) for p in src.iterdir()}
    r = run('detect', '--weights', w, '--image', src, '--json', tmp_path/'all.json', '--out', tmp_path/'drawn')
    last = fails(r, 1, '2 of 4 images failed', src/'b_cut.jpg', 'truncated JPEG', src/'d_junk.png')
    dets = json.loads((tmp_path/'all.json').read_text())
    assert sorted(dets) == ['a.jpg', 'c.jpg'] and all(len(v) > 5 for v in dets.values()), dets.keys()
    assert sorted(p.name for p in (tmp_path/'drawn').iterdir()) == ['a.jpg', 'c.jpg']
    assert {p.name: sha(p) for p in src.iterdir()} == before
    # the drawn copies into the input folder itself would replace the photos: refused before any work
    fails(run('detect', '--weights', w, '--image', src, '--out', src), 2, '--out', 'would overwrite an input image')
    assert {p.name: sha(p) for p in src.iterdir()} == before


@pytest.mark.parametrize('args, needle', [(['--thr', '1.5'], 'argument --thr: 1.5 is not a number in [0.0, 1.0]'),
                                          (['--input-size', '0'], 'argument --input-size: 0 is not an integer')])
def test_detect_out_of_range_at_parse_time(w, photos, args, needle):
    r = run('detect', '--weights', w, '--image', photos[0], *args)
    assert r.returncode == 2 and needle in r.stderr and 'Traceback' not in r.stderr, r.stderr


def test_detect_unwritable_outputs_checked_first(w, photos, tmp_path):
    fails(run('detect', '--weights', w, '--image', photos[0], '--json', '/proc/x.json'), 2, '--json /proc/x.json')
    fails(run('detect', '--weights', w, '--image', photos[0], '--out', tmp_path), 2, '--out', tmp_path)


def test_corrupt_weights_one_line_and_debug_traceback(w, photos, tmp_path):
    cut = tmp_path/'cut.onnx'; cut.write_bytes(w.read_bytes()[:5000])
    fails(run('detect', '--weights', cut, '--image', photos[0]), 1, cut, 'corrupt or truncated')
    r = run('detect', '--weights', cut, '--image', photos[0], '--debug')
    assert r.returncode == 1 and 'Traceback' in r.stderr and r.stderr.strip().splitlines()[-1].startswith('error:')


def test_data_check(tmp_path):
    (tmp_path/'empty.txt').write_text('')
    r = run('data', 'check', tmp_path/'empty.txt')
    assert r.returncode == 1 and 'empty file' in r.stdout and 'FAILED' in r.stdout, r.stdout
    (tmp_path/'bom.txt').write_bytes('\ufeff# a.jpg 100 100\n10 10 40 40 0\n'.encode('utf-8'))
    r = run('data', 'check', tmp_path/'bom.txt')
    assert r.returncode == 0 and '1 images, 1 faces' in r.stdout, r.stdout
    (tmp_path/'latin1.txt').write_bytes('# a.jpg 100 100\n# caf\xe9.jpg 100 100\n'.encode('latin-1'))
    fails(run('data', 'check', tmp_path/'latin1.txt'), 1, f"{tmp_path/'latin1.txt'}:2: not UTF-8 text")
    (tmp_path/'nan.txt').write_text('# a.jpg 100 100\n10 10 nan 40 0\n')
    r = run('data', 'check', tmp_path/'nan.txt')
    assert r.returncode == 1 and f"{tmp_path/'nan.txt'}:2: error: non-numeric: nan or inf" in r.stdout, r.stdout


def test_evaluate(tmp_path):
    gt = tmp_path/'gt.txt'; gt.write_text('# ev/a.jpg 100 100\n10 10 40 40\n')
    f = tmp_path/'pred'/'ev'/'a.txt'; f.parent.mkdir(parents=True)
    f.write_text('ev/a.jpg\n2\n10 10 30 30 0.9\n1 2 3 4 nan\n')
    fails(run('evaluate', '--pred', tmp_path/'pred', '--gt', gt), 1, f'{f}:4', 'non-finite')
    r = run('evaluate', '--pred', tmp_path/'pred', '--gt', gt, '--iou', '0')
    assert r.returncode == 2 and 'argument --iou: 0 is not a number in (0, 1]' in r.stderr, r.stderr
    f.write_bytes('ev/caf\xe9.jpg\n0\n'.encode('latin-1'))
    fails(run('evaluate', '--pred', tmp_path/'pred', '--gt', gt), 1, f'{f}:1: not UTF-8')
    mat = tmp_path/'mat'; mat.mkdir()
    for n in ['wider_face_val.mat', 'wider_easy_val.mat', 'wider_medium_val.mat', 'wider_hard_val.mat']:
        (mat/n).write_bytes(b'MATLAB 5.0 MAT-file, truncated')
    f.write_text('ev/a.jpg\n0\n')
    fails(run('evaluate', '--pred', tmp_path/'pred', '--gt', mat), 1, mat/'wider_face_val.mat', '.mat file')
    h = sha(gt)
    fails(run('evaluate', '--pred', tmp_path/'pred', '--gt', gt, '--json', gt), 2, '--json', 'is also an input')
    assert sha(gt) == h


def test_export_outputs(w, tmp_path):
    fails(run('export', '--config', 'scrfd_500m', '--out', '/nonexistent/dir/x.onnx'), 2, '--out /nonexistent/dir/x.onnx')
    h = sha(w)
    fails(run('export', '--weights', w, '--out', w), 2, '--out', 'is also an input')
    assert sha(w) == h


def test_test_widerface_checks_gt_first_and_goes_on(w, photos, tmp_path):
    root = tmp_path/'wider'; ev = root/'val'/'images'/'0--Parade'; ev.mkdir(parents=True)
    (ev/'0_Parade_marchingband_1_20.jpg').write_bytes(photos[0].read_bytes())
    (ev/'0_Parade_cut.jpg').write_bytes(photos[0].read_bytes()[:20000])
    r = run('test_widerface', '--weights', w, '--data-path', root, '--out', tmp_path/'o', '--gt', tmp_path/'nope',
            '--no-progress')
    fails(r, 2, '--gt', tmp_path/'nope')
    assert not list((tmp_path/'o').rglob('*.txt'))                      # nothing predicted before the check
    r = run('test_widerface', '--weights', w, '--data-path', root, '--out', tmp_path/'o', '--nms-pre', '-5')
    assert r.returncode == 2 and 'argument --nms-pre: -5 is not an integer in [0, inf)' in r.stderr, r.stderr
    r = run('test_widerface', '--weights', w, '--data-path', root, '--out', tmp_path/'o', '--device', 'cpu',
            '--no-progress')
    fails(r, 1, '1 images could not be read', ev/'0_Parade_cut.jpg', 'truncated JPEG')
    assert [p.name for p in (tmp_path/'o').rglob('*.txt')] == ['0_Parade_marchingband_1_20.txt']
    lines = (tmp_path/'o'/'0--Parade'/'0_Parade_marchingband_1_20.txt').read_text().splitlines()
    assert int(lines[1]) == len(lines) - 2 > 10
