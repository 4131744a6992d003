"""test_widerface: the official ONNX models loaded into our model give, under the WIDER test protocol (mode 0), the same
detections as onnxruntime running the original files with the same preprocessing and decoder; batching does not
change results; the keep-ratio resize and the per-axis rescale equal the reference test pipeline's formulas on
hand-computed non-square cases (sx != sy); modes 1, 2 and 320 equal an independent computation (onnxruntime on the
original file, resize/pad/decode/NMS written out here from the golden README's rules); the CLI works end to end."""
import subprocess, sys
from pathlib import Path
import cv2
import numpy as np
import pytest
import torch
from scrfd_nb.backends import load_runner
from scrfd_nb.predict import wider_split, list_images, predict_widerface, compare_preds, resize_for_test
from scrfd_nb.evaluate import read_pred_dir
from scrfd_nb.detect import mmdet_resize, postprocess_flat
from conftest import require_package

ROOT = Path(__file__).resolve().parents[1]
IMAGES = [('0--Parade', '0_Parade_marchingband_1_20'), ('19--Couple', '19_Couple_Couple_19_743')]
MATS = ['wider_face_val.mat', 'wider_easy_val.mat', 'wider_medium_val.mat', 'wider_hard_val.mat']


@pytest.fixture
def wider(tmp_path, shared):
    "A WIDER-style val folder in tmp: the two real val images and the official .mat ground truth, as symlinks."
    for ev, name in IMAGES:
        (tmp_path/'val'/'images'/ev).mkdir(parents=True)
        (tmp_path/'val'/'images'/ev/f'{name}.jpg').symlink_to(shared/'data'/'images'/f'{name}.jpg')
    (tmp_path/'val'/'gt').mkdir()
    for f in MATS: (tmp_path/'val'/'gt'/f).symlink_to(shared/'data'/'widerface'/f)
    return tmp_path


@pytest.mark.parametrize('model_file', ['det_500m.onnx', 'det_2.5g.onnx', 'scrfd_500m.onnx', 'scrfd_2.5g.onnx'])
def test_official_onnx_mode0_equals_onnxruntime(model_file, wider, shared):
    weights = shared/'data'/'models'/model_file
    items = list_images(*wider_split(wider)[:2])
    ours = predict_widerface(load_runner(weights), items, mode=0, batch_size=2, progress=False)
    ref = predict_widerface(load_runner(weights, backend='onnxruntime'), items, mode=0, batch_size=2, progress=False)
    c = compare_preds(ours, ref)
    assert c['images'] == 2 and c['detections'] > 100
    assert c['unmatched'] == 0 and c['max_box_diff'] < 1e-3 and c['max_score_diff'] < 1e-5, c
    for ev, name in IMAGES:
        d = ours[ev][name]
        assert d.dtype == np.float32 and d.shape[1] == 5
        assert (d[:, 4] > 0.02).all() and (np.diff(d[:, 4]) <= 0).all()   # threshold, sorted by score
        x2, y2 = d[:, 0] + d[:, 2], d[:, 1] + d[:, 3]                      # xywh, clamped to the (1024 px wide) image
        assert (d[:, :2] >= 0).all() and (x2 <= 1024 + 1e-2).all() and (y2 >= 0).all()


def test_batch_size(wider, shared):
    weights = shared/'data'/'models'/'det_500m.onnx'
    items = list_images(*wider_split(wider)[:2])
    runner = load_runner(weights)
    one = predict_widerface(runner, items, mode=0, batch_size=1, progress=False)
    two = predict_widerface(runner, items, mode=0, batch_size=2, progress=False)
    c = compare_preds(one, two)
    assert c['unmatched'] == 0 and c['max_box_diff'] < 1e-3, c
    assert resize_for_test(np.zeros((753, 1024, 3), np.uint8), 2)[1]['pad_hw'] == (768, 1024)


# The reference test pipeline's keep-ratio Resize (mmcv 1.3.3 `rescale_size` + `imrescale`, mmdet `Resize._resize_img`):
# factor f = min(max(scale) / max(h, w), min(scale) / min(h, w)); new size int(w * f + 0.5) x int(h * f + 0.5);
# scale_factor = float32 [new_w / w, new_h / h] per axis. Sizes below are worked out by hand from that formula.
HAND_RESIZES = [  # (h, w), img_scale, (new_h, new_w)
    ((753, 1024), 640, (471, 640)),            # f = 0.625: 753 * 0.625 = 470.625 -> 471, so sy = 471/753 != sx = 0.625
    ((333, 500), (1650, 1100), (1099, 1650)),  # f = min(3.3, 3.3033) = 3.3: 333 * 3.3 = 1098.9 -> 1099, 500 -> 1650
    ((1366, 1024), (1650, 1100), (1467, 1100)),  # portrait in mode 1: f = min(1650/1366, 1100/1024) = 1.0742: 1467.3 -> 1467
    ((101, 64), 320, (320, 203)),              # f = min(320/101, 320/64) = 3.1683: 64 * 3.1683 = 202.77 -> 203
]


@pytest.mark.parametrize('hw,img_scale,new_hw', HAND_RESIZES)
def test_mmdet_resize_hand_computed(hw, img_scale, new_hw):
    img = np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8)
    out, meta = mmdet_resize(img, img_scale)
    (h, w), (nh, nw) = hw, new_hw
    assert out.shape == (nh, nw, 3) and meta['img_hw'] == (nh, nw) and meta['orig_hw'] == (h, w)
    assert meta['scale'] == (float(np.float32(nw / w)), float(np.float32(nh / h)))
    assert meta['scale'][0] != meta['scale'][1]                       # per-axis: the case a square image never shows
    assert np.array_equal(out, cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR))


def test_rescale_per_axis_hand_computed():
    """mmdet's rescale divides each coordinate by its own axis' float32 scale factor, after clamping the boxes to the
    resized image (not the padded canvas); keypoints (decoded as in tools/scrfd.py) the same way, unclamped. One
    anchor per level lit, with hand-chosen distances; expected values written out from those rules."""
    (h, w), _, (nh, nw) = HAND_RESIZES[0]                              # 753 x 1024 -> 471 x 640 in a 640 canvas
    sx, sy = np.float32(nw / w), np.float32(nh / h)
    meta = dict(img_hw=(nh, nw), scale=(float(sx), float(sy)), orig_hw=(h, w))
    fs = [(80, 80), (40, 40), (20, 20)]
    A = sum(a * b for a, b in fs) * 2
    scores, bbox, kps = torch.zeros(1, A), torch.zeros(1, A, 4), torch.zeros(1, A, 10)
    # anchor 2 * (y * 80 + x) of stride 8 at (x, y) = (10, 20): centre (80, 160); distances l, t, r, b = 2, 3, 4, 5 strides
    i = 2 * (20 * 80 + 10)
    scores[0, i], bbox[0, i] = 0.9, torch.tensor([2., 3., 4., 5.])
    kps[0, i] = torch.tensor([1., -1., 2., 0.5, 0., 0., -1.5, 2., 3., 3.])
    # stride 32 at (x, y) = (15, 14): centre (480, 448), whose box reaches below the 471-px image: clamped at 471
    j = 12800 + 3200 + 2 * (14 * 20 + 15)
    scores[0, j], bbox[0, j] = 0.8, torch.tensor([1., 1., 1., 1.])
    d = postprocess_flat(scores, bbox, kps, fs, [meta], mode='mmdet', score_thr=0.02, nms_thr=0.45)[0]
    want = np.array([[(80 - 16) / sx, (160 - 24) / sy, (80 + 32) / sx, (160 + 40) / sy],
                     [(480 - 32) / sx, (448 - 32) / sy, (480 + 32) / sx, 471 / sy]], np.float32)
    np.testing.assert_allclose(d['boxes'].numpy(), want, rtol=1e-6)
    np.testing.assert_array_equal(d['scores'].numpy(), np.array([0.9, 0.8], np.float32))
    kp = np.array([[80 + 8, 160 - 8], [80 + 16, 160 + 4], [80, 160], [80 - 12, 160 + 16], [80 + 24, 160 + 24]], np.float32)
    np.testing.assert_allclose(d['kps'][0].numpy(), kp / np.array([sx, sy], np.float32), rtol=1e-6)
    assert not np.allclose(d['boxes'].numpy(), want * np.float32(sy / sx))   # a single (x) scale would be caught


def independent_mmdet_detections(onnx_path, img, img_scale, pad_hw, score_thr=0.02, iou_thr=0.45):
    """WIDER test-path detections of an official (2-D output) ONNX file, computed without scrfd_nb: keep-ratio resize by
    the formula above (or none), zero canvas after normalisation, onnxruntime, anchor centres (x*s, y*s), 2 anchors per
    location, score > thr, boxes clamped to the resized image, divided by the per-axis scale, mmcv NMS (IoU without +1,
    suppress IoU >= thr, score order) -> (n, 5) [x, y, w, h, score] (golden README, reference behaviour 6)."""
    ort = require_package('onnxruntime')
    h, w = img.shape[:2]
    if img_scale is None: nw, nh, resized = w, h, img
    else:
        f = min(max(img_scale) / max(h, w), min(img_scale) / min(h, w))
        nw, nh = int(w * f + 0.5), int(h * f + 0.5)
        resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    sx, sy = np.float32(nw / w), np.float32(nh / h)
    x = np.zeros((1, 3, *pad_hw), np.float32)
    x[0, :, :nh, :nw] = ((resized[..., ::-1].astype(np.float32) - 127.5) / 128).transpose(2, 0, 1)
    so = ort.SessionOptions(); so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), so, providers=['CPUExecutionProvider'])
    outs = sess.run(None, {sess.get_inputs()[0].name: x})
    rows = []
    for l, s in enumerate((8, 16, 32)):
        sc, d = outs[l][:, 0], outs[3 + l]
        yy, xx = np.mgrid[:-(-pad_hw[0] // s), :-(-pad_hw[1] // s)]      # ceil: 1100 rows give 138 / 69 / 35 locations
        c = np.repeat(np.stack([xx * s, yy * s], -1).reshape(-1, 2), 2, axis=0).astype(np.float32)
        k = sc > score_thr
        b = np.concatenate([c - d[:, :2] * s, c + d[:, 2:] * s], 1)[k]
        b[:, 0::2] = b[:, 0::2].clip(0, nw); b[:, 1::2] = b[:, 1::2].clip(0, nh)
        rows.append(np.concatenate([b / np.array([sx, sy, sx, sy], np.float32), sc[k, None]], 1))
    r = np.concatenate(rows)
    r = r[np.argsort(-r[:, 4], kind='stable')]
    area = (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])
    alive, keep = np.ones(len(r), bool), []
    for i in range(len(r)):
        if not alive[i]: continue
        keep.append(i)
        iw = (np.minimum(r[i, 2], r[:, 2]) - np.maximum(r[i, 0], r[:, 0])).clip(0)
        ih = (np.minimum(r[i, 3], r[:, 3]) - np.maximum(r[i, 1], r[:, 1])).clip(0)
        inter = iw * ih
        with np.errstate(invalid='ignore'): alive &= ~(inter / (area[i] + area - inter) >= iou_thr)   # 0/0: kept, as mmcv
    r = r[keep]
    return np.concatenate([r[:, :2], r[:, 2:4] - r[:, :2], r[:, 4:]], 1).astype(np.float32)


@pytest.mark.parametrize('mode,img_scale,pad', [(1, (1650, 1100), (1100, 1650)), (2, None, None), (320, (320, 320), (320, 320))])
def test_modes_equal_independent_computation(wider, shared, mode, img_scale, pad):
    """predict_widerface in modes 1, 2 and 320 (our model with the official det_500m weights) = the independent computation
    on the original file: every detection paired, boxes within 1e-4 x 32 / scale px (golden README (a): network outputs
    agree to atol 1e-4 between machines, a distance of stride 32 at most, mapped back to the photo), scores within 1e-4."""
    weights = shared/'data'/'models'/'det_500m.onnx'
    items = list_images(*wider_split(wider)[:2])
    ours = predict_widerface(load_runner(weights), items, mode=mode, batch_size=2, progress=False)
    ref, min_scale = {}, 1.0
    for ev, name, path in items:
        img = cv2.imread(str(path))
        h, w = img.shape[:2]
        meta = resize_for_test(img, mode)[1]
        ph, pw = pad if pad is not None else (-(-h // 32) * 32, -(-w // 32) * 32)
        assert meta['pad_hw'] == (ph, pw)
        ref.setdefault(ev, {})[name] = independent_mmdet_detections(weights, img, img_scale, (ph, pw))
        min_scale = min(min_scale, *meta['scale'])
    c = compare_preds(ours, ref, score_tol=1e-4)
    assert c['images'] == 2 and c['detections'] > 20, c
    assert c['unmatched'] == 0 and c['max_box_diff'] <= 1e-4 * 32 / min_scale and c['max_score_diff'] <= 1e-4, c


def test_cli_writes_results_and_aps(wider, shared, tmp_path):
    out = tmp_path/'out'
    r = subprocess.run([sys.executable, '-m', 'scrfd_nb.test_widerface', '--weights', str(shared/'data'/'models'/'det_2.5g.onnx'),
                        '--data-path', str(wider), '--out', str(out), '--batch-size', '2', '--device', 'cpu',
                        '--json', str(tmp_path/'aps.json')], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert 'APS:' in r.stdout and 'no prediction' in r.stderr            # the other 3224 val images are missing
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob('*.txt'))
    assert files == [f'{ev}/{name}.txt' for ev, name in IMAGES]
    lines = (out/'0--Parade'/'0_Parade_marchingband_1_20.txt').read_text().splitlines()
    assert lines[0] == '0--Parade/0_Parade_marchingband_1_20.jpg' and int(lines[1]) == len(lines) - 2
    back = read_pred_dir(out)
    assert back['0--Parade']['0_Parade_marchingband_1_20'].shape == (int(lines[1]), 5)
    assert (out/'aps').read_text().count(',') == 2
    from scrfd_nb.test_widerface import main
    with pytest.raises(SystemExit) as e: main(['--weights', str(tmp_path/'nope.pth'), '--data-path', str(wider)])
    assert e.value.code == 2
