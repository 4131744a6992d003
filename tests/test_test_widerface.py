"""test_widerface: the official ONNX models loaded into our model give, under the WIDER test protocol (mode 0), the same
detections as onnxruntime running the original files with the same preprocessing and decoder; batching does not
change results; the other modes and the CLI work end to end on the real WIDER val images."""
import subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from scrfd_nb.test_widerface import (wider_split, list_images, load_runner, predict_widerface, compare_preds,
                                     resize_for_test)
from scrfd_nb.evaluate import read_pred_dir

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


def test_batch_size_and_modes(wider, shared):
    weights = shared/'data'/'models'/'det_500m.onnx'
    items = list_images(*wider_split(wider)[:2])
    runner = load_runner(weights)
    one = predict_widerface(runner, items, mode=0, batch_size=1, progress=False)
    two = predict_widerface(runner, items, mode=0, batch_size=2, progress=False)
    c = compare_preds(one, two)
    assert c['unmatched'] == 0 and c['max_box_diff'] < 1e-3, c
    for mode in (1, 2, 320):
        p = predict_widerface(runner, items, mode=mode, batch_size=2, progress=False)
        assert sorted((e, n) for e, v in p.items() for n in v) == sorted(IMAGES)
        assert all(len(v) > 10 for ev in p.values() for v in ev.values())
    assert resize_for_test(np.zeros((753, 1024, 3), np.uint8), 2)[1]['pad_hw'] == (768, 1024)


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
