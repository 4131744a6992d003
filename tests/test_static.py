"""Issue 27: static shapes and the whole training step as one compiled graph.

- padding the faces to a fixed count changes no value: the golden batches' losses, targets (candidates, positive
  slots, assigned faces, IoUs) and every gradient are bit-identical at the batch maximum and at larger caps;
- the fixed-shape path of the assigner (no `nonzero` inside a compiled graph) gives the same targets as the eager one;
- an epoch of real training batches (different face counts, padded to the cap, the last batch filled) at an lr
  that changes every step runs through the trainer's `train_step` on a `WholeStep`: forward, targets and losses as
  one `torch.compile(fullgraph=True, dynamic=False)` graph and the SGD update as another, no graph break and no
  recompilation after the first step (torch's own counters, and `set_stance('fail_on_recompile')`), with the eager
  step's losses and gradients;
- the compiled SGD update gives eager SGD's weights (`runtime.make_sgd`, the trainer's) over a warmup and an lr step,
  to a bound on float32 rounding derived step by step (not a fitted tolerance);
- ignore boxes padded to a fixed count with a mask (`collate(pad_ignore_to=)`) give the same targets as the
  per-image lists, even to an assigner that reads them (`ignore_iof_thr > 0`), and the count from `face_cap` is never
  exceeded;
- the NPU path (the mocked torch_npu and torchair, as notebook 16 mocks the NPU): `--compile-step` builds the
  `WholeStep` on torchair's backend and `train_step` runs both compiled graphs there; a model of several classes
  reads its `gt_labels` in the compiled step; torch_npu's `NpuFusedSGD` steps eagerly;
- the over-cap policy: `ignore` keeps the largest faces and makes the others ignore boxes (counted), `refuse` stops
  before training with one line naming the image (exit 2), a cap < 1 is a usage error.

The compiled tests use the `aot_eager` backend: the same dynamo capture and AOTAutograd forward/backward graphs as
`inductor`, without its code generation (minutes on 2 cores; `bench/static_step.py` measures inductor)."""
import subprocess, sys, types
from functools import partial
from pathlib import Path
import numpy as np
import pytest
import torch
from scrfd_nb.core import bgr_to_input
from scrfd_nb.model import build_model, load_reference_state_dict
from scrfd_nb.losses import build_targets, compute_loss, pad_targets
from scrfd_nb.anchors import grid_anchors, feat_sizes_for
from scrfd_nb.assign import atss_assign_batched
from scrfd_nb.data import WiderFaceDataset, build_loader, collate
from scrfd_nb.static import WholeStep, CompiledSGD, compile_counters, face_cap, static_shapes_on, STEP_INPUTS
from scrfd_nb.train import compute_losses, train_step, wrap_model, RunConfig, LOSS_KEYS
from scrfd_nb.config import get_config
from scrfd_nb.runtime import Runtime, make_sgd

ROOT = Path(__file__).resolve().parents[1]
TARGET_KEYS = ('assigned_gt_idx', 'fg_mask', 'max_overlaps', 'slot_level')   # (B, A) / (K,): shapes independent of the cap


def _npz(p): return dict(np.load(p))


@pytest.mark.parametrize('run', ['scrfd_500m_bnkps', 'scrfd_500m_bnkps_small_faces'])
def test_padding_changes_no_value_on_golden_batches(shared, run):
    "Losses, targets and the gradients of every parameter and head output: equal bit for bit, whatever the cap."
    g = shared / 'golden'
    z = _npz(g / f'loss_{run}.npz')
    model = build_model('scrfd_500m_bnkps')
    assert load_reference_state_dict(model, _npz(g / 'scrfd_500m_bnkps_state_dict.npz')).ok
    model.train()
    x = bgr_to_input(torch.from_numpy(_npz(g / 'inputs_640.npz')['images_bgr_uint8'])).contiguous()
    gbl, gkl = [z[f'img{i}_gt_bboxes'] for i in range(2)], [z[f'img{i}_gt_keypointss'] for i in range(2)]
    outs = model(x)
    leaves = [t for o in outs for t in o] + list(model.parameters())
    anchors = grid_anchors(feat_sizes_for(640, 640))
    G = max(len(b) for b in gbl)
    res = {}
    for cap in (None, G + 1, 64, 300):
        gb, gk, gm = pad_targets(gbl, gkl, pad_to=cap)
        l = compute_loss(outs, gb, gk, gm, model.cfg, use_kps=True)
        grads = torch.autograd.grad(sum(l[k] for k in LOSS_KEYS), leaves, retain_graph=True)
        res[cap] = l, grads, build_targets(anchors, gb, gk, gm), gm
    l0, g0, t0, m0 = res[None]
    np.testing.assert_allclose(l0['loss_cls_per_level'].detach().numpy(), z['loss_cls_per_level'], rtol=1e-5)  # the golden batch indeed
    for cap, (l, gr, t, m) in res.items():
        for k, v in l0.items():
            if torch.is_tensor(v): assert torch.equal(l[k], v), (cap, k)
        assert all(torch.equal(a, b) for a, b in zip(gr, g0)), cap
        for k in TARGET_KEYS: assert torch.equal(t[k], t0[k]), (cap, k)
        assert torch.equal(t['candidates'][:, :G][m0], t0['candidates'][m0]), cap     # real faces: the same candidates
        assert torch.equal(t['pos_slots'][:, :G], t0['pos_slots']), cap                # ... and the same positive slots
        assert not t['pos_slots'][:, G:].any(), cap                                    # padded rows never positive


def test_compiled_assigner_gives_the_same_targets():
    "Inside a compiled graph the assigner ranks every row and overwrites the padded ones: the eager (compacting) result."
    g = torch.Generator().manual_seed(0)
    n = [3, 0, 7, 1]
    boxes = [torch.cat([xy := torch.rand(k, 2, generator=g) * 500, xy + 4 + torch.rand(k, 2, generator=g) * 120], 1) for k in n]
    gb, gk, gm = pad_targets(boxes, None, pad_to=10)
    gb[~gm] = torch.rand(int((~gm).sum()), 4, generator=g) * 300                        # junk in the padding
    anchors = grid_anchors(feat_sizes_for(640, 640))
    fn = lambda b, m: build_targets(anchors, b, None, m, dense=True)
    torch._dynamo.reset()
    want, got = fn(gb, gm), torch.compile(fn, fullgraph=True, dynamic=False, backend='aot_eager')(gb, gm)
    for k in TARGET_KEYS + ('candidates', 'pos_slots', 'bbox_targets'): assert torch.equal(got[k], want[k]), k


SIZE, BATCH, CAP = 96, 3, 5


@pytest.fixture(scope='module')
def epoch_batches(tmp_path_factory):
    "Two epochs of real training batches (synthetic scenes with 1-5 faces), padded to the cap, every batch full."
    from scrfd_nb.synthetic import ensure_synthetic, SynthConfig, Scene
    root = ensure_synthetic(tmp_path_factory.mktemp('synth') / 'data', num_train=10, num_val=1, seed=0, image_size=(96, 128),
                            scenes=(Scene('1--Group', 1.0, (1, 5), (12, 60)),), hard_negatives=False)
    from scrfd_nb.config import get_config
    ds = WiderFaceDataset(root / 'train', cfg=get_config('scrfd_500m_bnkps', **{'data.img_size': SIZE}))
    st = face_cap(ds.records, ds.images, CAP)
    loader = build_loader(ds, BATCH, workers=0, pad_to=st.max_faces, fill_last=True)
    out = []
    for e in range(2):
        loader.sampler.set_epoch(e); out += list(loader)
    return out


def warmup_lr(i, n): return 1e-3 * (0.1 + 0.9 * min(i, n // 2) / (n // 2)) * (0.1 if i >= 3 * n // 4 else 1)   # warmup, then a step


@pytest.fixture(scope='module')
def compiled_epoch(epoch_batches):
    "The batches through one WholeStep (aot_eager) and its compiled SGD, at a changing lr; torch's counters around it."
    torch.manual_seed(0)
    net = build_model('scrfd_500m_bnkps').train()
    w0 = [p.detach().clone() for p in net.parameters()]
    opt = make_sgd(net.parameters(), 1e-3)
    rt = Runtime(torch.device('cpu'))
    step = WholeStep(net, partial(compute_losses, net), rt.autocast, backend='aot_eager')   # what train.wrap_model builds
    torch._dynamo.reset()
    before, losses, grads0 = compile_counters(), [], None
    try:
        for i, b in enumerate(epoch_batches):
            terms, ok = train_step(step, net, b, opt, warmup_lr(i, len(epoch_batches)), rt)   # the trainer's step: the WholeStep branch
            assert ok
            if i == 0:
                grads0 = [p.grad.clone() for p in net.parameters()]     # at the initial weights (the step came after)
                torch.compiler.set_stance('fail_on_recompile')      # any new graph from here on raises
            losses.append(terms)
        with pytest.raises(Exception, match='(?i)recompil'):     # the stance does catch a new shape
            b = epoch_batches[0]
            step({k: torch.cat([b[k], b[k][:, :1]], 1) if k != 'images' else b[k] for k in STEP_INPUTS})
    finally:
        torch.compiler.set_stance('default')
    return dict(net=net, counters=compile_counters(), before=before, losses=losses, grads0=grads0, opt=opt, w0=w0)


def test_epoch_batches_differ_in_faces_not_in_shapes(epoch_batches):
    counts = {tuple(b['gt_mask'].sum(1).tolist()) for b in epoch_batches}
    shapes = {tuple(tuple(b[k].shape) for k in STEP_INPUTS) for b in epoch_batches}
    assert len(counts) >= 3 and len(shapes) == 1, (counts, shapes)
    assert shapes.pop()[1] == (BATCH, CAP, 4)


def test_whole_step_is_one_graph_without_recompilation(compiled_epoch, epoch_batches):
    c, c0 = compiled_epoch['counters'], compiled_epoch['before']
    assert c['graph_breaks'] - c0['graph_breaks'] == 0
    assert c['graphs'] - c0['graphs'] == 2, (c, c0)          # the step and the SGD update, compiled in the first step; never again
    assert len(compiled_epoch['losses']) == len(epoch_batches)
    opt, n = compiled_epoch['opt'], len(epoch_batches)
    assert torch.is_tensor(opt.param_groups[0]['lr']) and float(opt.param_groups[0]['lr']) == pytest.approx(warmup_lr(n - 1, n), rel=1e-6)
    moved = [not torch.equal(p, w) for p, w in zip(compiled_epoch['net'].parameters(), compiled_epoch['w0'])]
    assert sum(moved) > len(moved) // 2 and moved == [bool(opt.state[p]['momentum_buffer'].any()) for p in compiled_epoch['net'].parameters()]


def test_compiled_step_equals_eager_step(compiled_epoch, epoch_batches):
    "The first batch (before any update): the eager step's losses and gradients, to float noise of changed fusions."
    torch.manual_seed(0)
    net = build_model('scrfd_500m_bnkps').train()
    b = epoch_batches[0]
    l = compute_losses(net, net(b['images']), b)
    sum(l[k] for k in LOSS_KEYS).backward()
    for k in LOSS_KEYS: torch.testing.assert_close(compiled_epoch['losses'][0][k], l[k].detach(), rtol=1e-5, atol=1e-6)
    for p, g in zip(net.parameters(), compiled_epoch['grads0']):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-4 * float(p.grad.abs().max()) + 1e-8)


def test_compiled_sgd_equals_eager_sgd():
    """The trainer's SGD (`make_sgd`: momentum 0.9, weight decay 5e-4 on every parameter) on the model's parameters
    and the compiled update fed the same gradients over 12 steps of warmup and an lr step: the weights agree to a
    bound on float32 rounding derived step by step, and only one graph is compiled (the lr is data).

    Both compute d = g + wd·p, b = μ·b + d, p = p − lr·b in float32; they may round each `x + α·y` once (fused) or twice
    (product, then sum), so each op's results differ by at most 2u(|α·y| + |result|) (u = 2⁻²⁴; both sides' errors),
    plus the propagation of earlier differences: eD = wd·eP + 2u(wd|p| + |d|), eB = μ·eB + eD + 2u(μ|b₀| + |b|),
    eP = eP + lr·eB + 2u(lr|b| + |p|), tracked per element in float64 on the eager values (torch's first step copies
    the gradient into the buffer; the compiled one starts from zeros: μ·0 + d = d exactly)."""
    torch.manual_seed(0)
    a, b = build_model('scrfd_500m_bnkps'), build_model('scrfd_500m_bnkps')
    b.load_state_dict(a.state_dict())
    ea, ca = make_sgd(a.parameters(), 1e-3), make_sgd(b.parameters(), 1e-3)
    step = CompiledSGD(ca, backend='aot_eager')
    g = ea.param_groups[0]; wd, mu, u = g['weight_decay'], g['momentum'], 2.0 ** -24
    torch._dynamo.reset(); c0 = compile_counters()
    P = list(a.parameters())
    eP = [torch.zeros_like(p, dtype=torch.float64) for p in P]; eB = [e.clone() for e in eP]
    gen = torch.Generator().manual_seed(1)
    for i in range(12):
        lr = warmup_lr(i, 12)
        old_p = [p.detach().double() for p in P]
        old_b = [(ea.state[p]['momentum_buffer'].double() if 'momentum_buffer' in ea.state[p] else torch.zeros_like(o)) for p, o in zip(P, old_p)]
        for p, q in zip(a.parameters(), b.parameters()):
            p.grad = torch.randn(p.shape, generator=gen) * 0.05; q.grad = p.grad.clone()
        for grp in ea.param_groups: grp['lr'] = lr
        for grp in ca.param_groups: grp['lr'].fill_(lr)
        ea.step(); step()
        for k, (p, o, b0) in enumerate(zip(P, old_p, old_b)):
            d = p.grad.double() + wd * o
            bn = ea.state[p]['momentum_buffer'].double()
            eD = wd * eP[k] + 2 * u * (wd * o.abs() + d.abs())
            eB[k] = mu * eB[k] + eD + 2 * u * (mu * b0.abs() + bn.abs())
            eP[k] = eP[k] + lr * eB[k] + 2 * u * (lr * bn.abs() + p.detach().double().abs())
        if i == 0: torch.compiler.set_stance('fail_on_recompile')
    torch.compiler.set_stance('default')
    c = compile_counters()
    assert (c['graphs'] - c0['graphs'], c['graph_breaks'] - c0['graph_breaks']) == (1, 0)
    worst = 0.0
    for p, q, e in zip(a.parameters(), b.parameters(), eP):
        diff = (p.detach().double() - q.detach().double()).abs()
        assert (diff <= e).all(), float((diff - e).max())
        worst = max(worst, float((e / p.detach().double().abs().clamp(min=1e-3)).max()))
        assert torch.equal(ea.state[p]['momentum_buffer'] != 0, ca.state[q]['momentum_buffer'] != 0)
    assert worst < 1e-5, worst     # the bound is float32 rounding, not a loose tolerance


def test_over_cap_policy_in_collate():
    "ignore: the cap's largest faces stay (in their order), the others become that image's ignore boxes, counted."
    img = np.zeros((3, 8, 8), np.float32)
    boxes = np.array([[0, 0, 10, 10], [0, 0, 40, 40], [5, 5, 25, 25], [1, 1, 31, 31]], np.float32)
    kps = np.arange(4 * 15, dtype=np.float32).reshape(4, 5, 3)
    s = dict(img=img, gt_bboxes=boxes, gt_keypoints=kps, gt_bboxes_ignore=np.array([[50, 50, 60, 60]], np.float32))
    b = collate([s, dict(s, gt_bboxes=boxes[:1], gt_keypoints=kps[:1])], pad_to=2)
    assert b['truncated_faces'] == 2 and b['gt_mask'].tolist() == [[True, True], [True, False]]
    assert b['gt_boxes'][0].tolist() == boxes[[1, 3]].tolist() and b['gt_kps'][0].tolist() == kps[[1, 3]].tolist()
    assert b['gt_boxes_ignore'][0].tolist() == [[50, 50, 60, 60], [0, 0, 10, 10], [5, 5, 25, 25]]
    assert b['gt_boxes_ignore'][1].tolist() == [[50, 50, 60, 60]]
    assert static_shapes_on(None, 'npu') and not static_shapes_on(None, 'cpu')      # on by default for NPU devices only
    p = collate([s, dict(s, gt_bboxes=boxes[:1], gt_keypoints=kps[:1])], pad_to=2, pad_ignore_to=4)   # ignore boxes: fixed count, mask
    assert p['gt_boxes_ignore'].shape == (2, 4, 4) and p['gt_ignore_mask'].tolist() == [[True] * 3 + [False], [True, False, False, False]]
    assert [ig[m].tolist() for ig, m in zip(p['gt_boxes_ignore'], p['gt_ignore_mask'])] == [ig.tolist() for ig in b['gt_boxes_ignore']]
    assert not p['gt_boxes_ignore'][~p['gt_ignore_mask']].any()
    with pytest.raises(ValueError, match='pad_ignore_to=2'): collate([s], pad_to=2, pad_ignore_to=2)     # 3 ignore boxes: never dropped


def test_padded_ignore_boxes_give_the_same_targets():
    """Ignore boxes padded to a fixed count with a mask: the targets of an assigner that reads them (ignore_iof_thr
    0.5; SCRFD's configs use -1) equal those from each image's own list, whatever the padded rows hold; and the
    losses of a padded batch equal the list batch's."""
    g = torch.Generator().manual_seed(0)
    box = lambda k, s=500: torch.cat([xy := torch.rand(k, 2, generator=g) * s, xy + 8 + torch.rand(k, 2, generator=g) * 120], 1)
    faces, ign = [box(3), box(1), box(4)], [box(2), box(0), box(5)]
    gb, _, gm = pad_targets(faces, None)
    M = 6
    ib, im = torch.rand(3, M, 4, generator=g) * 400, torch.zeros(3, M, dtype=torch.bool)   # junk in the padded rows
    ib[..., 2:] += ib[..., :2]
    for i, x in enumerate(ign): ib[i, :len(x)] = x; im[i, :len(x)] = True
    anchors = grid_anchors(feat_sizes_for(640, 640)); A = torch.cat(list(anchors)); nla = [len(a) for a in anchors]
    got = atss_assign_batched(A, nla, gb, gm, gt_boxes_ignore=ib, ignore_mask=im, ignore_iof_thr=0.5)
    for i in range(3):
        want = atss_assign_batched(A, nla, gb[i:i + 1], gm[i:i + 1], gt_boxes_ignore=ign[i][None], ignore_iof_thr=0.5)
        assert all(torch.equal(x[i], y[0]) for x, y in zip(got, want)), i
    assert (got[0] == -2).any()                                                       # the ignore boxes do act
    unmasked = atss_assign_batched(A, nla, gb, gm, gt_boxes_ignore=ib, ignore_iof_thr=0.5)[0]
    assert not torch.equal(unmasked, got[0])                                          # ... and the mask is what keeps the junk out


def test_ignore_cap_from_the_labels_is_never_exceeded(epoch_batches, tiny):
    "face_cap's ignore count (own ignore boxes + faces over the cap) holds every training batch; losses unchanged by it."
    ds = WiderFaceDataset(tiny / 'train', cfg=get_config('scrfd_500m_bnkps', **{'data.img_size': 64}))
    for cap in (1, 2):
        st = face_cap(ds.records, ds.images, cap)
        assert st.max_ignores == max(len(r['bboxes_ignore']) + max(len(r['bboxes']) - cap, 0) for r in ds.records)
        for e in range(2):
            items = [ds[(e, i)] for i in range(len(ds))]
            for j in range(0, len(items), 2):
                p = collate(items[j:j + 2], pad_to=cap, pad_ignore_to=st.max_ignores)   # raises if the count were exceeded
                assert p['gt_boxes_ignore'].shape[1:] == (st.max_ignores, 4)
    net = build_model('scrfd_500m_bnkps').train()
    b = collate(items[:2], pad_to=1); p = collate(items[:2], pad_to=1, pad_ignore_to=face_cap(ds.records, ds.images, 1).max_ignores)
    with torch.no_grad():
        lb, lp = compute_losses(net, net(b['images']), b), compute_losses(net, net(p['images']), p)
    assert all(torch.equal(lb[k], lp[k]) for k in LOSS_KEYS)


def test_npu_path_runs_the_compiled_step(epoch_batches, monkeypatch):
    """With torch_npu and torchair mocked (a fake module stands for a working install, as notebook 16 tests the NPU):
    static shapes are on by default, `--compile-step` builds a `WholeStep` on torchair's backend, and the trainer's
    `train_step` runs the step graph and the SGD graph through it, compiled once over batches and lrs that change.
    The model has two classes: the compiled step reads the batch's `gt_labels` (the eager losses with the same
    labels, not those of class 0 everywhere). torch_npu's NpuFusedSGD (`--fused`) is not torch's SGD: it steps eagerly."""
    from torch._dynamo.backends.registry import lookup_backend
    graphs = []
    def npu_backend(gm, example_inputs): graphs.append(gm); return lookup_backend('aot_eager')(gm, example_inputs)
    air = types.ModuleType('torchair'); air.CompilerConfig = lambda: object()
    air.get_npu_backend = lambda compiler_config=None: npu_backend
    npu = types.ModuleType('torch_npu'); npu.optim = types.ModuleType('torch_npu.optim')
    class NpuFusedSGD(torch.optim.SGD):
        steps = 0
        def step(self, closure=None): NpuFusedSGD.steps += 1; return super().step(closure)
    npu.optim.NpuFusedSGD = NpuFusedSGD
    for name, mod in (('torchair', air), ('torch_npu', npu), ('torch_npu.optim', npu.optim)): monkeypatch.setitem(sys.modules, name, mod)
    rt = Runtime(types.SimpleNamespace(type='npu', index=0))        # stands for torch.device('npu', 0), which needs the real torch_npu
    assert static_shapes_on(None, rt.device.type)
    torch.manual_seed(0)
    net = build_model(get_config('scrfd_500m_bnkps', num_classes=2)).train()
    step = wrap_model(RunConfig(compile_step=True), rt, net)
    assert isinstance(step, WholeStep) and step.backend is npu_backend
    opt = make_sgd(net.parameters(), 1e-3, device_type='npu')         # what setup_model gives on an NPU (--fused off)
    lab = lambda b, s: dict(b, gt_labels=(torch.arange(b['gt_mask'].numel()).view_as(b['gt_mask']) + s) % 2 * b['gt_mask'])
    batches = [lab(b, i) for i, b in enumerate(epoch_batches[:3])]
    b0 = batches[0]
    with torch.no_grad():
        outs = net(b0['images'])
        want, zero = compute_losses(net, outs, b0), compute_losses(net, outs, dict(b0, gt_labels=torch.zeros_like(b0['gt_labels'])))
    assert not torch.equal(want['loss_cls'], zero['loss_cls'])          # the labels matter to this model's losses
    torch._dynamo.reset()
    try:
        for i, b in enumerate(batches):
            terms, ok = train_step(step, net, b, opt, 1e-3 * (i + 1) / 3, rt)
            assert ok
            if i == 0:
                for k in LOSS_KEYS: torch.testing.assert_close(terms[k], want[k], rtol=1e-5, atol=1e-6)
                torch.compiler.set_stance('fail_on_recompile')
    finally:
        torch.compiler.set_stance('default')
    assert len(graphs) == 2 and torch.is_tensor(opt.param_groups[0]['lr'])  # the step and the SGD update, through the NPU backend
    fused = make_sgd(net.parameters(), 1e-3, device_type='npu', fused=True)
    assert type(fused) is NpuFusedSGD and not CompiledSGD.supports(fused)
    train_step(step, net, batches[1], fused, 1e-3, rt)
    assert NpuFusedSGD.steps == 1 and len(graphs) == 2                   # its own (eager) step; the step graph unchanged


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from scrfd_nb.synthetic import ensure_synthetic
    return ensure_synthetic(tmp_path_factory.mktemp('tiny') / 'data', num_train=6, num_val=1, seed=0, image_size=(64, 96))


def _train(*args):
    return subprocess.run([sys.executable, '-m', 'scrfd_nb.train', '--device', 'cpu', '--img-size', '64', '--batch-size', '2',
                           '--workers', '0', '--eval-interval', '0', '--no-progress', '--epochs', '1', *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_refuse_names_the_image_and_bad_caps_are_usage_errors(tiny, tmp_path):
    "refuse: one line naming the first image over the cap, exit 2, no checkpoint; a cap of 0 or below: a usage error."
    from scrfd_nb.data import parse_labelv2
    recs = parse_labelv2(tiny / 'train' / 'labelv2.txt')
    first = next(r for r in recs if len(r['bboxes']) > 1)
    r = _train('--data-path', tiny, '--work-dir', tmp_path / 'w', '--max-faces', 1, '--over-cap', 'refuse')
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert err[0].startswith('error: --max-faces 1: ') and str(tiny / 'train' / 'images' / first['filename']) in err[0], err
    assert not list((tmp_path / 'w').glob('*.pth'))
    for cap in (0, -3):
        r = _train('--data-path', tiny, '--work-dir', tmp_path / f'c{cap}', '--max-faces', cap)
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [f'error: --max-faces {cap}: expected an integer >= 1'], r.stderr
        assert not (tmp_path / f'c{cap}').exists()
