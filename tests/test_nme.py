"""Landmark NME in evaluate: hand-computed cases (pixel errors on boxes of known size, a missing keypoint, score-order
matching, IoU threshold), the properties a wrong normalisation or matching breaks, result files with keypoints
through the CLI, and the official det_500m on a few synthetic faces (a decoder error would be far above 0.1)."""
import json, subprocess, sys
import numpy as np
import pytest
from scrfd_nb.detect import detect
from scrfd_nb.evaluate import (greedy_match, landmark_nme, evaluate_landmarks, load_gt_labelv2, write_pred_dir,
                               read_pred_dir, evaluate_widerface)

FIVE = np.array([[.3, .4], [.7, .4], [.5, .6], [.35, .8], [.65, .8]])


def kps_of(x, y, w, h): return FIVE * [w, h] + [x, y]


def test_one_face_by_hand():
    gt = np.array([[0, 0, 30, 120]], np.float64)                # size sqrt(3600) = 60
    gk = np.concatenate([kps_of(*gt[0]), np.ones((5, 1))], 1)[None]
    pk = kps_of(*gt[0])[None].copy()
    pk[0, 2] += [6, 8]                                          # nose 10 px off, the rest exact
    pred = np.array([[0, 0, 30, 120, 0.9]])
    np.testing.assert_allclose(landmark_nme(pred, pk, gt, gk), [10 / 5 / 60], rtol=1e-12)
    gk[0, 2, 2] = 0                                             # nose not annotated: no error left
    np.testing.assert_allclose(landmark_nme(pred, pk, gt, gk), [0.0], atol=1e-15)
    gk[0, :, 2] = 0                                             # nothing annotated: not a face for the NME
    assert np.isnan(landmark_nme(pred, pk, gt, gk)[0])


def test_normalised_by_sqrt_wh_not_width_or_diagonal():
    "Same 5 px error on boxes 20x80 and 40x40 (both sqrt(wh) = 40): same NME; width or diagonal would differ."
    gt = np.array([[0, 0, 20, 80], [100, 0, 40, 40]], np.float64)
    gk = np.stack([np.concatenate([kps_of(*b), np.ones((5, 1))], 1) for b in gt])
    pk = np.stack([kps_of(*b) + [3, 4] for b in gt])
    pred = np.c_[gt, [0.9, 0.8]]
    np.testing.assert_allclose(landmark_nme(pred, pk, gt, gk), [5 / 40, 5 / 40], rtol=1e-12)


def test_matching_by_score_one_to_one_and_iou_threshold():
    gt = np.array([[0, 0, 100, 100], [300, 0, 100, 100]], np.float64)
    # row 0: exact on face 0, low score; row 1: on face 0 shifted 10 px, high score -> row 1 takes face 0
    # row 2: on face 1 but IoU just below 0.5 (the +1 convention: widths 101; shifted 34 px, overlap 67:
    # 67 / (202 - 67) = 0.496; shifted 33 px: 68 / 134 = 0.507)
    pred = np.array([[0, 0, 100, 100, 0.3], [10, 0, 100, 100, 0.9], [334, 0, 100, 100, 0.8]])
    np.testing.assert_array_equal(greedy_match(pred, gt), [1, -1])
    pred[2, 0] = 333
    np.testing.assert_array_equal(greedy_match(pred, gt), [1, 2])
    # at IoU 0.9 the shifted row (91/111 = 0.82) no longer qualifies and the exact, low-scored one takes face 0
    np.testing.assert_array_equal(greedy_match(pred, gt, iou_thresh=0.9), [0, -1])
    assert greedy_match(pred[::-1], gt).tolist() == [1, 0]      # row order does not matter, scores do


def test_random_scenes_properties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        g = rng.integers(1, 8); n = rng.integers(0, 12)
        gt = np.c_[rng.uniform(0, 400, (g, 2)), rng.uniform(10, 80, (g, 2))]
        pred = np.c_[gt[rng.integers(0, g, n)] + rng.normal(0, 5, (n, 4)), rng.random(n)]
        m = greedy_match(pred, gt)
        rows = m[m >= 0]
        assert len(set(rows.tolist())) == len(rows)               # one-to-one
        from scrfd_nb.evaluate import wider_iou
        if len(rows): assert (wider_iou(pred[rows], gt)[np.arange(len(rows)), np.flatnonzero(m >= 0)] >= 0.5).all()
        # a permutation of the rows changes nothing but the row numbers
        p = rng.permutation(n)
        m2 = greedy_match(pred[p], gt)
        assert ((m2 >= 0) == (m >= 0)).all() and (p[m2[m2 >= 0]] == m[m >= 0]).all()
        # moving the whole scene leaves every NME unchanged; exact keypoints give 0
        gk = np.concatenate([np.stack([kps_of(*b) for b in gt]), np.ones((g, 5, 1))], 2)
        pk = np.array([kps_of(*b[:4]) for b in pred]).reshape(-1, 5, 2) + rng.normal(0, 2, (n, 5, 2))
        a = landmark_nme(pred, pk, gt, gk)
        b = landmark_nme(pred + [37, 11, 0, 0, 0], pk + [37, 11], gt + [37, 11, 0, 0], gk + [37, 11, 0])
        np.testing.assert_allclose(a, b, rtol=1e-9)
        exact = np.zeros((n, 5, 2)); exact[rows] = gk[m >= 0, :, :2]
        np.testing.assert_array_equal(np.isnan(landmark_nme(pred, exact, gt, gk)), m < 0)
        assert np.nansum(landmark_nme(pred, exact, gt, gk)) == 0


def _scene(tmp_path):
    "Two images, labelv2 with keypoints (one -1 keypoint, one 4-value face, one ignore box), predictions by hand."
    lines = ['# ev/a.jpg 200 200',
             '0 0 40 90 ' + ' '.join(f'{x:g} {y:g} 0.0' for x, y in kps_of(0, 0, 40, 90)),      # size 60
             '100 100 150 150 ' + ' '.join(f'{x:g} {y:g} 1.0' for x, y in kps_of(100, 100, 50, 50)[:4]) + ' -1 -1 -1',
             '# ev/b.jpg 200 200',
             '10 10 30 30',                                                                        # no keypoints
             '50 50 70 90 ' + ' '.join(f'{x:g} {y:g} 0.0' for x, y in kps_of(50, 50, 20, 40)),   # unmatched
             '150 150 170 170 1']                                                                  # ignore box
    (tmp_path/'v2.txt').write_text('\n'.join(lines) + '\n')
    preds = {'ev': {'a': np.array([[0, 0, 40, 90, 0.9], [100, 100, 50, 50, 0.8]], np.float32),
                    'b': np.array([[10, 10, 20, 20, 0.7], [150, 150, 20, 20, 0.6]], np.float32)}}
    ka = np.stack([kps_of(0, 0, 40, 90) + [0, 12], kps_of(100, 100, 50, 50)])
    ka[1, 4] += 50                                                # the unannotated keypoint: ignored
    ka[1, 0] += [3, 4]                                            # 5 px over 4 keypoints / 50
    kps = {'ev': {'a': ka.astype(np.float32), 'b': np.zeros((2, 5, 2), np.float32)}}
    return preds, kps, (12 / 60 + 5 / 4 / 50) / 2


def test_set_and_cli(tmp_path):
    preds, kps, want = _scene(tmp_path)
    gt = load_gt_labelv2(tmp_path/'v2.txt')
    r = evaluate_landmarks(preds, kps, gt, thresholds=(0.1, 0.3))
    assert (r['faces'], r['matched']) == (3, 2)
    np.testing.assert_allclose(r['nme'], want, rtol=1e-6)
    assert r['below'] == {0.1: 0.5, 0.3: 1.0}                     # 0.2 and 0.025
    write_pred_dir(preds, tmp_path/'pred', kps=kps)
    back, bk = read_pred_dir(tmp_path/'pred', with_kps=True)
    np.testing.assert_array_equal(bk['ev']['a'], kps['ev']['a'])
    out = subprocess.run([sys.executable, '-m', 'scrfd_nb.evaluate', '--pred', str(tmp_path/'pred'), '--gt',
                          str(tmp_path/'v2.txt'), '--json', str(tmp_path/'r.json')], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    j = json.loads((tmp_path/'r.json').read_text())
    np.testing.assert_allclose(j['nme'], want, rtol=1e-6)
    assert (j['nme_below'], j['nme_faces'], j['nme_matched']) == ({'0.1': 0.5}, 3, 2)
    assert j['easy'] == pytest.approx(evaluate_widerface(preds, gt)['easy'])   # the AP is the boxes' alone
    write_pred_dir(preds, tmp_path/'plain')                                    # 5-number files: no NME, same AP
    out = subprocess.run([sys.executable, '-m', 'scrfd_nb.evaluate', '--pred', str(tmp_path/'plain'), '--gt',
                          str(tmp_path/'v2.txt'), '--json', str(tmp_path/'p.json')], capture_output=True, text=True)
    assert out.returncode == 0 and 'NME' not in out.stdout
    assert json.loads((tmp_path/'p.json').read_text()) == {k: j[k] for k in ('easy', 'medium', 'hard')}


def test_official_det_500m_on_synthetic_faces(tmp_path, shared):
    import cv2
    from scrfd_nb.model import load_model
    from scrfd_nb.synthetic import ensure_synthetic
    from scrfd_nb.predict import to_xywh
    root = ensure_synthetic(tmp_path/'s', num_train=0, num_val=3, seed=0, preset='small')
    gt = load_gt_labelv2(root/'val'/'labelv2.txt')
    model = load_model(shared/'data'/'models'/'det_500m.onnx')
    preds, kps, shuffled = {}, {}, {}
    for ev, nm in zip(gt.events, gt.names):
        b, s, k = detect(model, cv2.imread(str(root/'val'/'images'/ev/f'{nm}.jpg')), score_thr=0.3)
        preds.setdefault(ev, {})[nm] = to_xywh(b, s)
        kps.setdefault(ev, {})[nm] = k
        shuffled.setdefault(ev, {})[nm] = k[:, [1, 0, 2, 4, 3]]   # left/right swapped
    r = evaluate_landmarks(preds, kps, gt)
    assert r['matched'] >= 0.5 * r['faces'] > 0
    assert r['nme'] < 0.1, r                                        # the official model's landmarks land on the faces
    assert evaluate_landmarks(preds, shuffled, gt)['nme'] > 2 * r['nme']
