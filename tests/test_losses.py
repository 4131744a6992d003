"""Targets and losses against the reference on real networks (640x640 forward + backward), and DDP normalisation
with two gloo processes. Too heavy for notebook prose; `nbs/09_assign.ipynb` and `nbs/10_losses.ipynb` hold the rest."""
import os, subprocess, sys, textwrap
from pathlib import Path
import numpy as np
import pytest
import torch
from scrfd_nb.anchors import grid_anchors, feat_sizes_for
from scrfd_nb.assign import atss_assign, assigned_labels
from scrfd_nb.losses import build_targets, compute_loss, model_loss, pad_targets
from scrfd_nb.config import SCRFDConfig
from scrfd_nb.model import build_model, load_reference_state_dict
from scrfd_nb.core import bgr_to_input

ROOT = Path(__file__).resolve().parents[1]
LOSS_KEYS = ('loss_cls', 'loss_bbox', 'loss_kps')


def _npz(p):
    with np.load(p) as z: return {k: z[k] for k in z.files}


def test_atss_all_golden_cases(shared):
    "All 10 reference cases: assigned_gt_inds, max_overlaps (bit for bit) and labels exact."
    g = _npz(shared / 'golden' / 'atss_assigner_cases.npz')
    anchors = torch.cat(grid_anchors(feat_sizes_for(640, 640)))
    assert torch.equal(anchors, torch.from_numpy(g['anchors']))
    for i in range(int(g['num_cases'])):
        inds, mo = atss_assign(anchors, [12800, 3200, 800], torch.from_numpy(g[f'case{i}_gt_bboxes']),
                               gt_bboxes_ignore=torch.from_numpy(g[f'case{i}_gt_bboxes_ignore']),
                               ignore_iof_thr=float(g[f'case{i}_ignore_iof_thr']))
        np.testing.assert_array_equal(inds.numpy(), g[f'case{i}_assigned_gt_inds'], err_msg=f'case {i}')
        np.testing.assert_array_equal(mo.numpy(), g[f'case{i}_max_overlaps'], err_msg=f'case {i}')
        if not g[f'case{i}_assigned_labels_is_none']:
            lab = assigned_labels(inds, torch.from_numpy(g[f'case{i}_gt_labels']))
            np.testing.assert_array_equal(lab.numpy(), g[f'case{i}_assigned_labels'], err_msg=f'case {i}')


# Tolerances (golden README; measured here over 1-4 threads in brackets):
# - per-level losses and weight sums: rtol 1e-5, the README's loss-scalar tolerance (3e-7; 8.7e-6 on the 0.0024 s32
#   cls loss with 1 thread, inside atol 1e-7 = float32 resolution of an O(1) loss);
# - global gradient norm: rtol 1e-4, the README (h) check; the reference's own 1- vs 2-thread runs differ by 5e-5 (1e-5);
# - per-parameter gradient norms: rtol 1e-4 + 1e-6 x the global norm (tensors carrying a millionth of the gradient are
#   held to that) (2e-5 beyond the first layers), except the stem and layer1, where README (h) measured the reference
#   disagreeing with itself by up to 4e-3 (stem BN weight) between 1 and 2 threads: rtol 5e-3 there (8.4e-5 here; an
#   earlier machine showed 1.4e-3 on the 10g stem, and float32 vs float64 differs by 1e-3 (10g) to 3e-2 (500m) there).
LOSS_RTOL, LOSS_ATOL, GLOBAL_GRAD_RTOL, GRAD_RTOL, GRAD_ATOL_OF_GLOBAL, EARLY_GRAD_RTOL = 1e-5, 1e-7, 1e-4, 1e-4, 1e-6, 5e-3


def _grad_rtol(name):
    return EARLY_GRAD_RTOL if name.startswith(('backbone.stem', 'backbone.layer1')) else GRAD_RTOL


@pytest.mark.parametrize('run,cfg', [('scrfd_10g_bnkps', 'scrfd_10g_bnkps'), ('scrfd_500m_bnkps', 'scrfd_500m_bnkps'),
                                     ('scrfd_500m_bnkps_small_faces', 'scrfd_500m_bnkps')])
def test_golden_losses_targets_gradients(shared, run, cfg):
    g = shared / 'golden'
    z = _npz(g / f'loss_{run}.npz')
    model = build_model(cfg)
    assert load_reference_state_dict(model, _npz(g / f'{cfg}_state_dict.npz')).ok
    model.train()
    x = bgr_to_input(torch.from_numpy(_npz(g / 'inputs_640.npz')['images_bgr_uint8'])).contiguous()   # NCHW, as the reference
    gbl = [z[f'img{i}_gt_bboxes'] for i in range(2)]
    gkl = [z[f'img{i}_gt_keypointss'] for i in range(2)]
    res = model_loss(model, x, gbl, gkl, [z[f'img{i}_gt_bboxes_ignore'] for i in range(2)])
    # per-level losses
    for k in ('cls', 'bbox', 'kps'):
        ref = z[f'loss_{k}_per_level']
        np.testing.assert_allclose(res[f'loss_{k}_per_level'].detach().numpy(), ref, rtol=LOSS_RTOL, atol=LOSS_ATOL, err_msg=k)
    assert float(res['avg_factor_cls']) == float(z['num_total_samples'])
    np.testing.assert_allclose(res['weight_sum_per_level'].numpy(),
                               [float(z[f'targets_s{s}_weight_targets_sum']) for s in (8, 16, 32)], rtol=LOSS_RTOL, atol=LOSS_ATOL)
    # targets
    gb, gk, gm = pad_targets(gbl, gkl)
    t = build_targets(grid_anchors(feat_sizes_for(640, 640)), gb, gk, gm)
    start = 0
    for s, n in zip((8, 16, 32), (12800, 3200, 800)):
        sl = slice(start, start + n); start += n
        fg = t['fg_mask'][:, sl]
        np.testing.assert_array_equal(np.where(fg, 0, 1), z[f'targets_s{s}_labels'])
        np.testing.assert_array_equal(np.ones(fg.shape, np.float32), z[f'targets_s{s}_label_weights'])
        pos = fg.reshape(-1).nonzero()[:, 0]
        np.testing.assert_array_equal(pos.numpy(), z[f'targets_s{s}_pos_inds_flat'])
        np.testing.assert_array_equal(t['bbox_targets'][:, sl].reshape(-1, 4)[pos].numpy(), z[f'targets_s{s}_pos_bbox_targets'])
        np.testing.assert_array_equal(t['kps_targets'][:, sl].reshape(-1, 10)[pos].numpy(), z[f'targets_s{s}_pos_kps_targets'])
        np.testing.assert_array_equal(t['kps_weights'][:, sl].reshape(-1)[pos, None].expand(-1, 10).numpy(),
                                      z[f'targets_s{s}_pos_kps_weights'])
        assert int(res['num_pos_per_level'][(8, 16, 32).index(s)]) == len(pos)
    # gradients
    sum(res[k] for k in LOSS_KEYS).backward()
    params = dict(model.named_parameters())
    assert set(params) == set(z['grad_norm_names'])
    got = {n: p.grad.double().norm().item() if p.grad is not None else 0.0 for n, p in params.items()}
    ref_global = float(np.sqrt((z['grad_norm_values'] ** 2).sum()))
    np.testing.assert_allclose(float(np.sqrt(sum(v ** 2 for v in got.values()))), ref_global, rtol=GLOBAL_GRAD_RTOL)
    bad = []
    for name, ref in zip(z['grad_norm_names'], z['grad_norm_values']):
        if not np.isclose(got[name], ref, rtol=_grad_rtol(name), atol=GRAD_ATOL_OF_GLOBAL * ref_global): bad.append((name, got[name], ref))
    assert not bad, f'{len(bad)} gradient norms differ: {bad[:5]}'
    # element-wise gradients of the head (stored for parameters with <= 20000 elements): nearest to the loss, so
    # they check the loss gradient itself rather than float32 noise accumulated through the backbone
    for k, ref in z.items():
        if k.startswith('grad__bbox_head.'):
            np.testing.assert_allclose(params[k[6:]].grad.numpy(), ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max() + 1e-9, err_msg=k)


def test_model_without_keypoints_has_no_kps_loss():
    torch.manual_seed(0)
    m = build_model('scrfd_500m').train()
    res = model_loss(m, torch.randn(2, 3, 96, 96), [np.array([[10., 10, 50, 60]]), np.zeros((0, 4))], None)
    assert 'loss_kps' not in res and 'loss_kps_per_level' not in res
    assert all(torch.isfinite(res[k]) for k in ('loss_cls', 'loss_bbox')) and int(res['num_pos']) > 0


# ---------------------------------------------------------------------------------------------------------------
# DDP: two gloo processes holding halves of a batch give the gradients of one process holding the whole batch.
# BatchNorm is put in eval mode (running statistics): with batch statistics, each process normalises over its own
# half, which legitimately changes the gradients (the reference uses per-GPU BN too); this test isolates the loss
# normalisation (N_pos and W averaged across processes) and DDP's gradient averaging.

SIZE, B = 160, 4
FACES = [[[20., 30, 60, 80]], [], [[5., 5, 15, 17], [70, 40, 150, 140], [100, 10, 130, 45]], [[40., 60, 72, 100], [90, 90, 110, 118]]]


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 3, SIZE, SIZE, generator=g)
    boxes = [np.array(f, np.float32).reshape(-1, 4) for f in FACES]
    kps = []
    for b in boxes:
        k = np.zeros((len(b), 5, 3), np.float32)
        if len(b):
            k[..., :2] = b[:, None, :2] + (b[:, None, 2:] - b[:, None, :2]) * torch.rand(len(b), 5, 2, generator=g).numpy()
            k[..., 2] = 1.0
        kps.append(k)
    if len(kps[2]): kps[2][0, 3:, 2] = 0.0              # a face with 2 invisible landmarks
    return x, boxes, kps


def _model(state_dict_path):
    m = build_model('scrfd_500m_bnkps')
    load_reference_state_dict(m, _npz(state_dict_path))
    return m.eval()


WORKER = textwrap.dedent('''
    import os, sys, numpy as np, torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[4])
    import test_losses as T
    from scrfd_nb.losses import model_loss
    rank, world, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    m = T._model(sys.argv[5])
    ddp = torch.nn.parallel.DistributedDataParallel(m, broadcast_buffers=False)
    x, boxes, kps = T._batch()
    per = T.B // world
    sl = slice(rank * per, (rank + 1) * per)
    class Fwd(torch.nn.Module):           # model_loss calls model(images); route it through DDP
        def __init__(s): super().__init__(); s.strides, s.use_kps, s.cfg = m.strides, m.use_kps, m.cfg
        def forward(s, x): return ddp(x)
    res = model_loss(Fwd(), x[sl], boxes[sl], kps[sl])
    sum(res[k] for k in T.LOSS_KEYS).backward()
    np.savez(out, **{n: p.grad.numpy() for n, p in m.named_parameters()},
             **{'__' + k: res[k].detach().numpy() for k in ('avg_factor_cls', 'avg_factor_bbox', 'num_pos')})
    dist.destroy_process_group()
''')


def _grads(model, x, boxes, kps):
    model.zero_grad()
    res = model_loss(model, x, boxes, kps)
    sum(res[k] for k in LOSS_KEYS).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, res


def test_ddp_two_processes_equal_one_process(shared, tmp_path):
    from scrfd_nb.runtime import free_port
    sd = shared / 'golden' / 'scrfd_500m_bnkps_state_dict.npz'
    script = tmp_path / 'worker.py'; script.write_text(WORKER)
    env = dict(os.environ, MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()), OMP_NUM_THREADS='1')
    procs = [subprocess.Popen([sys.executable, str(script), str(r), '2', str(tmp_path / f'g{r}.npz'),
                               str(Path(__file__).parent), str(sd)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), '\n'.join(outs)
    g = [_npz(tmp_path / f'g{r}.npz') for r in range(2)]

    x, boxes, kps = _batch()
    m = _model(sd)
    full, res = _grads(m, x, boxes, kps)
    # the normalisers every process used are the whole batch's (mean over processes of the local values)
    assert int(g[0]['__num_pos']) != int(g[1]['__num_pos'])                 # the halves differ: a real test
    for r in range(2):
        np.testing.assert_allclose(g[r]['__avg_factor_cls'], float(res['avg_factor_cls']) / 2, rtol=1e-6)
        np.testing.assert_allclose(g[r]['__avg_factor_bbox'], float(res['avg_factor_bbox']) / 2, rtol=1e-5)
    for n, ref in full.items():
        ref = ref.numpy(); tol = 1e-4 * np.abs(ref).max() + 1e-8
        np.testing.assert_allclose(g[0][n], ref, rtol=1e-4, atol=tol, err_msg=n)
        np.testing.assert_allclose(g[1][n], g[0][n], rtol=0, atol=0, err_msg=n)      # DDP: identical on both ranks
    # negative control: normalising each half by its own N_pos / W (no all-reduce) gives different gradients
    h0, _ = _grads(m, x[:2], boxes[:2], kps[:2]); h1, _ = _grads(m, x[2:], boxes[2:], kps[2:])
    name = 'bbox_head.stride_reg.(8, 8).weight'
    local = ((h0[name] + h1[name]) / 2).numpy()
    assert np.abs(local - full[name].numpy()).max() > 100 * (1e-4 * np.abs(full[name].numpy()).max())


def test_rectangular_input_grid_path_equals_generic_anchors():
    "compute_loss builds its anchors (separable grid distances); passing the same anchors explicitly (generic path) agrees."
    torch.manual_seed(0)
    fs = feat_sizes_for(96, 160); B = 2
    outs = ([torch.randn(B, 2, h, w) - 2 for h, w in fs], [torch.rand(B, 8, h, w) * 3 for h, w in fs],
            [torch.randn(B, 20, h, w) for h, w in fs])
    rng = np.random.default_rng(0)
    gb, gk, gm = pad_targets([np.array([[10., 12, 40, 50], [100, 20, 150, 90]]), np.array([[60., 30, 90, 70]])],
                             [rng.random((2, 5, 3)) * 90, rng.random((1, 5, 3)) * 90])
    cfg = SCRFDConfig()   # the default head (strides 8/16/32, the anchors of grid_anchors' defaults) and loss weights
    r1 = compute_loss(outs, gb, gk, gm, cfg)
    r2 = compute_loss(outs, gb, gk, gm, cfg, anchors=grid_anchors(fs))
    assert int(r1['num_pos']) == int(r2['num_pos']) > 0
    for k in LOSS_KEYS: assert torch.equal(r1[k], r2[k]), k
    r0 = compute_loss(outs, torch.zeros(B, 0, 4), torch.zeros(B, 0, 5, 3), torch.zeros(B, 0, dtype=torch.bool), cfg)
    assert r0['loss_bbox'].item() == 0 and r0['loss_kps'].item() == 0 and torch.isfinite(r0['loss_cls'])


def test_losses_need_a_configuration():
    "No silent module defaults: without a configuration (or a model that carries one) the losses refuse to run."
    fs = feat_sizes_for(64, 64)
    outs = ([torch.zeros(1, 2, h, w) for h, w in fs], [torch.zeros(1, 8, h, w) for h, w in fs], None)
    gb, gk, gm = pad_targets([np.array([[10., 12, 40, 50]])])
    with pytest.raises(TypeError, match="needs the run's SCRFDConfig"): compute_loss(outs, gb, None, gm, None)
    with pytest.raises(TypeError, match='missing 1 required positional argument'): compute_loss(outs, gb, None, gm)
    class NoCfg(torch.nn.Module):
        def forward(self, x): return outs
    with pytest.raises(TypeError, match='model.cfg'): model_loss(NoCfg(), torch.zeros(1, 3, 64, 64), [gb[0]])
    assert torch.isfinite(compute_loss(outs, gb, None, gm, 'scrfd_500m')['loss_cls'])   # a preset name is a configuration
