"""Detection end to end: the official ONNX weights loaded into our model reproduce the reference detections on real
photos, and the `python -m scrfd_nb.detect` command line (run as a subprocess, as a user would) on files and folders."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ['det_500m', 'det_2.5g', 'scrfd_500m', 'scrfd_2.5g']
IMAGES = ['solvay_conference_1927.jpg', 'astronaut.png', '0_Parade_marchingband_1_20.jpg', '19_Couple_Couple_19_743.jpg']


# Tolerances from the reference folder (measured: boxes/keypoints 6e-4 px, scores 7.5e-6):
NET_ATOL = 1e-4    # golden README (a): whole-network float outputs agree to atol 1e-4 between machines; the ONNX
                   # scores are outputs, and a bbox/kps distance (stride units) moves by at most 1e-4 x stride px
DECODE_PX = 1e-3   # data/PROVENANCE.md: the golden decode reproduces insightface 2.1's own to < 1e-3 px
JSON_PX = 5e-4     # dets_to_json rounds coordinates to 3 decimals (the CLI's --json)


def golden_tol(image_hw, json_rounding=False):
    "Box/keypoint tolerance in the photo's pixels: DECODE_PX + NET_ATOL x the largest stride (32) / det_scale (640/long side)."
    return DECODE_PX + NET_ATOL * 32 / (640 / max(image_hw[:2])) + (JSON_PX if json_rounding else 0.0)


def check_golden(boxes, scores, kps, ref, image_hw, json_rounding=False):
    "Same count, boxes and keypoints within `golden_tol`, scores within NET_ATOL of golden_detections.json."
    tol = golden_tol(image_hw, json_rounding)
    assert len(boxes) == ref['num']
    np.testing.assert_allclose(boxes, np.array(ref['boxes_xyxy'], dtype=np.float64).reshape(-1, 4), rtol=0, atol=tol)
    np.testing.assert_allclose(scores, np.array(ref['scores']), rtol=0, atol=NET_ATOL)
    if ref['kps'] is None: assert kps is None
    else: np.testing.assert_allclose(kps, np.array(ref['kps']).reshape(-1, 5, 2), rtol=0, atol=tol)


@pytest.mark.parametrize('name', MODELS)
def test_official_weights_match_golden_detections(shared, name):
    "Our model with the official ONNX weights, insightface decoding, 4 real photos in one batch = golden_detections.json."
    import cv2
    from scrfd_nb.model import load_model
    from scrfd_nb.detect import detect_batch
    gold = json.loads((shared/'data'/'images'/'golden_detections.json').read_text())['results']
    model = load_model(shared/'data'/'models'/f'{name}.onnx')
    images = [cv2.imread(str(shared/'data'/'images'/f)) for f in IMAGES]
    for f, im, (boxes, scores, kps) in zip(IMAGES, images, detect_batch(model, images)):
        check_golden(boxes, scores, kps, gold[f][name], im.shape)


def run_cli(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
    return subprocess.run([sys.executable, '-m', 'scrfd_nb.detect', *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=600)


def test_cli_single_image(shared, tmp_path):
    import cv2
    w, img = shared/'data'/'models'/'det_500m.onnx', shared/'data'/'images'/'astronaut.png'
    r = run_cli('--weights', w, '--image', img, '--out', tmp_path/'drawn.jpg', '--json', tmp_path/'dets.json')
    assert r.returncode == 0, r.stderr
    assert 'astronaut.png: 1 face' in r.stdout
    dets = json.loads((tmp_path/'dets.json').read_text())
    ref = json.loads((shared/'data'/'images'/'golden_detections.json').read_text())['results']['astronaut.png']['det_500m']
    assert isinstance(dets, list) and set(dets[0]) == {'box', 'score', 'kps'}
    check_golden(np.array([d['box'] for d in dets]), np.array([d['score'] for d in dets]),
                 np.array([d['kps'] for d in dets]), ref, cv2.imread(str(img)).shape, json_rounding=True)
    drawn, orig = cv2.imread(str(tmp_path/'drawn.jpg')), cv2.imread(str(img))
    assert drawn.shape == orig.shape


def test_cli_folder(shared, tmp_path):
    src = tmp_path/'photos'; (src/'sub').mkdir(parents=True)
    (src/'astronaut.png').symlink_to(shared/'data'/'images'/'astronaut.png')
    (src/'sub'/'couple.jpg').symlink_to(shared/'data'/'images'/'19_Couple_Couple_19_743.jpg')
    (src/'notes.txt').write_text('not an image, ignored')
    r = run_cli('--weights', shared/'data'/'models'/'scrfd_2.5g.onnx', '--image', src, '--out', tmp_path/'drawn',
                '--json', tmp_path/'all.json')
    assert r.returncode == 0, r.stderr
    dets = json.loads((tmp_path/'all.json').read_text())
    gold = json.loads((shared/'data'/'images'/'golden_detections.json').read_text())['results']
    assert sorted(dets) == ['astronaut.png', 'sub/couple.jpg']
    assert len(dets['sub/couple.jpg']) == gold['19_Couple_Couple_19_743.jpg']['scrfd_2.5g']['num']
    assert all(d['kps'] is None for d in dets['astronaut.png'])         # model without keypoints: null
    assert (tmp_path/'drawn'/'astronaut.png').is_file() and (tmp_path/'drawn'/'sub'/'couple.jpg').is_file()


def test_cli_errors(shared, tmp_path):
    w = shared/'data'/'models'/'det_500m.onnx'
    r = run_cli('--weights', w, '--image', tmp_path/'missing.jpg')
    assert r.returncode == 2 and f'image not found: {tmp_path/"missing.jpg"}' in r.stderr, r.stderr
    r = run_cli('--weights', tmp_path/'nope.onnx', '--image', shared/'data'/'images'/'astronaut.png')
    assert r.returncode == 2 and 'weights not found' in r.stderr, r.stderr
    (tmp_path/'empty').mkdir()
    r = run_cli('--weights', w, '--image', tmp_path/'empty')
    assert r.returncode == 2 and 'no images' in r.stderr, r.stderr
    bad = tmp_path/'bad'; bad.mkdir(); (bad/'broken.jpg').write_bytes(b'this is not a jpeg')
    r = run_cli('--weights', w, '--image', bad)
    assert r.returncode == 2 and f'cannot read image {bad/"broken.jpg"}' in r.stderr, r.stderr


def test_cli_crops(shared, tmp_path):
    "--crops on a folder with the same file name in two subfolders: one crop per detection, each = align_faces exactly."
    import cv2, torch
    from scrfd_nb.align import align_faces
    from scrfd_nb.model import load_model
    from scrfd_nb.detect import detect
    src = tmp_path/'photos'
    for sub, f in (('a', 'astronaut.png'), ('b', '19_Couple_Couple_19_743.jpg'), ('b/c', 'solvay_conference_1927.jpg')):
        (src/sub).mkdir(parents=True); (src/sub/'p.png').write_bytes((shared/'data'/'images'/f).read_bytes())
    w = shared/'data'/'models'/'det_500m.onnx'
    r = run_cli('--weights', w, '--image', src, '--crops', tmp_path/'crops', '--json', tmp_path/'all.json')
    assert r.returncode == 0, r.stderr
    dets = json.loads((tmp_path/'all.json').read_text())
    assert sorted(dets) == ['a/p.png', 'b/c/p.png', 'b/p.png']
    crops = sorted(p.relative_to(tmp_path/'crops').as_posix() for p in (tmp_path/'crops').rglob('*.png'))
    assert len(crops) == sum(map(len, dets.values())) and len(dets['b/c/p.png']) >= 20   # Solvay: many faces
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                  # as the subprocess: the same keypoints to the last bit
    model = load_model(w)
    try: detected = {rel: (cv2.imread(str(src/rel)), detect(model, cv2.imread(str(src/rel)))[2]) for rel in dets}
    finally: torch.set_num_threads(threads)
    for rel, faces in dets.items():
        img, kps = detected[rel]
        np.testing.assert_allclose(np.array([d['kps'] for d in faces]).reshape(-1, 5, 2), kps, rtol=0, atol=1e-3)
        want = align_faces(img, kps)
        for i in range(len(faces)):
            got = cv2.imread(str(tmp_path/'crops'/Path(rel).parent/f'p_png_{i}.png'))
            assert got.shape == (112, 112, 3) and np.abs(got.astype(int) - want[i]).max() == 0, (rel, i)
    assert f'{len(dets["b/p.png"])} crops' in r.stdout


def test_cli_crops_never_over_an_input(shared, tmp_path):
    "--crops naming the input folder, or a folder where a crop would take an input's name: refused before any work."
    src = tmp_path/'photos'; (src/'sub').mkdir(parents=True)
    img = (shared/'data'/'images'/'astronaut.png').read_bytes()
    (src/'p.png').write_bytes(img); (src/'sub'/'p_png_0.png').write_bytes(img)
    w = shared/'data'/'models'/'det_500m.onnx'
    r = run_cli('--weights', w, '--image', src, '--crops', src)
    assert r.returncode == 2 and 'is also an input' in r.stderr and r.stderr.count('\n') == 1, r.stderr
    r = run_cli('--weights', w, '--image', src, '--crops', src/'sub', '--json', tmp_path/'d.json')
    assert r.returncode == 2, r.stderr
    assert f"a crop of {src/'p.png'} would overwrite the input image {src/'sub'/'p_png_0.png'}" in r.stderr, r.stderr
    assert (src/'sub'/'p_png_0.png').read_bytes() == img and not (tmp_path/'d.json').exists() and r.stdout == ''
