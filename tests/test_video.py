"""`python -m scrfd_nb.detect --video` run as a user would (a subprocess) on a short video written here with
cv2.VideoWriter from a real photo: batched detection (--batch-size 4, last batch short) gives every frame exactly the
detections of that decoded frame detected alone, the drawn video keeps every frame, Ctrl-C keeps what was written."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
from conftest import require_shared, require_package, skip_or_fail

cv2 = require_package('cv2', 'opencv-python-headless, a requirement of the package')
ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1')


def cli(*args):
    return [sys.executable, '-m', 'scrfd_nb.detect', *map(str, args)]


def write_video(path_stem, n, size=(640, 360), fps=10):
    "`n` frames of the Solvay photo, zoomed in 1.2 % and panned 6 px right, 4 px down per frame; MJPG .avi, else mp4v .mp4."
    photo = cv2.imread(str(require_shared()/'data'/'images'/'solvay_conference_1927.jpg'))
    photo = cv2.resize(photo, None, fx=0.4, fy=0.4, interpolation=cv2.INTER_AREA)   # once: 1200 x 868
    w, h = size
    for ext, cc in (('.avi', 'MJPG'), ('.mp4', 'mp4v')):
        path = path_stem.with_suffix(ext)
        vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*cc), fps, size)
        if vw.isOpened(): break
    else: skip_or_fail('this OpenCV build writes neither MJPG .avi nor mp4v .mp4 (opencv-python-headless wheels do)')
    for i in range(n):
        f = 0.75 * (1 + 0.012 * i)
        im = cv2.resize(photo, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        y, x = int(0.22 * im.shape[0]) + 4 * i, 20 + 6 * i
        vw.write(np.ascontiguousarray(im[y:y + h, x:x + w]))
    vw.release()
    return path


def decoded_frames(path):
    cap, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok: return frames
        frames.append(f)


@pytest.fixture(scope='module')
def model():
    import torch
    from scrfd_nb.model import load_model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)       # as the subprocess (OMP_NUM_THREADS=1)
    yield load_model(require_shared()/'data'/'models'/'det_500m.onnx')
    torch.set_num_threads(threads)


def test_video_batched_equals_each_frame_alone(model, tmp_path):
    from scrfd_nb.detect import detect
    w = require_shared()/'data'/'models'/'det_500m.onnx'
    src = write_video(tmp_path/'clip', 10)
    t = time.perf_counter()
    r = subprocess.run(cli('--weights', w, '--video', src, '--out', tmp_path/'out.mp4', '--json', tmp_path/'dets.jsonl',
                           '--batch-size', 4), capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(l) for l in (tmp_path/'dets.jsonl').read_text().splitlines()]
    frames = decoded_frames(src)
    assert len(frames) == 10 and [l['frame'] for l in lines] == list(range(10))   # batches 4 + 4 + 2
    np.testing.assert_allclose([l['time_s'] for l in lines], np.arange(10) / 10, atol=1e-6)
    assert f'{src}: 10 frames, {sum(len(l["faces"]) for l in lines)} faces' in r.stdout
    prev = None
    for l, f in zip(lines, frames):
        boxes, scores, kps = detect(model, f)
        assert len(l['faces']) == len(boxes) >= 10, (l['frame'], len(l['faces']), len(boxes))
        np.testing.assert_allclose([d['box'] for d in l['faces']], boxes, rtol=0, atol=1e-3)
        np.testing.assert_allclose([d['score'] for d in l['faces']], scores, rtol=0, atol=1e-5)
        np.testing.assert_allclose([d['kps'] for d in l['faces']], kps, rtol=0, atol=1e-3)
        if prev is not None:   # the faces move from frame to frame: results of one frame given to another would show
            assert len(boxes) != len(prev) or np.abs(boxes - prev).max() > 2
        prev = boxes
    out = cv2.VideoCapture(str(tmp_path/'out.mp4'))
    assert out.get(cv2.CAP_PROP_FPS) == pytest.approx(10)
    drawn = decoded_frames(tmp_path/'out.mp4')
    assert len(drawn) == 10 and drawn[0].shape == frames[0].shape
    print(f'video CLI: {time.perf_counter() - t:.1f} s')


def test_ctrl_c_keeps_what_was_written(tmp_path):
    w = require_shared()/'data'/'models'/'det_500m.onnx'
    src = write_video(tmp_path/'long', 80, size=(320, 180))
    jl = tmp_path/'dets.jsonl'
    p = subprocess.Popen(cli('--weights', w, '--video', src, '--out', tmp_path/'out.avi', '--json', jl, '--batch-size', 2,
                             '--no-progress'), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    t0 = time.monotonic()
    while (not jl.exists() or jl.read_text().count('\n') < 2) and p.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (p.returncode, err)
    assert 'Traceback' not in err and err.strip().splitlines()[-1] == 'interrupted', err
    lines = [json.loads(l) for l in jl.read_text().splitlines()]      # every line whole
    n = len(lines)
    assert 2 <= n < 80 and [l['frame'] for l in lines] == list(range(n))
    assert f'interrupted after {n} frames' in err, err
    assert len(decoded_frames(tmp_path/'out.avi')) in (n, n + 1)      # the writer was closed: a playable file


def test_unreadable_video_is_one_line(tmp_path, capfd):
    "In-process (the command line's own `run_cli`), capturing the file descriptors: FFmpeg's messages would show there."
    from scrfd_nb.core import run_cli
    from scrfd_nb.detect import main
    w = require_shared()/'data'/'models'/'det_500m.onnx'
    bad = tmp_path/'broken.mp4'; bad.write_bytes(b'not a video at all' * 100)
    assert run_cli(main, ['--weights', str(w), '--video', str(bad), '--json', str(tmp_path/'d.jsonl')]) == 1
    out, err = capfd.readouterr()
    assert err == f'error: cannot read video {bad}: no frame OpenCV can decode\n' and out == '', (out, err)
    assert not (tmp_path/'d.jsonl').exists()
