"""WIDER FACE evaluation against the reference: the four golden prediction sets on the official .mat ground truth
(APs to 1e-6, 1000-point PR arrays identical, NaNs included; the one full golden sweep, nbs/15_evaluate.ipynb shows one
set), the CLI round trip through result files, a randomised comparison with the per-image loop port
(tests/evaluate_refs.py, which bench/evaluate.py times), and the error messages for bad input."""
import json, subprocess, sys
import numpy as np
import pytest
from scrfd_nb.evaluate import (SETTINGS, WiderGT, evaluate_widerface, load_gt_mat, load_gt_labelv2, read_pred_dir,
                               write_pred_dir, norm_scores)
from evaluate_refs import loop_evaluate

SETS = ['widerface_preds_0_good.npz', 'widerface_preds_1_noisy.npz', 'widerface_preds_2_edge.npz',
        'widerface_preds_3_unsorted.npz']


@pytest.fixture(scope='module')
def gt_dir():
    from conftest import require_shared
    return require_shared()/'data'/'widerface'


@pytest.fixture(scope='module')
def gt(gt_dir):
    return load_gt_mat(gt_dir)


def golden_set(fname):
    from scrfd_nb.evaluate import golden_preds
    return golden_preds(fname)


@pytest.mark.parametrize('fname', SETS)
def test_golden_sets(gt, fname):
    preds, z = golden_set(fname)
    before = {k: v.copy() for k, v in preds['0--Parade'].items()}
    r = evaluate_widerface(preds, gt)
    for s in SETTINGS:
        assert abs(r[s] - float(z['ap_' + s])) <= 1e-6, (s, r[s], float(z['ap_' + s]))
        np.testing.assert_array_equal(np.isnan(r['precision'][s]), np.isnan(z['pr_precision_' + s]))
        np.testing.assert_array_equal(r['precision'][s], z['pr_precision_' + s])
        np.testing.assert_array_equal(r['recall'][s], z['pr_recall_' + s])
    for k, v in before.items(): np.testing.assert_array_equal(preds['0--Parade'][k], v)   # caller's arrays untouched


def test_unsorted_rows_matter(gt):
    "Sorting the unsorted set changes the APs: the reference's order dependence is real and reproduced above."
    preds, z = golden_set(SETS[3])
    srt = {e: {n: v[np.argsort(-v[:, 4], kind='stable')] for n, v in imgs.items()} for e, imgs in preds.items()}
    r = evaluate_widerface(srt, gt)
    assert abs(r['easy'] - float(z['ap_easy'])) > 1e-3


def test_cli_round_trip(gt_dir, tmp_path):
    preds, z = golden_set(SETS[2])        # edge: ties, zero-size boxes, images without predictions
    write_pred_dir(preds, tmp_path/'pred')
    assert len(list((tmp_path/'pred').glob('*/*.txt'))) == 3226
    out = subprocess.run([sys.executable, '-m', 'scrfd_nb.evaluate', '--pred', str(tmp_path/'pred'), '--gt', str(gt_dir),
                          '--json', str(tmp_path/'ap.json'), '--plot', str(tmp_path/'pr.png')],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert 'Easy   Val AP' in out.stdout and 'Hard   Val AP' in out.stdout
    aps = json.loads((tmp_path/'ap.json').read_text())
    assert sorted(aps) == sorted(SETTINGS)
    for s in SETTINGS: assert abs(aps[s] - float(z['ap_' + s])) <= 1e-6
    assert (tmp_path/'pr.png').stat().st_size > 10_000


def test_cli_errors(gt_dir, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, '-m', 'scrfd_nb.evaluate', *args], capture_output=True, text=True)
    r = run('--pred', str(tmp_path/'nope'), '--gt', str(gt_dir))
    assert r.returncode == 1 and 'no such prediction folder' in r.stderr and 'Traceback' not in r.stderr
    write_pred_dir({'0--Parade': {'0_Parade_marchingband_1_465': np.zeros((0, 5), np.float32)}}, tmp_path/'pred')
    r = run('--pred', str(tmp_path/'pred'), '--gt', str(tmp_path))
    assert r.returncode == 1 and 'wider_face_val.mat is missing' in r.stderr
    r = run('--pred', str(tmp_path/'pred'), '--gt', str(gt_dir))
    assert r.returncode == 1 and 'no predictions for 3225 of 3226' in r.stderr and '--allow-missing' in r.stderr
    r = run('--pred', str(tmp_path/'pred'), '--gt', str(gt_dir), '--allow-missing', '--json', str(tmp_path/'a.json'))
    assert r.returncode == 0 and json.loads((tmp_path/'a.json').read_text()) == {'easy': 0.0, 'medium': 0.0, 'hard': 0.0}
    f = tmp_path/'pred'/'0--Parade'/'0_Parade_marchingband_1_465.txt'
    f.write_text('0--Parade/0_Parade_marchingband_1_465.jpg\n1\n1 2 3 4\n')
    r = run('--pred', str(tmp_path/'pred'), '--gt', str(gt_dir))
    assert r.returncode == 1 and f'{f}:3: expected 5 numbers' in r.stderr


def random_scene(rng, n_img=40):
    "Random images: clustered faces, some not counted per setting, predictions with duplicates, ties, unsorted rows."
    events, names, boxes, keeps, counts, preds = [], [], [], [], [], {}
    for i in range(n_img):
        g = rng.integers(0, 8)
        b = np.c_[rng.integers(0, 200, (g, 2)), rng.integers(0, 40, (g, 2))].astype(np.float64)
        k = rng.random((g, 3)) < [0.4, 0.6, 0.9]
        ev, nm = f'ev{i % 3}', f'img{i}'
        events.append(ev); names.append(nm); boxes.append(b); keeps.append(k); counts.append(k.sum(0))
        n = rng.integers(2 if i == 0 else 0, 12)
        src = b[rng.integers(0, g, n)] if g else np.zeros((n, 4))
        p = src + rng.normal(0, rng.choice([0, 2, 6]), (n, 4))
        p[rng.random(n) < 0.2] = np.c_[rng.integers(0, 200, (1, 2)), rng.integers(0, 40, (1, 2))]
        s = np.round(rng.random(n), rng.choice([1, 2, 6]))
        order = np.argsort(-s, kind='stable') if rng.random() < 0.7 else rng.permutation(n)
        if i == 0: s[:2] = [0, 1]   # min 0, max 1: normalised scores stay on the 0.01 grid and tie with thresholds
        preds.setdefault(ev, {})[nm] = np.c_[p, s][order].astype(np.float32)
    gt = WiderGT(events, names, np.concatenate(boxes).reshape(-1, 4), np.r_[0, np.cumsum([len(b) for b in boxes])],
                 np.concatenate(keeps).reshape(-1, 3), np.array(counts).reshape(-1, 3))
    return preds, gt


@pytest.mark.parametrize('seed', range(6))
def test_random_scenes_equal_loop_port(seed):
    "On random scenes (duplicates, ties, unsorted rows, images without faces or predictions) ours equals the loop port."
    preds, gt = random_scene(np.random.default_rng(seed))
    r = evaluate_widerface(preds, gt)
    ref = loop_evaluate(preds, gt)
    for s in SETTINGS: assert r[s] == pytest.approx(ref[s], abs=1e-12), (s, r[s], ref[s])


def test_norm_scores_float32_cast():
    "Scores are stored back as float32 after a float64 division (the reference's norm_score)."
    p = {'e': {'a': np.array([[0, 0, 1, 1, 0.3], [0, 0, 1, 1, 0.7]], np.float32)}}
    q = norm_scores(p)['e']['a'][:, 4]
    assert q.dtype == np.float32
    np.testing.assert_array_equal(q, np.float32([0, 1]))
