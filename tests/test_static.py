"""Issue 27: static shapes and the whole training step as one compiled graph.

- padding the faces to a fixed count changes no value: the golden batches' losses, targets (candidates, positive
  slots, assigned faces, IoUs) and every gradient are bit-identical at the batch maximum and at larger caps;
- the fixed-shape path of the assigner (no `nonzero` inside a compiled graph) gives the same targets as the eager one;
- an epoch of real training batches (different face counts, padded to the cap, the last batch filled) runs through
  `WholeStep` under `torch.compile(fullgraph=True, dynamic=False)` with one graph, no graph break and no
  recompilation after the first batch (torch's own counters, and `set_stance('fail_on_recompile')`), with the eager
  step's losses and gradients;
- the over-cap policy: `ignore` keeps the largest faces and makes the others ignore boxes (counted), `refuse` stops
  before training with one line naming the image (exit 2), a cap < 1 is a usage error.

The compiled tests use the `aot_eager` backend: the same dynamo capture and AOTAutograd forward/backward graphs as
`inductor`, without its code generation (minutes on 2 cores; `bench/static_step.py` measures inductor)."""
import subprocess, sys
from functools import partial
from pathlib import Path
import numpy as np
import pytest
import torch
from scrfd_nb.core import bgr_to_input
from scrfd_nb.model import build_model, load_reference_state_dict
from scrfd_nb.losses import build_targets, compute_loss, pad_targets
from scrfd_nb.anchors import grid_anchors, feat_sizes_for
from scrfd_nb.data import WiderFaceDataset, build_loader, collate
from scrfd_nb.static import WholeStep, compile_counters, face_cap, static_shapes_on, STEP_INPUTS
from scrfd_nb.train import compute_losses, train_step, LOSS_KEYS
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


@pytest.fixture(scope='module')
def compiled_epoch(epoch_batches):
    "The batches through one WholeStep (aot_eager), with an SGD step after each; torch's counters around it."
    torch.manual_seed(0)
    net = build_model('scrfd_500m_bnkps').train()
    opt = make_sgd(net.parameters(), 1e-3)
    rt = Runtime(torch.device('cpu'))
    step = WholeStep(net, partial(compute_losses, net), rt.autocast, backend='aot_eager')   # what train.wrap_model builds
    torch._dynamo.reset()
    before, losses, grads0 = compile_counters(), [], None
    try:
        for i, b in enumerate(epoch_batches):
            terms, ok = train_step(step, net, b, opt, 1e-3, rt)             # the trainer's step: the WholeStep branch
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
    return dict(net=net, counters=compile_counters(), before=before, losses=losses, grads0=grads0)


def test_epoch_batches_differ_in_faces_not_in_shapes(epoch_batches):
    counts = {tuple(b['gt_mask'].sum(1).tolist()) for b in epoch_batches}
    shapes = {tuple(tuple(b[k].shape) for k in STEP_INPUTS) for b in epoch_batches}
    assert len(counts) >= 3 and len(shapes) == 1, (counts, shapes)
    assert shapes.pop()[1] == (BATCH, CAP, 4)


def test_whole_step_is_one_graph_without_recompilation(compiled_epoch, epoch_batches):
    c, c0 = compiled_epoch['counters'], compiled_epoch['before']
    assert c['graph_breaks'] - c0['graph_breaks'] == 0
    assert c['graphs'] - c0['graphs'] == 1, (c, c0)          # compiled once, before the first batch; never again
    assert len(compiled_epoch['losses']) == len(epoch_batches)


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
