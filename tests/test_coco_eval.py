"""COCO-style evaluation (scrfd_nb.coco_eval) on cases computed by hand: perfect predictions, a box of known IoU, a
wrong class, ignore boxes, keypoint AP and NME with known errors, and properties a wrong matcher would break."""
import numpy as np
import pytest
from scrfd_nb.coco_eval import coco_evaluate, keypoint_nme, default_sigmas, DEFAULT_SIGMA, COCO_KPT_SIGMAS
from scrfd_nb.evaluate import landmark_nme

BOX = [20, 30, 120, 94]                 # 100 x 64: √(w·h) = 80
CARD = np.array([[40, 50, 1], [90, 50, 1], [0, 0, 0], [40, 80, 1], [90, 80, 1]], np.float32)   # slot 2 absent


def rec(boxes, labels, kps=None, ignore=(), K=5):
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    k = np.zeros((len(b), K, 3), np.float32) if kps is None else np.asarray(kps, np.float32).reshape(len(b), K, 3)
    return dict(filename='x.jpg', width=200, height=200, line=0, bboxes=b, labels=np.asarray(labels, np.int64).reshape(-1),
                keypoints=k, bboxes_ignore=np.asarray(ignore, np.float32).reshape(-1, 4))


def pred(boxes, scores, labels, kps=None):
    return dict(boxes=np.asarray(boxes, np.float64).reshape(-1, 4), scores=np.asarray(scores, np.float64),
                labels=np.asarray(labels, np.int64), kps=None if kps is None else np.asarray(kps, np.float64))


def test_perfect():
    r = coco_evaluate([rec([BOX], [1], [CARD])], [pred([BOX], [.9], [1], [CARD[:, :2]])], ('face', 'card'), 5)
    np.testing.assert_allclose([r['ap'], r['ap50'], r['ap75'], r['kp_ap'], r['kp_ap50'], r['nme']], [1, 1, 1, 1, 1, 0], atol=1e-12)
    assert np.isnan(r['ap_per_class']['face']) and abs(r['ap_per_class']['card'] - 1) < 1e-12
    assert r['kp_objects'] == r['nme_matched'] == 1


def test_known_iou_and_keypoint_error():
    "IoU 0.625 counts at .50/.55/.60: AP 3/10; every labelled point 5 px off on a scale of 80: NME 1/16, OKS 0.763: kp AP 6/10."
    r = coco_evaluate([rec([BOX], [1], [CARD])], [pred([[20, 30, 120, 70]], [.9], [1], [CARD[:, :2] + [3, 4]])], ('face', 'card'), 5)
    np.testing.assert_allclose([r['ap'], r['ap50'], r['ap75']], [0.3, 1, 0], atol=1e-12)
    oks = np.exp(-(1 / 16) ** 2 / (8 * DEFAULT_SIGMA ** 2))
    assert 0.75 < oks < 0.8
    np.testing.assert_allclose([r['nme'], r['kp_ap'], r['kp_ap50']], [1 / 16, 0.6, 1], atol=1e-12)


def test_wrong_class_and_ignore():
    two = rec([BOX, [130, 20, 190, 60]], [0, 1])
    r = coco_evaluate([two], [pred([BOX, [130, 20, 190, 60]], [.9, .8], [0, 0])], ('face', 'card'), 0)
    np.testing.assert_allclose([r['ap_per_class']['face'], r['ap_per_class']['card'], r['ap']], [1, 0, 0.5], atol=1e-12)
    assert 'kp_ap' not in r and 'nme' not in r
    dets = pred([[130, 20, 190, 60], BOX], [.95, .9], [0, 0])      # the higher-scored one lies on the ignore box
    assert abs(coco_evaluate([rec([BOX], [0], ignore=[[130, 20, 190, 60]])], [dets], ('face',), 0)['ap'] - 1) < 1e-12
    assert abs(coco_evaluate([rec([BOX], [0])], [dets], ('face',), 0)['ap'] - 0.5) < 1e-12   # without it: a false positive first
    # an ignore box counts for every class (records do not say its class)
    dets2 = pred([[130, 20, 190, 60], BOX], [.95, .9], [1, 0])
    r = coco_evaluate([rec([BOX], [0], ignore=[[130, 20, 190, 60]])], [dets2], ('face', 'card'), 0)
    assert abs(r['ap'] - 1) < 1e-12 and np.isnan(r['ap_per_class']['card'])


def test_keypoint_ap_only_on_labelled_objects():
    both = rec([BOX, [130, 20, 190, 60]], [1, 1], [CARD, np.zeros_like(CARD)])
    r = coco_evaluate([both], [pred([BOX, [130, 20, 190, 60]], [.9, .95], [1, 1], [CARD[:, :2], np.full((5, 2), [150, 45])])],
                      ('face', 'card'), 5)
    np.testing.assert_allclose([r['kp_ap'], r['nme'], r['kp_objects'], r['nme_matched']], [1, 0, 1, 1], atol=1e-12)
    r = coco_evaluate([both], [pred(np.zeros((0, 4)), [], [])], ('face', 'card'), 5)
    assert r['ap'] == 0 and r['kp_ap'] == 0 and np.isnan(r['nme'])
    assert np.isnan(coco_evaluate([both], [pred([BOX], [.9], [1])], ('face', 'card'), 5)['kp_ap'])   # no kps predicted


def test_order_and_trailing_false_positives_do_not_matter():
    "Image order is irrelevant; false positives scored below every true positive leave AP at 1; one above halves precision."
    rng = np.random.default_rng(0)
    recs, preds = [], []
    for i in range(5):
        xy = rng.uniform(0, 100, (3, 2)); b = np.concatenate([xy, xy + rng.uniform(20, 60, (3, 2))], 1)
        recs.append(rec(b, [0, 1, 2], K=0))
        preds.append(pred(np.r_[b, [[150, 150, 190, 190]]], [.9, .8, .7, .1], [0, 1, 2, 1]))
    r = coco_evaluate(recs, preds, ('a', 'b', 'c'), 0)
    assert abs(r['ap'] - 1) < 1e-12 and r['objects'] == 15
    r2 = coco_evaluate(recs[::-1], preds[::-1], ('a', 'b', 'c'), 0)
    assert r2['ap_per_class'] == r['ap_per_class']
    preds[0] = pred(np.r_[preds[0]['boxes'][:3], [[150, 150, 190, 190]]], [.9, .8, .7, .95], [0, 1, 2, 1])
    r3 = coco_evaluate(recs, preds, ('a', 'b', 'c'), 0)
    assert r3['ap_per_class']['a'] == r3['ap_per_class']['c'] == r['ap_per_class']['a'] and r3['ap_per_class']['b'] < 1


def test_nme_any_k_matches_landmark_nme():
    "K = 7 (two chunks of five) is the mean over labelled points; K = 5 is evaluate.landmark_nme itself."
    rng = np.random.default_rng(1)
    gk = np.concatenate([rng.uniform(20, 80, (1, 7, 2)), np.ones((1, 7, 1))], 2).astype(np.float32); gk[0, 2, 2] = 0
    off = rng.normal(0, 3, (1, 7, 2))
    r7 = rec([[10, 20, 110, 84]], [0], gk, K=7)
    p7 = pred([[10, 20, 110, 84]], [.9], [0], gk[..., :2] + off)
    want = np.linalg.norm(off[0], axis=1)[[0, 1, 3, 4, 5, 6]].mean() / 80
    assert abs(keypoint_nme([r7], [p7], 7)['nme'] - want) < 1e-12
    assert abs(coco_evaluate([r7], [p7], ('x',), 7)['nme'] - want) < 1e-12
    r5, p5 = rec([[10, 20, 110, 84]], [0], gk[:, :5]), pred([[10, 20, 110, 84]], [.9], [0], p7['kps'][:, :5])
    ref = landmark_nme(np.array([[10, 20, 100, 64, .9]]), p5['kps'], np.array([[10, 20, 100, 64]]), gk[:, :5])[0]
    assert abs(keypoint_nme([r5], [p5], 5)['nme'] - ref) < 1e-12


def test_sigmas_and_bad_input():
    np.testing.assert_allclose(default_sigmas(17), COCO_KPT_SIGMAS)
    np.testing.assert_allclose(default_sigmas(4), [DEFAULT_SIGMA] * 4)
    assert abs(np.exp(-0.01 / (8 * DEFAULT_SIGMA ** 2)) - 0.5) < 1e-12
    r17 = rec([BOX], [0], np.concatenate([np.full((17, 2), 50.0), np.ones((17, 1))], 1), K=17)
    r = coco_evaluate([r17], [pred([BOX], [.9], [0], np.full((1, 17, 2), 50.0))], ('person',), 17)
    assert r['sigmas'] == COCO_KPT_SIGMAS.tolist() and abs(r['kp_ap'] - 1) < 1e-12
    one = rec([BOX], [0])
    with pytest.raises(ValueError, match='prediction entries'): coco_evaluate([one], [], ('face',), 5)
    with pytest.raises(ValueError, match='outside 0..0'): coco_evaluate([one], [pred([BOX], [.9], [1])], ('face',), 5)
    with pytest.raises(ValueError, match='5 positive'): coco_evaluate([one], [pred([BOX], [.9], [0])], ('face',), 5, sigmas=[.1] * 4)
    with pytest.raises(ValueError, match='keypoints of shape'): coco_evaluate([one], [pred([BOX], [.9], [0])], ('face',), 4)
