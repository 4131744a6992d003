"""The dataset report and the close-up pass from the shell (issue 24): other label formats, exit codes of bad input,
and the new options of detect / test_widerface checked before any work. The statistics, coverage, curves and size
buckets themselves are tested in notebooks 26_insight and 15_evaluate."""
import json, subprocess, sys
import cv2
import numpy as np
from scrfd_nb.insight import dataset_report, read_labels


def run(*args):
    return subprocess.run([sys.executable, '-m', *args], capture_output=True, text=True)


def test_report_retinaface_with_images(tmp_path):
    "A RetinaFace label.txt (sizes from the images): the same numbers as its labelv2 equivalent, a gallery, exit 0."
    (tmp_path/'img'/'ev').mkdir(parents=True)
    cv2.imwrite(str(tmp_path/'img'/'ev'/'a.jpg'), np.full((120, 200, 3), 90, np.uint8))
    (tmp_path/'label.txt').write_text('# ev/a.jpg\n20 30 40 40 30 45 0 50 45 0 40 55 0 32 62 1 48 62 0 0.9\n100 20 8 10\n')
    (tmp_path/'v2.txt').write_text('# ev/a.jpg 200 120\n20 30 60 70 30 45 0 50 45 0 40 55 0 32 62 1 48 62 0\n100 20 108 30 0\n')
    recs, probs = read_labels(tmp_path/'label.txt', images=tmp_path/'img')
    assert probs == [] and [len(r['faces']) for r in recs] == [2] and (recs[0]['width'], recs[0]['height']) == (200, 120)
    a = dataset_report(tmp_path/'label.txt', images=tmp_path/'img', samples=4)['summary']
    b = dataset_report(tmp_path/'v2.txt', samples=4)['summary']
    for k in ('images', 'faces', 'ignore', 'face_size_px', 'keypoints', 'coverage'): assert a[k] == b[k], k
    assert a['keypoints'] == dict(faces_with_kps=1, points_present=5, points_visible=4, points_outside_box=0)
    r = run('scrfd_nb.insight', 'report', str(tmp_path/'label.txt'), '--images', str(tmp_path/'img'), '--samples', '4',
            '--out', str(tmp_path/'rep'), '--no-progress')
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'rep'/'gallery.jpg').is_file() and (tmp_path/'rep'/'report.html').is_file()
    s = json.loads((tmp_path/'rep'/'summary.json').read_text())
    assert (s['images'], s['faces'], s['ignore']) == (1, 2, 0) and set(s['coverage']) == {'640', '320', '960'}


def test_report_bad_input(tmp_path):
    "One line and a non-zero exit, never a traceback; nothing is written over an existing file."
    (tmp_path/'empty.txt').write_text('# a.jpg 10 10\n')
    (tmp_path/'v2.txt').write_text('# ev/a.jpg 200 120\n20 30 60 70 0\n')
    (tmp_path/'out').write_text('keep me')
    for args, code in [(('empty.txt',), 1), (('v2.txt', '--out', 'out'), 2), (('v2.txt', '--images', '.'), 2),
                       (('v2.txt', '--config', 'nope'), 2), (('v2.txt', '--samples', '0'), 2), (('missing.txt',), 2)]:
        r = subprocess.run([sys.executable, '-m', 'scrfd_nb.insight', 'report', *args], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        err = r.stderr.strip().splitlines()
        assert 'Traceback' not in r.stderr and 'error: ' in err[-1], r.stderr      # one error line (argparse: after its usage)
        if code == 1 or 'usage:' not in r.stderr: assert len(err) == 1, r.stderr
    assert (tmp_path/'out').read_text() == 'keep me'


def test_extra_pass_options_checked_first(tmp_path):
    "The close-up options are range-checked before any model is loaded or image read."
    (tmp_path/'w.onnx').write_bytes(b'x')
    r = run('scrfd_nb.detect', '--weights', str(tmp_path/'w.onnx'), '--image', str(tmp_path), '--extra-size', '16')
    assert r.returncode == 2 and '--extra-size' in r.stderr
    r = run('scrfd_nb.test_widerface', '--weights', str(tmp_path/'w.onnx'), '--data-path', str(tmp_path), '--extra-mode', '7')
    assert r.returncode == 2 and '--extra-mode' in r.stderr


def test_data_report_is_the_insight_report(tmp_path):
    "`python -m scrfd_nb.data report` (the issue's spelling) makes the same report as `python -m scrfd_nb.insight report`."
    (tmp_path/'v2.txt').write_text('# ev/a.jpg 200 120\n20 30 60 70 30 45 0 50 45 0 40 55 0 32 62 1 48 62 0\n100 20 108 30 0\n')
    outs = []
    for mod in ('scrfd_nb.data', 'scrfd_nb.insight'):
        r = run(mod, 'report', str(tmp_path/'v2.txt'), '--samples', '4', '--out', str(tmp_path/mod), '--no-progress')
        assert r.returncode == 0, r.stderr
        outs.append(json.loads((tmp_path/mod/'summary.json').read_text()))
    assert outs[0] == outs[1] and (outs[0]['images'], outs[0]['faces']) == (1, 2)
    r = run('scrfd_nb.data', 'report', str(tmp_path/'missing.txt'))     # its bad input too: one line, exit 2
    assert r.returncode == 2 and 'missing.txt' in r.stderr.strip().splitlines()[-1] and 'Traceback' not in r.stderr, r.stderr
