"""COCO JSON and ultralytics YOLO-pose readers (issue 23 part 2): exact records from hand-built files, one-line errors
naming file and line for every bad input, the flip permutation from keypoint names, and the `check` command's exits."""
import json, subprocess, sys
from pathlib import Path
import cv2, numpy as np, pytest, yaml
from scrfd_nb.core import UsageError, run_cli
from scrfd_nb.data import LabelError
from scrfd_nb.formats import (read_coco, read_yolo_pose, load_split, dataset_kind, check_against, check_dataset,
                              flip_from_names, parse_json_offsets, image_size, main, COCO_KPT_NAMES, COCO_KPT_SIGMAS)

CATS = [{"id": 7, "name": "card"}, {"id": 2, "name": "person", "keypoints": ["left_eye", "right_eye", "nose"]}]
IMGS = [{"id": 1, "file_name": "a.jpg", "width": 80, "height": 60}, {"id": 2, "file_name": "sub/b.jpg", "width": 40, "height": 30}]
ANNS = [{"id": 11, "image_id": 1, "category_id": 2, "bbox": [10, 20, 30, 15], "keypoints": [12, 22, 2, 30, 22, 1, 5, 5, 0]},
        {"id": 12, "image_id": 1, "category_id": 7, "bbox": [50.5, 1, 20, 10]},
        {"id": 13, "image_id": 1, "category_id": 2, "bbox": [0, 40, 8, 8], "iscrowd": 1}]


def write_coco(path, images=IMGS, annotations=ANNS, categories=CATS, indent=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(images=images, annotations=annotations, categories=categories), indent=indent))
    return path


@pytest.fixture
def coco(tmp_path):
    for s in ('train', 'val'):
        write_coco(tmp_path/s/'annotations.json')
        for im in IMGS:
            f = tmp_path/s/'images'/im['file_name']; f.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(f), np.zeros((im['height'], im['width'], 3), np.uint8))
    return tmp_path


def test_coco_records_exact(coco):
    recs, info = read_coco(coco/'train/annotations.json', coco/'train/images')
    assert (info.kind, info.class_names, info.num_kps, info.flip_idx, info.kpt_sigmas) == ('coco', ('person', 'card'), 3, (1, 0, 2), None)
    assert [r['filename'] for r in recs] == ['a.jpg']            # sub/b.jpg: no annotation, left out in train mode
    r = recs[0]
    assert (r['width'], r['height']) == (80, 60)
    np.testing.assert_array_equal(r['bboxes'], [[10, 20, 40, 35], [50.5, 1, 70.5, 11]])
    np.testing.assert_array_equal(r['labels'], [0, 1]); assert r['labels'].dtype == np.int64
    np.testing.assert_array_equal(r['keypoints'], [[[12, 22, 1], [30, 22, 1], [5, 5, 0]], np.zeros((3, 3))])
    np.testing.assert_array_equal(r['bboxes_ignore'], [[0, 40, 8, 48]])   # iscrowd -> ignore box
    assert r['keypoints'].dtype == r['bboxes'].dtype == np.float32
    assert (coco/'train/annotations.json').read_text().split('\n')[r['line'] - 1] == '  {'
    test = read_coco(coco/'train/annotations.json', coco/'train/images', 'test')[0]
    assert [t['filename'] for t in test] == ['a.jpg', 'sub/b.jpg'] and test[1]['keypoints'].shape == (0, 3, 3)


def test_coco_one_line_file(tmp_path):
    "The official files are one line: every error names line 1, and the annotation's id."
    p = write_coco(tmp_path/'x.json', annotations=ANNS + [dict(ANNS[0], id=99, category_id=5)], indent=None)
    with pytest.raises(LabelError, match=r'x\.json:1: annotation id 99: unknown category_id 5'): read_coco(p, tmp_path)


def test_json_offsets_match_json_loads():
    txt = json.dumps(dict(a=[1, {"b": None}], images=[{"id": 1}, [2]], categories=[], z="}"), indent=2)
    obj, offs = parse_json_offsets(txt)
    assert obj == json.loads(txt) and [txt[o] for o in offs['images']] == ['{', '[']


@pytest.mark.parametrize('ann, msg', [
    (dict(ANNS[0], category_id=9), 'annotation id 11: unknown category_id 9'),
    (dict(ANNS[0], keypoints=[12, 22, 30, 22, 5, 5]), 'annotation id 11: keypoints without visibility'),
    (dict(ANNS[0], keypoints=[12, 22, 2, 30]), 'keypoints length 4, expected 3 x 3 = 9'),
    (dict(ANNS[0], keypoints=[12, 22, 2, 30, 22, 5, 5, 5, 0]), 'keypoint visibility v must be 0, 1 or 2; point 1 has v=5'),
    (dict(ANNS[0], bbox=[10, 20, 30, 0]), 'box with w or h <= 0'),
    (dict(ANNS[0], image_id=5), 'image id 5 missing'),
    (dict(ANNS[1], keypoints=[1, 2, 2, 3, 4, 2, 5, 6, 2]), 'its category has no `keypoints` names'),
])
def test_coco_errors(tmp_path, ann, msg):
    p = write_coco(tmp_path/'bad.json', annotations=[ANNS[1], ann])
    with pytest.raises(LabelError) as e: read_coco(p, tmp_path)
    text = str(e.value)
    assert '\n' not in text and msg in text
    line = int(text.split(':')[1])                                  # the `{` that opens the annotation
    assert p.read_text().split('\n')[line - 1].strip() == '{' and f'"id": {ann["id"]}' in p.read_text().split('\n')[line]


def test_coco_file_errors(tmp_path):
    p = tmp_path/'a.json'
    p.write_text('{"images": [\n{"id": 1,}]}')
    with pytest.raises(LabelError, match=r'a\.json:2: not JSON'): read_coco(p, tmp_path)
    p.write_text('{"images": []}')
    with pytest.raises(LabelError, match='no `categories` list'): read_coco(p, tmp_path)
    write_coco(p, categories=CATS + [{"id": 4, "name": "x", "keypoints": ["a", "b"]}])
    with pytest.raises(LabelError, match='categories must agree on K'): read_coco(p, tmp_path)
    write_coco(p, images=[{"file_name": "a.jpg", "width": 3, "height": 3}])
    with pytest.raises(LabelError, match='image entry without an `id`'): read_coco(p, tmp_path)
    with pytest.raises(FileNotFoundError, match='no such image folder'): read_coco(p, tmp_path/'none')


def test_coco_person_flip_and_sigmas(tmp_path):
    cats = [{"id": 1, "name": "person", "keypoints": list(COCO_KPT_NAMES)}]
    p = write_coco(tmp_path/'p.json', annotations=[], categories=cats)
    info = read_coco(p, tmp_path, 'test')[1]
    assert info.flip_idx == (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)   # ultralytics' coco-pose.yaml
    assert info.kpt_sigmas == COCO_KPT_SIGMAS and info.num_kps == 17


def test_flip_from_names():
    assert flip_from_names(['eye_left', 'eye_right', 'nose', 'Left_Mouth', 'Right_Mouth']) == (1, 0, 2, 4, 3)
    assert flip_from_names(['top_left', 'top_right', 'bottom_right', 'bottom_left']) == (1, 0, 3, 2)
    assert flip_from_names(['left_eye', 'right_eye', 'left_ear']) is None       # left_ear has no partner
    assert flip_from_names(['c0', 'c1']) is None and flip_from_names([]) == ()


def yolo_set(tmp_path, labels=None, **kw):
    for s in ('train', 'val'): (tmp_path/'ds/images'/s).mkdir(parents=True, exist_ok=True); (tmp_path/'ds/labels'/s).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(tmp_path/'ds/images/train/a.jpg'), np.zeros((40, 200, 3), np.uint8))
    cv2.imwrite(str(tmp_path/'ds/images/train/n.png'), np.zeros((10, 10, 3), np.uint8))      # no label file
    (tmp_path/'ds/labels/train/a.txt').write_text(labels or '2 0.25 0.5 0.1 0.5 0.2 0.4 2 0.3 0.4 1 0.25 0.6 0\n')
    d = dict(path='ds', train='images/train', val='images/val', names={0: 'a', 1: 'b', 2: 'c'}, kpt_shape=[3, 3], flip_idx=[1, 0, 2]) | kw
    y = tmp_path/'data.yaml'
    y.write_text(yaml.safe_dump({k: v for k, v in d.items() if v is not None}, sort_keys=False, default_flow_style=None))
    return y


def test_yolo_records_exact(tmp_path):
    y = yolo_set(tmp_path)
    recs, info = read_yolo_pose(y)
    assert (info.kind, info.class_names, info.num_kps, info.flip_idx) == ('yolo', ('a', 'b', 'c'), 3, (1, 0, 2))
    assert [r['filename'] for r in recs] == ['a.jpg']
    r = recs[0]
    assert (r['width'], r['height'], r['line']) == (200, 40, 0)
    np.testing.assert_allclose(r['bboxes'], [[40, 10, 60, 30]], atol=1e-4)       # cx 50, cy 20, w 20, h 20
    np.testing.assert_array_equal(r['labels'], [2])
    np.testing.assert_allclose(r['keypoints'], [[[40, 16, 1], [60, 16, 1], [50, 24, 0]]], atol=1e-4)
    assert r['bboxes_ignore'].shape == (0, 4)
    recs, images, _ = load_split(y, 'train', 'test')
    assert [r['filename'] for r in recs] == ['a.jpg', 'n.png'] and images == tmp_path/'ds/images/train'
    assert len(recs[1]['bboxes']) == 0


def test_yolo_boxes_only(tmp_path):
    y = yolo_set(tmp_path, labels='0 0.5 0.5 1 1\n', kpt_shape=None, flip_idx=None, names=['x'])
    recs, info = read_yolo_pose(y)
    assert info.num_kps == 0 and info.flip_idx == () and recs[0]['keypoints'].shape == (1, 0, 3)
    np.testing.assert_allclose(recs[0]['bboxes'], [[0, 0, 200, 40]])


@pytest.mark.parametrize('labels, kw, msg', [
    ('3 0.5 0.5 0.1 0.1 0 0 0 0 0 0 0 0 0', {}, r'a\.txt:1: class id 3 outside 0\.\.2'),
    ('0 0.5 0.5 0.1 0.1 0 0 0 0 0 0 0 0 0\n0 0.5 0.5 0.1', {}, r'a\.txt:2: 4 values, expected 14'),
    ('0 0.5 0.5 0.1 0.1 0 0 0 0 0 0', {}, r'a\.txt:1: .*keypoints without visibility'),
    ('0 0.5 0.5 0.1 0.1 0 1.2 1 0 0 0 0 0 0', {}, r'a\.txt:1: value 1\.2 outside \[0, 1\]'),
    (None, dict(kpt_shape=[3, 2]), r'data\.yaml:5: keypoints without visibility: kpt_shape must be \[K, 3\]'),
    (None, dict(flip_idx=[0, 1, 3]), r'data\.yaml:6: flip_idx \[0, 1, 3\] is not a permutation of 0\.\.2'),
    (None, dict(names=None), r'data\.yaml:1: missing `names`'),
    (None, dict(train='images/none'), r'data\.yaml:2: missing image folder'),
])
def test_yolo_errors(tmp_path, labels, kw, msg):
    y = yolo_set(tmp_path, labels, **kw)
    with pytest.raises(LabelError, match=msg) as e: read_yolo_pose(y)
    assert '\n' not in str(e.value)


def test_yolo_value_tolerance(tmp_path):
    y = yolo_set(tmp_path, labels='0 0.5 0.5 1.0005 1 0 0 0 0 0 0 0 0 0\n')
    assert len(read_yolo_pose(y)[0]) == 1


def test_image_size_as_decoded(tmp_path):
    "The header size is the decoded size, EXIF rotation included (OpenCV applies it)."
    from PIL import Image
    ex = Image.Exif(); ex[274] = 6
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path/'r.jpg', exif=ex)
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path/'p.jpg')
    for f in ('r.jpg', 'p.jpg'):
        h, w = cv2.imdecode(np.fromfile(tmp_path/f, np.uint8), cv2.IMREAD_COLOR).shape[:2]
        assert image_size(tmp_path/f) == (w, h)


def test_kind_and_check_against(coco, tmp_path):
    assert dataset_kind(coco) == 'coco'
    with pytest.raises(UsageError, match='not a dataset; expected a folder with train/labelv2.txt'): dataset_kind(coco/'train')
    info = load_split(coco, 'val')[2]
    assert info.root == coco
    with pytest.raises(ValueError, match=r'annotations\.json: 3 keypoints per object, the model has 5'): check_against(info, 2, 5)
    with pytest.raises(ValueError, match='2 classes'): check_against(info, 1, 3)
    with pytest.raises(ValueError, match='not a permutation'): check_against(info, flip_idx=(0, 0, 1))
    check_against(info, 2, 3, (1, 0, 2))


def test_check_dataset_collects_all(coco):
    write_coco(coco/'val/annotations.json', annotations=[dict(ANNS[0], category_id=9), dict(ANNS[1], bbox=[0, 0, 0, 1]), ANNS[2]])
    rep = check_dataset(coco, images=True)
    assert [m.split(':')[0] for _, _, m in rep.errors] == ['annotation id 11', 'annotation id 12']
    assert all(f.endswith('val/annotations.json') and l > 1 for f, l, _ in rep.errors)
    assert rep.summary['splits']['train'] == dict(images=2, empty=1, objects={'person': 1, 'card': 1}, ignore_boxes=1, kps_labelled=2)
    assert rep.summary['images_checked'] == 4


def test_check_yolo_and_labelv2(tmp_path):
    y = yolo_set(tmp_path, labels='3 0.5 0.5 0.1 0.1 0 0 0 0 0 0 0 0 0\n0 2 0.5 0.1 0.1 0 0 0 0 0 0 0 0 0\n')
    rep = check_dataset(y)
    assert [(Path(f).name, l) for f, l, _ in rep.errors] == [('a.txt', 1), ('a.txt', 2)]
    lv = tmp_path/'lv'
    for s in ('train', 'val'): (lv/s/'images').mkdir(parents=True); (lv/s/'labelv2.txt').write_text('# a.jpg 64 64\n1 2 30 40 0\n')
    rep = check_dataset(lv)
    assert rep.ok and rep.summary['splits']['val']['objects'] == {'face': 1}


def test_cli_exit_codes(coco, tmp_path, capsys):
    assert run_cli(main, ['check', str(coco)]) == 0
    write_coco(coco/'train/annotations.json', annotations=[dict(ANNS[0], category_id=9)])
    assert run_cli(main, ['check', str(coco)]) == 1
    assert 'unknown category_id 9' in capsys.readouterr().out
    assert run_cli(main, ['check', str(tmp_path/'none')]) == 2
    assert run_cli(main, ['check', str(coco/'train')]) == 2
    err = capsys.readouterr().err.strip().split('\n')
    assert len(err) == 2 and 'no such file or folder' in err[0] and 'not a dataset' in err[1]


def test_cli_process(coco):
    r = subprocess.run([sys.executable, '-m', 'scrfd_nb.formats', 'check', str(coco/'nope')], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'no such file or folder' in r.stderr
