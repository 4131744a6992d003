"""ONNX export: round trip through onnxruntime for every variant (fixed and dynamic shapes, batch 1 and 4), BatchNorm
folding, the legacy layout, the CLI, and insightface's own SCRFD class reading our exports (when it is installed)."""
import os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch
from torch import nn
from conftest import require_package, INSIGHTFACE_HINT
from scrfd_nb.detect import detect
from scrfd_nb.config import PRESETS
from scrfd_nb.model import build_model, load_model
from scrfd_nb.export import ExportWrapper, export_onnx, fuse_model, onnx_session, run_onnx, detect_onnx, output_names

ROOT = Path(__file__).resolve().parents[1]


def perturbed_model(name, seed=0):
    "A randomly initialised variant whose outputs are not trivial: noisy convs, cls bias 0, calibrated random BatchNorm."
    torch.manual_seed(seed)
    m = build_model(name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                if mod.weight.std() < 0.02: mod.weight.mul_(10)                # head predictors: normal(0, 0.01) init
                mod.weight.add_(torch.randn(mod.weight.shape, generator=g) * mod.weight.std() * 0.5)
                if mod.bias is not None: mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
            if isinstance(mod, nn.BatchNorm2d): mod.reset_running_stats(); mod.momentum = None
        m.train(); m(torch.randn(2, 3, 96, 96, generator=g))            # running stats = batch statistics
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.momentum = 0.1
                mod.weight.copy_(torch.rand(mod.num_features, generator=g) * 0.3 + 0.2)
                mod.bias.copy_(torch.randn(mod.num_features, generator=g) * 0.05)
    return m.eval()


def assert_same(onnx_outs, torch_outs, atol=1e-4):
    "Equal within `atol` (scores are in [0, 1]); for tensors with values beyond ±1, `atol` times their largest magnitude."
    assert len(onnx_outs) == len(torch_outs)
    for i, (a, r) in enumerate(zip(onnx_outs, torch_outs)):
        r = r.detach().numpy()
        assert a.shape == r.shape, (i, a.shape, r.shape)
        err, scale = float(np.abs(a - r).max()), max(1.0, float(np.abs(r).max()))
        assert err <= atol * scale, f'output {i}: max |onnxruntime - torch| {err:.3g} > {atol} x {scale:.3g}'


@pytest.mark.parametrize('name', list(PRESETS))
def test_round_trip(name, tmp_path):
    m = perturbed_model(name)
    fm = fuse_model(m)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in fm.modules())
    x1 = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    x4 = torch.randn(4, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        r1, r4 = ExportWrapper(fm)(x1), ExportWrapper(fm)(x4)           # the exported weights in PyTorch
        u1 = ExportWrapper(m)(x1)                                        # before folding: equal up to rounding
    assert float(r1[0].std()) > 1e-2                                     # scores are not trivial
    for a, b in zip(r1, u1):    # folding reorders float operations as another CPU's kernels would: the golden README (a)'s
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)   # whole-network tolerance between machines (measured 7e-6)
    # dynamic: one file, batch 1 and batch 4 at two input sizes
    dyn = export_onnx(fm, tmp_path/'dyn.onnx', shape=(64, 64), fuse=False)
    s = onnx_session(dyn)
    assert [o.name for o in s.get_outputs()] == output_names(m.use_kps)
    assert_same(run_onnx(s, x1), r1)
    assert_same(run_onnx(s, x4), r4)
    # fixed shape, batch 4
    fixed = export_onnx(fm, tmp_path/'fixed.onnx', shape=(64, 96), batch_size=4, dynamic=False, fuse=False)
    s = onnx_session(fixed)
    assert s.get_inputs()[0].shape == [4, 3, 64, 96]
    assert s.get_outputs()[0].shape == [4, 8 * 12 * 2, 1]
    assert_same(run_onnx(s, x4), r4)


def test_legacy_layout(tmp_path):
    m = perturbed_model('scrfd_500m_bnkps')
    p = export_onnx(m, tmp_path/'legacy.onnx', shape=(64, 64), legacy=True)
    s = onnx_session(p)
    assert [len(o.shape) for o in s.get_outputs()] == [2] * 9              # (rows, C): no batch axis
    assert s.get_inputs()[0].shape[0] == 1
    x = torch.randn(1, 3, 128, 96)
    raw = s.run(None, {'input.1': x.numpy()})
    assert raw[0].shape == (16 * 12 * 2, 1) and raw[6].shape == (16 * 12 * 2, 10)
    with torch.no_grad(): ref = ExportWrapper(m)(x)
    assert_same(run_onnx(s, x), ref)
    with pytest.raises(ValueError, match='batch_size must be 1'): export_onnx(m, tmp_path/'x.onnx', batch_size=2, legacy=True)


def test_fuse_keeps_model_and_handles_shared_convs():
    m = perturbed_model('scrfd_2.5g_bnkps')
    n_bn = sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    fm = fuse_model(m)
    assert sum(isinstance(x, nn.BatchNorm2d) for x in m.modules()) == n_bn > 0   # the original is untouched
    x = torch.randn(2, 3, 160, 224)
    with torch.no_grad(): a, b = m(x), fm(x)
    for u, v in zip([t for l in a for t in l], [t for l in b for t in l]):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)
    assert fm.cfg == m.cfg and fm.use_kps                                 # still an SCRFD, with its methods


def _img(name):
    import cv2
    from scrfd_nb.core import shared_file
    return cv2.imread(str(shared_file('data', 'images', name)))


@pytest.mark.parametrize('model_file', ['det_500m.onnx', 'det_2.5g.onnx', 'scrfd_500m.onnx'])
def test_official_weights_export_detect(model_file, tmp_path, shared):
    "Official weights → our model → our export → onnxruntime + the shared decoder: detect(model, image)'s faces."
    model = load_model(shared/'data'/'models'/model_file)
    p = export_onnx(model, tmp_path/'m.onnx', shape=(320, 320))
    img = _img('solvay_conference_1927.jpg')
    b, s, k = detect_onnx(p, img)
    rb, rs, rk = detect(model, img)
    assert len(b) == len(rb) == 29                                        # every model finds the 29 people
    np.testing.assert_allclose(b, rb, atol=1e-3)
    np.testing.assert_allclose(s, rs, atol=1e-5)
    if rk is not None: np.testing.assert_allclose(k, rk, atol=1e-3)


def _insightface_scrfd():
    return require_package('insightface.model_zoo.scrfd', INSIGHTFACE_HINT).SCRFD


def _same_dets(det, kpss, boxes, scores, kps, box_tol=1e-3):
    assert len(det) == len(boxes) > 0
    np.testing.assert_allclose(det[:, :4], boxes, atol=box_tol)
    np.testing.assert_allclose(det[:, 4], scores, atol=1e-5)
    if kps is not None: np.testing.assert_allclose(kpss, kps, atol=box_tol)


@pytest.mark.parametrize('model_file,legacy', [('det_500m.onnx', False), ('det_2.5g.onnx', False), ('det_2.5g.onnx', True)],
                         ids=['det_500m-batched', 'det_2.5g-batched', 'det_2.5g-legacy'])
def test_insightface_reads_our_export(model_file, legacy, tmp_path, shared):
    "insightface 2.1's SCRFD class on our export of the official keypoint weights = detect(model, image) on a real photo."
    SCRFD = _insightface_scrfd()
    model = load_model(shared/'data'/'models'/model_file)
    p = export_onnx(model, tmp_path/'ours.onnx', shape=(640, 640), legacy=legacy)
    det = SCRFD(model_file=str(p))
    det.prepare(-1, input_size=(640, 640), det_thresh=0.5, nms_thresh=0.4)
    assert det.use_kps and det.batched == (not legacy)
    img = _img('0_Parade_marchingband_1_20.jpg')
    d, k = det.detect(img, input_size=(640, 640))
    _same_dets(d, k, *detect(model, img))


def test_insightface_random_10g_bnkps(tmp_path):
    "A keypoint variant without official weights: random weights, a threshold in a gap of the scores; same detections."
    SCRFD = _insightface_scrfd()
    import cv2
    from scrfd_nb.core import shared_dir
    d = shared_dir(required=False)
    img = cv2.imread(str(d/'data'/'images'/'astronaut.png')) if d else np.random.default_rng(0).integers(0, 255, (480, 512, 3), np.uint8)
    model = perturbed_model('scrfd_10g_bnkps')
    p = export_onnx(model, tmp_path/'r.onnx', shape=(64, 64))
    _, scores, _ = detect(model, img, score_thr=0.0, nms_thr=1.1, input_size=320)   # every candidate: pick a threshold
    s = np.sort(scores)[::-1][:200]
    gaps = np.flatnonzero(s[:-1] - s[1:] > 1e-3)
    thr = float((s[gaps[0]] + s[gaps[0] + 1]) / 2) if len(gaps) else float(s[-1]) - 1e-3
    det = SCRFD(model_file=str(p))
    det.prepare(-1, input_size=(320, 320), det_thresh=thr, nms_thresh=0.4)
    dd, kk = det.detect(img, input_size=(320, 320))
    _same_dets(dd, kk, *detect(model, img, score_thr=thr, input_size=320))


def test_cli(tmp_path):
    out = tmp_path/'cli.onnx'
    r = subprocess.run([sys.executable, '-m', 'scrfd_nb.export', '--config', 'scrfd_500m', '--out', str(out),
                        '--shape', '128', '160', '--batch-size', '2'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert 'onnxruntime vs PyTorch: max |diff|' in r.stdout
    s = onnx_session(out)
    assert s.get_inputs()[0].shape == [2, 3, 128, 160] and s.get_inputs()[0].name == 'input.1'
    from scrfd_nb.export import main
    with pytest.raises(SystemExit) as e: main(['--weights', str(tmp_path/'nope.pth')])
    assert e.value.code == 2


def test_simplify_without_onnxsim(tmp_path, monkeypatch):
    "Without onnxsim (made unimportable here, so the test runs where it is installed, as in CI): a clear ImportError."
    monkeypatch.setitem(sys.modules, 'onnxsim', None)   # Python's way to make `import onnxsim` raise ImportError
    with pytest.raises(ImportError, match='pip install onnxsim'):
        export_onnx(build_model('scrfd_500m'), tmp_path/'s.onnx', shape=(64, 64), simplify=True)



def _gn_perturbed(name):
    "A random variant with non-trivial outputs, cheaper than perturbed_model: head predictors x10, random GroupNorm affine."
    torch.manual_seed(0)
    m = build_model(name).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d) and mod.weight.std() < 0.02:      # predictors: N(0, 0.01), cls bias -4.6
                mod.weight.mul_(10)
                if mod.bias is not None: mod.bias.zero_()
            if isinstance(mod, nn.GroupNorm):
                mod.weight.copy_(torch.rand(mod.num_channels, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_channels, generator=g) * 0.1)
    return m


def _gn_calls(m, x):
    n = [0]
    hooks = [mod.register_forward_hook(lambda *a: n.__setitem__(0, n[0] + 1)) for mod in m.modules() if isinstance(mod, nn.GroupNorm)]
    with torch.no_grad(): m(x)
    for h in hooks: h.remove()
    return n[0]


GN_CASES = [(n, 'decompose') for n in ['scrfd_500m', 'scrfd_1g', 'scrfd_2.5g', 'scrfd_10g', 'scrfd_34g']] + \
           [(n, 'native') for n in ['scrfd_500m', 'scrfd_2.5g']]


@pytest.mark.parametrize('name,mode', GN_CASES)
def test_groupnorm_export(name, mode, tmp_path):
    """No InstanceNormalization: one GroupNormalization (opset 21) or one Sqrt per GroupNorm call; checker + strict shape
    inference on the dynamic file (and, for scrfd_500m, a fixed simplified file whose every value has a static shape);
    onnxruntime = PyTorch at two shapes and batches. (10g/34g: decompose only, each export takes 10 s on a busy CPU.)"""
    from scrfd_nb.export import check_graph
    m = _gn_perturbed(name)
    x1 = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    x3 = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    n_calls = _gn_calls(m, x1)
    assert n_calls >= 2
    opset = 21 if mode == 'native' else 11
    want = {'native': (0, n_calls, 0), 'decompose': (0, 0, n_calls)}[mode]
    count = lambda ops: (ops.get('InstanceNormalization', 0), ops.get('GroupNormalization', 0), ops.get('Sqrt', 0))
    with torch.no_grad(): r1, r3 = ExportWrapper(m)(x1), ExportWrapper(m)(x3)
    assert float(r1[0].std()) > 1e-2                                     # scores are not trivial
    dyn = export_onnx(m, tmp_path/'dyn.onnx', shape=(64, 64), opset=opset, groupnorm=mode)
    assert count(check_graph(dyn)) == want
    s = onnx_session(dyn)
    assert_same(run_onnx(s, x1), r1)
    assert_same(run_onnx(s, x3), r3)
    if name == 'scrfd_500m':
        fixed = export_onnx(m, tmp_path/'fixed.onnx', shape=(96, 128), dynamic=False, opset=opset, groupnorm=mode,
                            simplify=True)
        assert count(check_graph(fixed, static=True)) == want
        assert_same(run_onnx(fixed, x1), r1)
        # the default export is the InstanceNormalization pattern, and is not all-static even when fixed
        default = export_onnx(m, tmp_path/'d.onnx', shape=(96, 128), dynamic=False)
        assert count(check_graph(default)) == (n_calls, 0, 0)
        with pytest.raises(ValueError, match='without a static shape'): check_graph(default, static=True)


def test_groupnorm_official_weights(shared, tmp_path):
    "The official scrfd_500m.onnx (InstanceNormalization inside) re-exported both ways: detect(model, image)'s 29 faces."
    from scrfd_nb.export import check_graph
    model = load_model(shared/'data'/'models'/'scrfd_500m.onnx')
    img = _img('solvay_conference_1927.jpg')
    rb, rs, _ = detect(model, img)
    assert len(rb) == 29
    for mode, opset in [('native', 21), ('decompose', 11)]:
        p = export_onnx(model, tmp_path/f'{mode}.onnx', shape=(320, 320), opset=opset, groupnorm=mode)
        assert 'InstanceNormalization' not in check_graph(p)
        b, s, _ = detect_onnx(p, img)
        np.testing.assert_allclose(b, rb, atol=1e-3)
        np.testing.assert_allclose(s, rs, atol=1e-5)


@pytest.fixture(scope='module')
def d500_fp32(tmp_path_factory):
    from conftest import require_shared
    model = load_model(require_shared()/'data'/'models'/'det_500m.onnx')
    d = tmp_path_factory.mktemp('d500')
    return model, export_onnx(model, d/'fp32.onnx', shape=(320, 320), dynamic=False), d


def test_fp16_export(d500_fp32):
    "Float16 inside, fp32 interface kept; scores within 5e-3, boxes within 0.05 stride units; the same faces."
    from scrfd_nb.export import to_fp16, check_graph
    import onnx
    model, p32, d = d500_fp32
    p16 = to_fp16(p32, d/'fp16.onnx')
    ops = check_graph(p16)
    g = onnx.load(str(p16))
    assert sum(i.data_type == onnx.TensorProto.FLOAT16 for i in g.graph.initializer) > 50
    assert not any(i.data_type == onnx.TensorProto.FLOAT and i.dims and np.prod(i.dims) > 16 for i in g.graph.initializer
                   if 'Resize' not in i.name)                         # every conv weight is fp16
    assert ops['Cast'] >= 10                                          # input + 9 outputs at least
    s16, s32 = onnx_session(p16), onnx_session(p32)
    assert [(i.name, i.type) for i in s16.get_inputs() + s16.get_outputs()] == \
           [(i.name, i.type) for i in s32.get_inputs() + s32.get_outputs()]
    img = _img('solvay_conference_1927.jpg')
    from scrfd_nb.detect import preprocess
    x = preprocess([img], 320)[0]
    o32, o16 = run_onnx(s32, x), run_onnx(s16, x)
    assert max(float(np.abs(a - b).max()) for a, b in zip(o32[:3], o16[:3])) < 5e-3
    assert max(float(np.abs(a - b).max()) for a, b in zip(o32[3:], o16[3:])) < 5e-2
    b32, _, _ = detect_onnx(s32, img, input_size=320)
    b16, _, _ = detect_onnx(s16, img, input_size=320)
    assert len(b16) == len(b32) > 10
    np.testing.assert_allclose(b16, b32, atol=1.5)


def test_int8_export_and_cli(d500_fp32, tmp_path, shared):
    "QDQ int8 calibrated on the reference photos: Q/DQ around every conv, fp32 interface, >= 80 % of the fp32 faces."
    from scrfd_nb.export import quantize_int8, check_graph, main
    model, p32, d = d500_fp32
    p8 = quantize_int8(p32, d/'int8.onnx', shared/'data'/'images', input_size=320)
    ops = check_graph(p8)
    assert ops['DequantizeLinear'] >= ops['Conv'] >= 50 and ops['QuantizeLinear'] >= ops['Conv']
    img = _img('solvay_conference_1927.jpg')
    b32, _, _ = detect_onnx(p32, img, input_size=320)
    b8, _, _ = detect_onnx(p8, img, input_size=320)
    from scrfd_nb.boxes import box_iou
    iou = box_iou(torch.as_tensor(b32), torch.as_tensor(b8)).numpy() if len(b8) else np.zeros((len(b32), 0))
    assert (iou.max(1) >= 0.5).mean() >= 0.8, (len(b32), len(b8))
    # the CLI: --int8 without --calib, a --calib folder without images, then a real run
    from scrfd_nb.core import run_cli
    import contextlib, io
    for argv, msg in [(['--int8'], 'needs --calib'), (['--int8', '--calib', str(tmp_path)], 'no calibration images'),
                      (['--calib', str(tmp_path)], 'only used with --int8'), (['--fp16', '--int8', '--calib', '.'], 'exclusive')]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert run_cli(main, ['--config', 'scrfd_500m', '--out', str(tmp_path/'x.onnx'), *argv]) == 2
        assert msg in err.getvalue(), err.getvalue()
    assert not (tmp_path/'x.onnx').exists()
    r = subprocess.run([sys.executable, '-m', 'scrfd_nb.export', '--config', 'scrfd_500m_bnkps', '--shape', '128', '128',
                        '--int8', '--calib', str(shared/'data'/'images'), '--out', str(tmp_path/'q.onnx')],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert 'int8 QDQ' in r.stdout and 'QuantizeLinear' in check_graph(tmp_path/'q.onnx')


def test_simplify_keeps_parity(tmp_path):
    "onnx-simplifier on a dynamic keypoint model: no Shape chains left that a fixed graph folds, same outputs."
    require_package('onnxsim', 'pip install onnxsim (a dev requirement)')
    from scrfd_nb.export import check_graph
    m = perturbed_model('scrfd_500m_bnkps')
    x = torch.randn(2, 3, 96, 160, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(): ref = ExportWrapper(m)(x)
    plain = check_graph(export_onnx(m, tmp_path/'p.onnx', shape=(96, 160), dynamic=False))
    p = export_onnx(m, tmp_path/'s.onnx', shape=(96, 160), batch_size=2, dynamic=False, simplify=True)
    ops = check_graph(p, static=True)
    assert 'Shape' in plain and 'Shape' not in ops and sum(ops.values()) < sum(plain.values())
    assert_same(run_onnx(p, x), ref)
    pd = export_onnx(m, tmp_path/'sd.onnx', shape=(96, 160), simplify=True)
    assert_same(run_onnx(pd, x), ref)
