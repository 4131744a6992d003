"""Converters to and from labelv2 (scrfd_nb.convert): hand-made cases of every format with values worked out by hand,
round trips, the WIDER FACE val equality with SCRFD's own labelv2, and the command line as a subprocess."""
import json, subprocess, sys
from pathlib import Path
import cv2
import numpy as np
import pytest
from conftest import require_shared
from scrfd_nb.convert import (retinaface_to_labelv2, yolo_to_labelv2, coco_to_labelv2, labelv2_to_yolo, labelv2_to_coco,
                              read_labelv2, main)
from scrfd_nb.data import parse_labelv2, check_labelv2

ROOT = Path(__file__).resolve().parents[1]


def _img(path, w, h):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), 127, np.uint8))


# a labelv2 file with every kind of line; 3-decimal values
LABELV2 = """# ev/a.jpg 400 300
114.132 214.383 159.921 274.383 127.62 236.484 0 144.609 239.099 1 -1 -1 -1 129.866 257.712 1 141.722 262.375 0
75.702 105.578 86.383 117.578 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1
211.725 157.128 218.117 165.128 1
345 211 349 215 12 12 0 13 12 0 12.5 13 0 12 14 1 13 14 0
# ev/b.jpg 300 500
# ev/sub/c.png 64 48
1 2 30 40 0.5 0.5 0 1 1 0 2 2 0 3 3 0 4 4.25 0
"""


def test_retinaface_train_and_val_lines(tmp_path):
    _img(tmp_path/'im'/'0--P'/'p.jpg', 64, 80)
    (tmp_path/'label.txt').write_text(
        "# 0--P/p.jpg\n"
        "10 20 30 40 15.5 25.25 0.0 35.0 25.0 1.0 -1.0 -1.0 -1.0 25.0 32.0 0.0 33.125 50.0 0.0 0.82\n"  # train: + blur
        "12 13 5 6 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0\n"  # no landmarks
        "7 8 0 4\n"                                                                                     # w = 0: dropped
        "1.5 2 10 10\n")                                                                                # val: box only
    st = retinaface_to_labelv2(tmp_path/'label.txt', tmp_path/'out.txt', images=tmp_path/'im')
    assert (tmp_path/'out.txt').read_text() == ("# 0--P/p.jpg 64 80\n"
        "10 20 40 60 15.5 25.25 0 35 25 1 -1 -1 -1 25 32 0 33.125 50 0\n"
        "12 13 17 19" + " -1 -1 -1" * 5 + "\n"
        "1.5 2 11.5 12 0\n")
    assert (st['faces'], st['faces_with_kps'], len(st['dropped'])) == (3, 2, 1) and st['dropped'][0].endswith('label.txt:4')
    # the trainer's parser reads it: flags 0/1 both weight 1, the missing point weight 0 at (-1, -1)
    r = parse_labelv2(tmp_path/'out.txt')[0]
    np.testing.assert_array_equal(r['keypoints'][0], [[15.5, 25.25, 1], [35, 25, 1], [-1, -1, 0], [25, 32, 1], [33.125, 50, 1]])
    np.testing.assert_array_equal(r['bboxes'], [[10, 20, 40, 60], [12, 13, 17, 19], [1.5, 2, 11.5, 12]])


def test_retinaface_box_only_4(tmp_path):
    (tmp_path/'label.txt').write_text("# a.jpg\n1 2 3 4\n")
    retinaface_to_labelv2(tmp_path/'label.txt', tmp_path/'o.txt', sizes={'a.jpg': (10, 20)}, box_only=4)
    assert (tmp_path/'o.txt').read_text() == "# a.jpg 10 20\n1 2 4 6\n"


@pytest.mark.parametrize('text,msg', [("# a.jpg\n1 2 3 4 5\n", 'label.txt:2: 5 values'),
                                      ("# a.jpg\n1 2 x 4\n", 'label.txt:2: non-numeric'),
                                      ("1 2 3 4\n", 'label.txt:1: face line before'),
                                      ("# a.jpg\n1 2 3 4" + " 5 5 3" * 5 + "\n", 'label.txt:2: keypoint 0 flag 3')])
def test_retinaface_malformed(tmp_path, text, msg):
    (tmp_path/'label.txt').write_text(text)
    with pytest.raises(ValueError, match=msg.replace('.', r'\.')):
        retinaface_to_labelv2(tmp_path/'label.txt', tmp_path/'o.txt', sizes={'a.jpg': (10, 10)})


def test_wider_val_equals_scrfd_labelv2(tmp_path):
    d = require_shared()/'data'/'widerface'
    st = retinaface_to_labelv2(d/'retinaface_val_label.txt', tmp_path/'val.txt', sizes=d/'scrfd_labelv2_val.txt', box_only=4)
    ours = (tmp_path/'val.txt').read_text().splitlines()
    ref = (d/'scrfd_labelv2_val.txt').read_text().splitlines()
    assert len(ours) == len(ref) == 42923
    assert [i for i, (a, b) in enumerate(zip(ours, ref)) if a != b] == []
    assert (st['images'], st['faces'], len(st['dropped'])) == (3226, 39697, 11)


def _yolo_set(tmp_path, lines):
    _img(tmp_path/'images'/'s'/'a.png', 200, 100)
    _img(tmp_path/'images'/'s'/'none.jpg', 50, 40)
    (tmp_path/'labels'/'s').mkdir(parents=True, exist_ok=True)
    (tmp_path/'labels'/'s'/'a.txt').write_text(lines)
    return tmp_path/'labels', tmp_path/'images'


def test_yolo_layouts(tmp_path):
    # 200 x 100 image: box (0.5 0.5 0.2 0.4) = 80 30 120 70; point (0.45, 0.4) = (90, 40)
    labels, images = _yolo_set(tmp_path, (
        "0 0.5 0.5 0.2 0.4 0.45 0.4 0.55 0.4 0.5 0.5 -1 -1 0.52 0.6\n"          # yolov5-face, point 3 missing
        "0 0.5 0.5 0.2 0.4 0.45 0.4 2 0.55 0.4 1 0.5 0.5 2 0.1 0.1 0 0.52 0.6 2\n"  # YOLO-pose, v=1 occluded, v=0 missing
        "0 0.25 0.75 0.1 0.3\n"                                                    # box only
        "1 0.125 0.25 0.05 0.1\n"))                                                # ignore class
    st = yolo_to_labelv2(labels, images, tmp_path/'o.txt')
    assert (tmp_path/'o.txt').read_text() == ("# s/a.png 200 100\n"
        "80 30 120 70 90 40 0 110 40 0 100 50 0 -1 -1 -1 104 60 0\n"
        "80 30 120 70 90 40 0 110 40 1 100 50 0 -1 -1 -1 104 60 0\n"
        "40 60 60 90 0\n"
        "20 20 30 30 1\n"
        "# s/none.jpg 50 40\n")
    assert (st['faces'], st['ignore_boxes'], st['faces_with_kps']) == (3, 1, 2)
    assert check_labelv2(tmp_path/'o.txt', images).ok


@pytest.mark.parametrize('line,msg', [("0 0.5 0.5 0.2\n", 'a.txt:2: 4 values'), ("2 0.5 0.5 0.2 0.4\n", 'a.txt:2: class 2'),
                                      ("0 0.5 0.5 0.2 0.4" + " 0.5 0.5 3" * 5 + "\n", 'a.txt:2: keypoint 0 visibility 3')])
def test_yolo_malformed(tmp_path, line, msg):
    labels, images = _yolo_set(tmp_path, "0 0.5 0.5 0.2 0.4\n" + line)
    with pytest.raises(ValueError, match=msg.replace('.', r'\.')):
        yolo_to_labelv2(labels, images, tmp_path/'o.txt')


def test_coco(tmp_path):
    coco = dict(images=[dict(id=3, file_name='x/a.jpg', width=100, height=80)],
                categories=[dict(id=1, name='face')],
                annotations=[dict(id=10, image_id=3, category_id=1, bbox=[10.5, 20, 30, 40.25],
                                  keypoints=[15, 25, 2, 35.5, 25, 1, 0, 0, 0, 25, 32, 2, 33, 50, 2]),
                             dict(id=11, image_id=3, category_id=1, bbox=[50, 5, 20, 10], iscrowd=1),
                             dict(id=12, image_id=3, category_id=1, bbox=[1, 2, 3, 4]),
                             dict(id=13, image_id=3, category_id=1, bbox=[1, 2, 3, -4])])
    (tmp_path/'c.json').write_text(json.dumps(coco, indent=1))
    st = coco_to_labelv2(tmp_path/'c.json', tmp_path/'o.txt')
    assert (tmp_path/'o.txt').read_text() == ("# x/a.jpg 100 80\n"
        "10.5 20 40.5 60.25 15 25 0 35.5 25 1 -1 -1 -1 25 32 0 33 50 0\n"
        "50 5 70 15 1\n"
        "1 2 4 6 0\n")
    assert (st['faces'], st['ignore_boxes'], len(st['dropped'])) == (2, 1, 1)
    ign = parse_labelv2(tmp_path/'o.txt')[0]['bboxes_ignore']
    np.testing.assert_array_equal(ign, [[50, 5, 70, 15]])
    coco['annotations'][0]['bbox'] = [1, 2, 3]
    (tmp_path/'bad.json').write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r'annotations\[0\] \(id 10\): bbox must be 4 numbers'):
        coco_to_labelv2(tmp_path/'bad.json', tmp_path/'o.txt')


def test_labelv2_to_coco_values(tmp_path):
    (tmp_path/'l.txt').write_text(LABELV2)
    d = labelv2_to_coco(tmp_path/'l.txt')
    a = d['annotations']
    assert [x['bbox'] for x in a[:3]] == [[114.132, 214.383, 45.789, 60.0], [75.702, 105.578, 10.681, 12.0], [211.725, 157.128, 6.392, 8.0]]
    assert a[0]['keypoints'] == [127.62, 236.484, 2, 144.609, 239.099, 1, 0, 0, 0, 129.866, 257.712, 1, 141.722, 262.375, 2]
    assert (a[0]['num_keypoints'], a[1]['num_keypoints'], a[2]['iscrowd'], 'keypoints' in a[2]) == (4, 0, 1, False)
    assert [im['file_name'] for im in d['images']] == ['ev/a.jpg', 'ev/b.jpg', 'ev/sub/c.png']


def test_round_trips(tmp_path):
    (tmp_path/'l.txt').write_text(LABELV2)
    for name, (w, h) in {'ev/a.jpg': (400, 300), 'ev/b.jpg': (300, 500), 'ev/sub/c.png': (64, 48)}.items():
        _img(tmp_path/'images'/name, w, h)
    labelv2_to_coco(tmp_path/'l.txt', tmp_path/'c.json'); coco_to_labelv2(tmp_path/'c.json', tmp_path/'c.txt')
    assert (tmp_path/'c.txt').read_text() == LABELV2
    labelv2_to_yolo(tmp_path/'l.txt', tmp_path/'pose'); yolo_to_labelv2(tmp_path/'pose', tmp_path/'images', tmp_path/'p.txt')
    assert (tmp_path/'p.txt').read_text() == LABELV2
    assert (tmp_path/'pose'/'ev'/'b.txt').read_text() == ''   # an image without faces has an empty label file
    labelv2_to_yolo(tmp_path/'l.txt', tmp_path/'v5', layout='v5face'); yolo_to_labelv2(tmp_path/'v5', tmp_path/'images', tmp_path/'v.txt')
    no_flags = [r for r in read_labelv2(tmp_path/'l.txt')]
    got = read_labelv2(tmp_path/'v.txt')
    for a, b in zip(no_flags, got):   # yolov5-face keeps coordinates, not the occluded flag
        for fa, fb in zip(a['faces'], b['faces']):
            assert fa.box == fb.box and fa.ignore == fb.ignore
            if fa.kps is not None:
                np.testing.assert_array_equal(fa.kps[:, :2], fb.kps[:, :2])
                np.testing.assert_array_equal(fb.kps[:, 2], np.where(fa.kps[:, 2] == -1, -1, 0))
    labelv2_to_yolo(tmp_path/'l.txt', tmp_path/'box', layout='box', ignore_class=None)
    yolo_to_labelv2(tmp_path/'box', tmp_path/'images', tmp_path/'b.txt')
    assert (tmp_path/'b.txt').read_text().splitlines()[1:3] == ['114.132 214.383 159.921 274.383 0', '75.702 105.578 86.383 117.578 0']
    assert '211.725' not in (tmp_path/'b.txt').read_text()   # ignore boxes dropped with ignore_class=None


def test_yolo_clip(tmp_path):
    (tmp_path/'l.txt').write_text("# a.jpg 100 50\n-5 10 20 60 -3 20 0 10 20 0 10 30 0 5 40 0 15 40 0\n")
    labelv2_to_yolo(tmp_path/'l.txt', tmp_path/'y')
    v = [float(x) for x in (tmp_path/'y'/'a.txt').read_text().split()]
    # clipped box 0 10 20 50 -> cx 0.1, cy 0.6, w 0.2, h 0.8; the point at x = -3 is outside -> missing (0 0 0)
    np.testing.assert_allclose(v[:8], [0, 0.1, 0.6, 0.2, 0.8, 0, 0, 0])
    np.testing.assert_allclose(v[8:11], [0.1, 0.4, 2])


def _cli(*args):
    return subprocess.run([sys.executable, '-m', 'scrfd_nb.convert', *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def test_cli(tmp_path):
    labels, images = _yolo_set(tmp_path, "0 0.5 0.5 0.2 0.4 0.45 0.4 2 0.55 0.4 1 0.5 0.5 2 0.1 0.1 0 0.52 0.6 2\n")
    r = _cli('--format', 'yolo', labels, '--images', images, '--out', tmp_path/'o.txt')
    assert r.returncode == 0, r.stderr
    assert '0 errors' in r.stdout and '2 image files checked' in r.stdout
    assert (tmp_path/'o.txt').read_text().startswith('# s/a.png 200 100\n80 30 120 70 90 40 0 110 40 1 100 50 0 -1 -1 -1 104 60 0\n')
    # the reverse direction in-process (each subprocess pays torch's import)
    assert main(['--to', 'coco', str(tmp_path/'o.txt'), '--out', str(tmp_path/'o.json')]) == 0
    assert json.loads((tmp_path/'o.json').read_text())['annotations'][0]['bbox'] == [80, 30, 40, 40]
    assert main(['--to', 'yolo', str(tmp_path/'o.txt'), '--out', str(tmp_path/'ylab')]) == 0
    assert (tmp_path/'ylab'/'s'/'a.txt').read_text().startswith('0 0.5 0.5 0.2 0.4 0.45 0.4 2 0.55 0.4 1 0.5 0.5 2 0 0 0 ')
    # malformed input: one line naming file:line, exit 1, no traceback
    (labels/'s'/'a.txt').write_text("0 0.5 0.5 0.2 0.4\n0 0.5 0.5 zero 0.4\n")
    r = _cli('--format', 'yolo', labels, '--images', images, '--out', tmp_path/'o2.txt')
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and f"{labels/'s'/'a.txt'}:2:" in r.stderr
    (tmp_path/'c.json').write_text('{"images": [\n {"id": 1,,\n]}')
    assert main(['--format', 'coco', str(tmp_path/'c.json'), '--out', str(tmp_path/'o3.txt')]) == 1


def test_cli_usage_errors(tmp_path, capsys):
    (tmp_path/'l.txt').write_text(LABELV2)
    before = (tmp_path/'l.txt').read_text()
    for args in [('--format', 'retinaface', tmp_path/'l.txt', '--sizes', tmp_path/'l.txt', '--out', tmp_path/'l.txt'),  # out = src
                 ('--to', 'coco', tmp_path/'l.txt', '--out', tmp_path/'l.txt'),
                 ('--format', 'coco', tmp_path/'missing.json', '--out', tmp_path/'x.txt'),
                 ('--format', 'yolo', tmp_path, '--out', tmp_path/'x.txt'),                                            # no --images
                 ('--format', 'coco', '--to', 'yolo', tmp_path/'l.txt', '--out', tmp_path/'x')]:
        assert main([str(a) for a in args]) == 2, args
        err = capsys.readouterr().err
        assert 'Traceback' not in err and len(err.strip().splitlines()) <= 2, err   # argparse: usage line + error line
    assert (tmp_path/'l.txt').read_text() == before
    r = _cli('--format', 'retinaface', tmp_path/'l.txt', '--sizes', tmp_path/'l.txt', '--out', tmp_path/'l.txt')
    assert r.returncode == 2 and r.stderr.strip() == f"python -m scrfd_nb.convert: error: --out {tmp_path/'l.txt'} is also an input ({tmp_path/'l.txt'}): refusing to overwrite it"


def test_cli_check_fails(tmp_path, capsys):
    "The final data check runs on the result: a header size that disagrees with the image fails it (exit 1)."
    _img(tmp_path/'im'/'a.jpg', 60, 40)
    (tmp_path/'label.txt').write_text("# a.jpg 61 40\n1 2 3 4\n")
    assert main(['--format', 'retinaface', str(tmp_path/'label.txt'), '--images', str(tmp_path/'im'), '--out', str(tmp_path/'o.txt')]) == 1
    out = capsys.readouterr().out
    assert 'size mismatch' in out and 'FAILED' in out
