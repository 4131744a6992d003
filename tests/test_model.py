"""Model zoo checks too big for notebook prose: every golden config on both images, every official ONNX model against
the stored onnxruntime outputs and against onnxruntime itself at another input size, checkpoint formats."""
import numpy as np
import pytest
from conftest import require_package
import torch
from scrfd_nb.config import PRESETS, get_config
from scrfd_nb.core import bgr_to_input
from scrfd_nb.export import ExportWrapper, output_names
from scrfd_nb.model import build_model, load_reference_state_dict, load_model, save_model, load_onnx_model, LoadReport

GOLDEN = ['scrfd_500m_bnkps', 'scrfd_2.5g_bnkps', 'scrfd_10g_bnkps', 'scrfd_10g']
ONNX = {'det_500m': 'scrfd_500m_bnkps', 'det_2.5g': 'scrfd_2.5g_bnkps', 'scrfd_500m': 'scrfd_500m',
        'scrfd_2.5g': 'scrfd_2.5g'}
# spec table 2.6 (base_1g has no published count)
PARAMS = {'scrfd_500m': 572_741, 'scrfd_500m_bnkps': 631_410, 'scrfd_1g': 635_565, 'scrfd_2.5g': 671_761,
          'scrfd_2.5g_bnkps': 819_809, 'scrfd_10g': 3_860_225, 'scrfd_10g_bnkps': 4_229_905, 'scrfd_34g': 9_802_737,
          'base_500m': 378_829, 'base_2.5g': 1_624_709, 'base_10g': 6_851_069, 'base_34g': 24_814_189}


def _npz(p): 
    with np.load(p) as z: return {k: z[k] for k in z.files}


@pytest.mark.parametrize('name', list(PARAMS))
def test_param_counts(name):
    assert build_model(name).param_counts()['total'] == PARAMS[name]


@pytest.mark.parametrize('name', GOLDEN)
def test_golden_head_outputs(shared, name):
    g = shared / 'golden'
    m = build_model(name).eval()
    rep = load_reference_state_dict(m, _npz(g / f'{name}_state_dict.npz'))
    assert rep.ok
    x = bgr_to_input(torch.from_numpy(_npz(g / 'inputs_640.npz')['images_bgr_uint8'])).contiguous()   # NCHW, as the reference
    ref = _npz(g / f'{name}_head_outputs.npz')
    with torch.no_grad(): cls, bbox, kps = m(x)
    assert (kps is None) == (not m.use_kps)
    for i, s in enumerate((8, 16, 32)):
        np.testing.assert_allclose(cls[i].numpy(), ref[f'cls_score_s{s}'], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(bbox[i].numpy(), ref[f'bbox_pred_s{s}'], rtol=1e-4, atol=1e-4)
        if kps is not None: np.testing.assert_allclose(kps[i].numpy(), ref[f'kps_pred_s{s}'], rtol=1e-4, atol=1e-4)
    # round trip back to reference names
    back = {k: v.numpy() for k, v in m.state_dict().items()}
    sd = _npz(g / f'{name}_state_dict.npz')
    assert sorted(back) == sorted(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize('f', list(ONNX))
def test_onnx_stored_outputs(shared, f):
    m = load_onnx_model(shared / 'data' / 'models' / f'{f}.onnx')
    assert m.cfg.name == ONNX[f]
    x = torch.from_numpy(_npz(shared / 'data' / 'images' / 'solvay_conference_1927.input640.npz')['input'])
    ref = _npz(shared / 'data' / 'images' / f'solvay_conference_1927.{f}.outputs640.npz')
    with torch.no_grad(): outs = ExportWrapper(m, legacy=True)(x)   # the official files' 2-D layout
    ours = dict(zip(output_names(m.use_kps), outs))
    assert sorted(ours) == sorted(k for k in ref if k != 'onnx_output_names')
    for k, v in ours.items(): np.testing.assert_allclose(v.numpy(), ref[k], atol=1e-4, rtol=0, err_msg=k)


@pytest.mark.parametrize('f', ['det_500m', 'scrfd_2.5g'])
def test_onnx_matches_onnxruntime_other_size(shared, f):
    "A non-square size the stored outputs don't cover, run through onnxruntime itself."
    ort = require_package('onnxruntime', 'a dev requirement: pip install -e ".[dev]"')
    path = shared / 'data' / 'models' / f'{f}.onnx'
    so = ort.SessionOptions(); so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=['CPUExecutionProvider'])
    x = torch.from_numpy(np.random.RandomState(0).uniform(-1, 1, (1, 3, 224, 320)).astype(np.float32))
    theirs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    m = load_onnx_model(path)
    with torch.no_grad(): ours = list(ExportWrapper(m, legacy=True)(x))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs): np.testing.assert_allclose(a.numpy(), b.reshape(a.shape), atol=1e-4, rtol=0)


def test_load_model_formats(shared, tmp_path):
    sd = _npz(shared / 'golden' / 'scrfd_500m_bnkps_state_dict.npz')
    m = build_model('scrfd_500m_bnkps', lr=0.02)
    load_reference_state_dict(m, sd)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(): want = m.eval()(x)[0][0]
    # ours: config (with overrides) travels with the weights
    m2 = load_model(save_model(m, tmp_path / 'ours.pt', epoch=1))
    assert m2.cfg == m.cfg and m2.cfg.train.lr == 0.02
    # mmcv .pth with DDP prefix, variant inferred
    torch.save({'state_dict': {'module.' + k: torch.from_numpy(v) for k, v in sd.items()}, 'meta': {'epoch': 1}},
               tmp_path / 'ref.pth')
    # an .npz of reference arrays, variant given
    np.savez(tmp_path / 'ref.npz', **sd)
    for mm in (m2, load_model(tmp_path / 'ref.pth'), load_model(tmp_path / 'ref.npz', name='scrfd_500m_bnkps')):
        with torch.no_grad(): torch.testing.assert_close(mm(x)[0][0], want)
    with pytest.raises(RuntimeError, match='missing in the checkpoint'):
        load_model(tmp_path / 'ref.npz', name='scrfd_2.5g_bnkps')
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_model(tmp_path / 'nope.pth')


def test_strict_report_lists_keys():
    m = build_model('scrfd_500m')
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd.pop('bbox_head.scales.0.scale'); sd['bbox_head.extra'] = torch.zeros(1)
    sd['neck.fpn_convs.0.conv.bias'] = torch.zeros(3)
    rep = load_reference_state_dict(build_model('scrfd_500m'), sd, strict=False)
    assert rep.missing == ['bbox_head.scales.0.scale'] and rep.unexpected == ['bbox_head.extra']
    assert rep.mismatched == [('neck.fpn_convs.0.conv.bias', (3,), (16,))]
    with pytest.raises(RuntimeError, match='bbox_head.extra'):
        load_reference_state_dict(build_model('scrfd_500m'), sd)


def test_reference_init():
    torch.manual_seed(0)
    m = build_model('scrfd_10g_bnkps')
    h = m.bbox_head
    assert all(torch.all(c.bias == -4.595) for c in h.stride_cls.values())
    assert all(torch.all(c.bias == 0) for c in [*h.stride_reg.values(), *h.stride_kps.values()])
    w = torch.cat([c.weight.flatten() for c in h.stride_reg.values()])
    assert abs(w.std().item() - 0.01) < 1e-3
    assert all(s.scale.item() == 1.0 for s in h.scales)
    assert all(torch.all(b.bn2.weight == 0) for layer in (m.backbone.layer1, m.backbone.layer4) for b in layer)
    assert all(torch.all(c.conv.bias == 0) for c in m.neck.fpn_convs)
    # Xavier-uniform bound sqrt(6 / (fan_in + fan_out)) for the neck
    w = m.neck.fpn_convs[0].conv.weight
    assert w.abs().max() <= (6 / (2 * 56 * 9)) ** 0.5 + 1e-6 and w.abs().max() > 0.8 * (6 / (2 * 56 * 9)) ** 0.5


def test_train_mode_outputs_and_backward():
    "`model(x)` returns the same raw layout in train mode, and gradients reach every parameter."
    m = build_model('scrfd_500m_bnkps').train()
    cls, bbox, kps = m(torch.randn(2, 3, 96, 64))
    assert [tuple(t.shape) for t in cls] == [(2, 2, 12, 8), (2, 2, 6, 4), (2, 2, 3, 2)]
    (sum(t.sum() for t in cls) + sum(t.sum() for t in bbox) + sum(t.sum() for t in kps)).backward()
    assert all(p.grad is not None for p in m.parameters())
