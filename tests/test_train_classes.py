"""Issue 23: training on COCO and YOLO-pose data with C classes and K keypoints taken from the data: a C = 3 and a
K = 0 model trained a few iterations, exported and detected; the data's C/K against a model that states others, and
broken data, stopped before any training with one line naming the file (and line) and exit status 2."""
import json, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch
from scrfd_nb.synthetic import ensure_synthetic
from scrfd_nb.train import RunConfig, train, DEMO_SYNTH, DEMO_SIZE
from scrfd_nb.model import load_model
from scrfd_nb.export import export_onnx
from scrfd_nb.backends import OnnxRunner
from scrfd_nb.inference import detect

ROOT = Path(__file__).resolve().parents[1]
FAST = {'data.img_size': 160, 'train.batch_size': 4, 'train.workers': 0, 'train.epochs': 1, 'train.warmup_iters': 2,
        'train.eval_interval': 1, 'train.ckpt_interval': 1}


@pytest.fixture(scope='module')
def cards(tmp_path_factory):
    "The 2-class synthetic data (faces with 5 points, cards with 4 corners) in the COCO layout, small."
    return ensure_synthetic(tmp_path_factory.mktemp('cards')/'data', num_train=12, num_val=6, seed=0, image_size=DEMO_SIZE,
                            fmt='coco', cards=(1, 2), card_size=(32, 120), **DEMO_SYNTH)


def _rewrite(src:Path, dst:Path, edit):
    "A copy of a COCO dataset (images linked) whose annotations.json of each split `edit(d)` changes."
    for split in ('train', 'val'):
        (dst/split).mkdir(parents=True)
        (dst/split/'images').symlink_to((src/split/'images').resolve())
        d = json.loads((src/split/'annotations.json').read_text())
        edit(d)
        (dst/split/'annotations.json').write_text(json.dumps(d))
    return dst


def _train(data, work, **kw):
    return train(RunConfig(data_path=str(data), work_dir=str(work), overrides=dict(FAST), progress=False, **kw))   # 12 images: 3 iterations


def test_three_classes_trained_exported_detected(cards, tmp_path):
    "Badges as a third class (some cards relabelled): C = 3, K = 5 come from the data; the checkpoint exports and detects all three classes."
    def three(d):
        d['categories'].append(dict(d['categories'][1], id=3, name='badge'))
        for a in d['annotations'][::3]:
            if a['category_id'] == 2: a['category_id'] = 3
    data = _rewrite(cards, tmp_path/'three', three)
    res = _train(data, tmp_path/'w3')
    assert set(res['ap']['ap_per_class']) == {'face', 'card', 'badge'}
    ck = sorted((tmp_path/'w3').glob('ckpt_*.pth'))[-1]
    m = load_model(ck).eval()
    h = m.cfg.model.head
    assert (h.num_classes, h.num_kps, m.cfg.data.class_names, m.cfg.loss.kps_visibility) == (3, 5, ('face', 'card', 'badge'), 'point')
    p = export_onnx(m, tmp_path/'three.onnx', shape=(160, 160))
    img = next((data/'val'/'images').resolve().rglob('*.jpg'))
    d0, d1 = detect(m, str(img), 0.001, input_size=160), detect(OnnxRunner(p), str(img), 0.001, input_size=160)
    assert d0.names == d1.names == ('face', 'card', 'badge') and len(d0[0]) == len(d1[0]) > 0
    assert d0[2].shape[1:] == (5, 2) and set(d0.labels.tolist()) <= {0, 1, 2}


def test_no_keypoints_trained_exported_detected(cards, tmp_path):
    "COCO data without keypoints: K = 0, no keypoint branch, six outputs, detections without keypoints."
    def bare(d):
        for c in d['categories']: c.pop('keypoints', None); c.pop('skeleton', None)
        for a in d['annotations']: a.pop('keypoints', None); a.pop('num_keypoints', None)
    data = _rewrite(cards, tmp_path/'bare', bare)
    res = _train(data, tmp_path/'w0', config='scrfd_500m')
    assert 'kp_ap' not in res['ap'] and res['iter'] == 3
    m = load_model(sorted((tmp_path/'w0').glob('ckpt_*.pth'))[-1]).eval()
    assert (m.cfg.model.head.num_classes, m.cfg.model.head.num_kps, m.use_kps) == (2, 0, False)
    p = export_onnx(m, tmp_path/'bare.onnx', shape=(160, 160))
    assert len(OnnxRunner(p).session.get_outputs()) == 6
    boxes, scores, kps = detect(OnnxRunner(p), str(next((data/'val'/'images').resolve().rglob('*.jpg'))), 0.001, input_size=160)
    assert kps is None and len(boxes) > 0


def run_train(*args):
    return subprocess.run([sys.executable, '-m', 'scrfd_nb.train', *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def refused(r, *needles, work=None):
    "Exit 2, one error line naming every needle, no traceback, nothing trained."
    assert r.returncode == 2, (r.returncode, r.stdout + r.stderr)
    assert 'Traceback' not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    for n in needles: assert str(n) in last, (n, last)
    assert work is None or not list(Path(work).glob('*.pth'))
    return last


def coco17(tmp_path:Path) -> Path:
    "A one-image COCO set whose people have COCO's 17 keypoints."
    names = ['nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder', 'right_shoulder', 'left_elbow',
             'right_elbow', 'left_wrist', 'right_wrist', 'left_hip', 'right_hip', 'left_knee', 'right_knee', 'left_ankle', 'right_ankle']
    import cv2
    for split in ('train', 'val'):
        (tmp_path/split/'images').mkdir(parents=True)
        cv2.imwrite(str(tmp_path/split/'images'/'a.jpg'), np.full((64, 64, 3), 90, np.uint8))
        kp = sum([[10 + i, 20 + i, 2] for i in range(17)], [])
        (tmp_path/split/'annotations.json').write_text(json.dumps(dict(
            images=[dict(id=1, file_name='a.jpg', width=64, height=64)],
            categories=[dict(id=1, name='person', keypoints=names, skeleton=[])],
            annotations=[dict(id=1, image_id=1, category_id=1, bbox=[5, 5, 40, 50], area=2000, iscrowd=0, keypoints=kp, num_keypoints=17)])))
    return tmp_path


def test_model_keypoints_must_match_the_data(tmp_path):
    "17-point COCO data for a model that states 5 points: one line naming the annotations and both counts."
    data = coco17(tmp_path/'d')
    refused(run_train('--data-path', data, '--work-dir', tmp_path/'w', '--set', 'model.head.kps_points=5'),
            'annotations.json', '17', '5', work=tmp_path/'w')
    cfg = tmp_path/'five.json'                          # a config file states its model: the same refusal
    cfg.write_text(json.dumps({'name': 'scrfd_500m_bnkps', 'overrides': {}}))
    refused(run_train('--data-path', data, '--config', cfg, '--work-dir', tmp_path/'w'), '17', '5', work=tmp_path/'w')


def yolo(tmp_path:Path, yaml_text:str, label:str) -> Path:
    "A one-image ultralytics pose dataset: data.yaml, images/train/a.jpg, labels/train/a.txt (val the same)."
    import cv2
    for split in ('train', 'val'):
        (tmp_path/'images'/split).mkdir(parents=True); (tmp_path/'labels'/split).mkdir(parents=True)
        cv2.imwrite(str(tmp_path/'images'/split/'a.jpg'), np.full((64, 64, 3), 90, np.uint8))
        (tmp_path/'labels'/split/'a.txt').write_text(label)
    (tmp_path/'data.yaml').write_text(yaml_text)
    return tmp_path/'data.yaml'


YAML = "path: .\ntrain: images/train\nval: images/val\nnames: [card]\nkpt_shape: [4, 3]\nflip_idx: [1, 0, 3, 2]\n"
CARD = "0 0.5 0.5 0.5 0.4 0.3 0.3 2 0.7 0.3 2 0.7 0.7 2 0.3 0.7 2\n"


@pytest.mark.parametrize('yaml_text,label,needles', [
    (YAML.replace('[1, 0, 3, 2]', '[1, 1, 3, 2]'), CARD, ['data.yaml:6', 'flip_idx', 'not a permutation']),
    (YAML, CARD.replace('0 0.5', '3 0.5', 1), ['a.txt:1', 'class']),
    (YAML.replace('[4, 3]', '[4, 2]'), CARD, ['data.yaml:5', 'without visibility']),
])
def test_broken_yolo_data_refused(tmp_path, yaml_text, label, needles):
    y = yolo(tmp_path/'d', yaml_text, label)
    refused(run_train('--data-path', y, '--work-dir', tmp_path/'w'), *needles, work=tmp_path/'w')


def test_good_yolo_data_trains(tmp_path):
    "The same YOLO-pose data unbroken: 1 class and 4 corners from the YAML, flip order from flip_idx."
    y = yolo(tmp_path/'d', YAML, CARD)
    res = train(RunConfig(data_path=str(y), work_dir=str(tmp_path/'w'), overrides=dict(FAST), progress=False))
    m = load_model(sorted((tmp_path/'w').glob('ckpt_*.pth'))[-1])
    assert (m.cfg.model.head.num_classes, m.cfg.model.head.num_kps, m.cfg.data.flip_idx, m.cfg.data.class_names) == (1, 4, (1, 0, 3, 2), ('card',))
    assert res['iter'] == 1 and set(res['ap']) >= {'ap', 'kp_ap', 'nme'}


def test_data_check_reads_every_layout(cards, tmp_path):
    "`python -m scrfd_nb.data check` takes a COCO folder or a data YAML too (formats' checker): a summary, or every problem with file:line."
    r = subprocess.run([sys.executable, '-m', 'scrfd_nb.data', 'check', str(cards)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and 'coco, 2 classes (face, card), 5 keypoints per object' in r.stdout, r.stdout + r.stderr
    y = yolo(tmp_path/'d', YAML, CARD.replace('0 0.5', '3 0.5', 1))
    r = subprocess.run([sys.executable, '-m', 'scrfd_nb.data', 'check', str(y)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1 and 'a.txt:1' in r.stdout and 'FAILED' in r.stdout, r.stdout + r.stderr
