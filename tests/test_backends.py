"""backends (issue 25): every runtime's runner decoded by detect's own code finds the same faces as detect(model, image)
on the real photos: PyTorch with BatchNorm folded and channels-last, onnxruntime, OpenVINO at f32, torch.compile (slow);
TensorRT where a CUDA device is present. Reduced precisions are held to the benchmark's rule in tests/test_benchmark.py."""
import cv2
import numpy as np
import pytest
import torch
from scrfd_nb.backends import (Detector, OnnxDetector, TensorRtRunner, TorchRunner, BackendUnavailable, load_runner,
                               runner_for, BACKENDS)
from scrfd_nb.detect import detect
from scrfd_nb.export import calib_images
from scrfd_nb.model import load_model
from conftest import require_package


@pytest.fixture(scope='module')
def m500(request):
    from conftest import require_shared
    d = require_shared()
    return d, load_model(d/'data'/'models'/'det_500m.onnx')


def same_faces(model, det, photos, size, box_tol, score_tol, min_faces=30):
    "Every photo: the same number of faces, boxes/keypoints within box_tol px, scores within score_tol."
    n = 0
    for p in photos:
        img = cv2.imread(str(p))
        b, s, k = detect(model, img, input_size=size)
        fb, fs, fk = det.detect(img, input_size=size)
        assert len(fb) == len(b), (p.name, len(fb), len(b))
        np.testing.assert_allclose(fb, b, atol=box_tol, err_msg=p.name)
        np.testing.assert_allclose(fs, s, atol=score_tol, err_msg=p.name)
        np.testing.assert_allclose(fk, k, atol=box_tol, err_msg=p.name)
        n += len(b)
    assert n >= min_faces                                 # the photos hold faces (Solvay alone has 29 at 640)


# tolerances: fp32 rounding of a different kernel order (the export tests' 1e-3 px / 1e-5 on scores); OpenVINO f32 raw
# outputs are within 5e-6 of onnxruntime's (measured), i.e. < 2e-4 px at stride 32
@pytest.mark.parametrize('backend', ['torch-fused', 'onnxruntime', 'openvino'])
def test_runtime_parity_on_photos(m500, backend):
    shared, model = m500
    if backend == 'openvino': require_package('openvino', 'pip install openvino nncf')
    det = Detector(runner_for(model, backend, threads=1), backend)
    same_faces(model, det, calib_images(shared/'data'/'images'), 640, 1e-3, 1e-5)


def test_onnx_file_as_is(m500):
    "An .onnx runs as is in onnxruntime and OpenVINO (the official 2-D layout image by image), other backends load it."
    shared, model = m500
    f = shared/'data'/'models'/'det_500m.onnx'
    x = torch.randn(2, 3, 160, 192, generator=torch.Generator().manual_seed(0))
    ref = TorchRunner(model)(x)
    names = ['onnxruntime'] + (['openvino'] if require_package('openvino', 'pip install openvino nncf') else [])
    for b in names:
        for a, r in zip(load_runner(f, backend=b)(x), ref): np.testing.assert_allclose(a, r, atol=1e-4, err_msg=b)
    with pytest.raises(ValueError, match='unknown backend'): load_runner(f, backend='tflite')
    assert set(BACKENDS) >= {'torch', 'torch-fused', 'torch-compile', 'onnxruntime', 'openvino', 'openvino-bf16'}


def test_onnx_detector_is_a_detector(m500):
    shared, model = m500
    det = OnnxDetector(model, threads=1)
    assert isinstance(det, Detector) and det.session is det.runner.session
    same_faces(model, det, [shared/'data'/'images'/'solvay_conference_1927.jpg'], 320, 1e-3, 1e-5, 10)


def test_tensorrt(m500):
    shared, model = m500
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match='no CUDA device'): TensorRtRunner(shared/'data'/'models'/'det_500m.onnx')
        pytest.skip('TensorRT needs a CUDA device (none here): only its refusal is checked')
    try: det = Detector(TensorRtRunner(shared/'data'/'models'/'det_500m.onnx'), 'tensorrt')
    except BackendUnavailable as e: pytest.skip(str(e))
    same_faces(model, det, calib_images(shared/'data'/'images'), 640, 0.5, 5e-3)      # fp16 engine


@pytest.mark.slow
def test_torch_compile_parity(m500):
    "torch.compile (inductor, freezing) on the CPU: compiles once per input shape (minutes on 2 cores), same faces."
    shared, model = m500
    det = Detector(runner_for(model, 'torch-compile'), 'torch-compile')
    same_faces(model, det, [shared/'data'/'images'/'solvay_conference_1927.jpg'], 640, 1e-3, 1e-5, 29)


def test_ncnn_finds_the_same_faces(m500, tmp_path):
    "ncnn through pnnx, with ncnn's default options (fp16 where the CPU has it): PyTorch's faces on the photos found again (the benchmark's rule)."
    require_package('ncnn', 'pip install ncnn pnnx'); require_package('pnnx', 'pip install ncnn pnnx')
    from scrfd_nb.backends import NcnnRunner
    from scrfd_nb.export import export_ncnn
    from scrfd_nb.benchmark import photo_agreement
    shared, model = m500
    det = Detector(NcnnRunner(export_ncnn(model, tmp_path, 640), threads=1), 'ncnn')
    photos = calib_images(shared/'data'/'images')
    ref = [detect(model, str(p))[:2] for p in photos]
    got = [det.detect(str(p))[:2] for p in photos]
    recall, err, n = photo_agreement(ref, got)
    assert n > 30 and recall >= 0.98 and err < 2.0, (recall, err, n)


@pytest.mark.parametrize('backend', ['torch-fused', 'onnxruntime', 'openvino'])
def test_widerface_prediction_on_every_backend(m500, backend, tmp_path):
    "test_widerface --backend: the WIDER test path on each fp32 backend pairs every detection with PyTorch's (0.02 px, 1e-4)."
    from scrfd_nb.predict import list_images, predict_widerface, compare_preds
    if backend == 'openvino': require_package('openvino', 'pip install openvino nncf')
    shared, model = m500
    (tmp_path/'images'/'e').mkdir(parents=True)
    for p in calib_images(shared/'data'/'images'):
        (tmp_path/'images'/'e'/p.name).symlink_to(p)
    items = list_images(tmp_path/'images')
    f = shared/'data'/'models'/'det_500m.onnx'
    ref = predict_widerface(load_runner(f), items, mode=0, progress=False)
    got = predict_widerface(load_runner(f, backend=backend), items, mode=0, progress=False)
    c = compare_preds(ref, got, score_tol=1e-4)
    assert c['detections'] > 100 and c['unmatched'] == 0 and c['max_box_diff'] < 0.02 and c['max_score_diff'] < 1e-4, c


def test_detect_command_backend(m500, tmp_path, capsys):
    "`python -m scrfd_nb.detect --backend B`: the same faces as the default PyTorch path (1e-3 px, 1e-5); a bad name: one line, exit 2."
    import json
    from scrfd_nb.core import run_cli
    from scrfd_nb.detect import main
    d, _ = m500
    img, w = d/'data'/'images'/'solvay_conference_1927.jpg', d/'data'/'models'/'det_500m.onnx'
    out = {}
    for b in ('torch', 'onnxruntime', 'openvino'):
        if b == 'openvino': require_package('openvino', 'pip install openvino')
        main(['--weights', str(w), '--image', str(img), '--json', str(tmp_path/f'{b}.json'), '--backend', b])
        out[b] = json.loads((tmp_path/f'{b}.json').read_text())
    assert len(out['torch']) >= 20
    for b in ('onnxruntime', 'openvino'):
        assert len(out[b]) == len(out['torch'])
        for f, r in zip(out[b], out['torch']):
            np.testing.assert_allclose(f['box'], r['box'], atol=1e-3); np.testing.assert_allclose(f['score'], r['score'], atol=1e-5)
    capsys.readouterr()
    assert run_cli(main, ['--weights', str(w), '--image', str(img), '--backend', 'tensorrtx']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '--backend' in err[0] and 'tensorrtx' in err[0], err


def test_openvino_leaves_the_signal_stack(m500):
    "OpenVINO's compile replaces the calling thread's alternate signal stack with memory it may free (a later handled"
    " signal, e.g. SIGCHLD, then crashes the process): the runner puts the previous one back."
    require_package('openvino', 'pip install openvino')
    from scrfd_nb.backends import OpenVinoRunner
    from scrfd_nb.core import signal_stack
    d, _ = m500
    if signal_stack() is None: pytest.skip('no sigaltstack on this platform')
    before = signal_stack()
    r = OpenVinoRunner(d/'data'/'models'/'det_500m.onnx', 'f32')
    r(torch.zeros(1, 3, 64, 64))
    assert signal_stack() == before
