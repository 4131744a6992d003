"""Issue 23: any number of classes C and keypoints K through the model's spine (head, targets, losses, pipeline,
collate, decoding, export), checked against independent per-anchor computations and hand-made cases; the face
models (C = 1, K = 5 or 0) keep every value they had."""
import json
import numpy as np
import pytest
import torch
from scrfd_nb.anchors import grid_anchors, flatten_level
from scrfd_nb.boxes import distance2bbox, kps2distance, aligned_iou
from scrfd_nb.config import PRESETS, get_config, kps_flip, class_names, config_to_dict, config_from_dict
from scrfd_nb.data import collate
from scrfd_nb.inference import postprocess_flat, detect, Detections, dets_to_json
from scrfd_nb.losses import build_targets, compute_loss, pad_targets, quality_focal_loss, diou_loss, smooth_l1
from scrfd_nb.model import build_model
from scrfd_nb.transforms import TrainPipeline, flip_annotations, ScriptedRNG

SIZES = [(8, 8), (4, 4), (2, 2)]


def test_presets_keep_their_heads():
    "K is 5 for the *_bnkps presets and 0 otherwise, C is 1; a config that says use_kps reads as before."
    for name, c in PRESETS.items():
        assert (c.model.head.num_classes, c.model.head.num_kps) == (1, 5 if name.endswith('bnkps') else 0), name
        assert config_to_dict(c) == {'name': name, 'overrides': {}}
    c = get_config('scrfd_2.5g', use_kps=True)
    assert config_to_dict(c)['overrides'] == {'model.head.use_kps': True} and c.model.head.num_kps == 5
    c = get_config('scrfd_500m', num_classes=3, use_kps=True, kps_points=4, flip_idx=(1, 0, 3, 2))
    assert config_from_dict(json.loads(json.dumps(config_to_dict(c)))) == c       # through a checkpoint's JSON


def _outs(B, C, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(B, 2 * C, h, w, generator=g) - 3 for h, w in SIZES],
            [torch.rand(B, 8, h, w, generator=g) * 3 for h, w in SIZES],
            [torch.randn(B, 4 * K, h, w, generator=g) for h, w in SIZES] if K else None)


def _batch(K, seed=0):
    rng = np.random.default_rng(seed)
    boxes = [np.array([[10., 12, 30, 34], [40, 8, 60, 30]]), np.array([[2., 2, 62, 62]]), np.zeros((0, 4))]
    kps = [rng.random((len(b), K, 3)) * 60 for b in boxes]
    for k in kps: k[..., 2] = (k[..., 2] > 20).astype(float)        # partly visible objects
    gb, gk, gm = pad_targets(boxes, kps, num_kps=K)
    labels = torch.tensor([[2, 0], [1, 0], [0, 0]])
    return gb, gk, gm, labels


def loss_by_anchor(outs, gb, gk, gm, labels, C, K, per_point, strides=(8, 16, 32)):
    "The losses computed anchor by anchor from the dense targets: QFL's one-hot target at the object's class."
    an = grid_anchors([o.shape[-2:] for o in outs[0]], strides)
    t = build_targets(an, gb, gk if K else None, gm)
    N = max(float(t['fg_mask'].sum(1).clamp(min=1).sum()), 1.0)
    per, W, start = [], 0.0, 0
    lab = torch.gather(labels, 1, t['assigned_gt_idx'].clamp(min=0)).reshape(-1)          # (B·A,) class of each anchor's object
    for l, s in enumerate(strides):
        n = len(an[l]); sl = slice(start, start + n); start += n
        cls = flatten_level(outs[0][l], C).reshape(-1, C); box = flatten_level(outs[1][l], 4).reshape(-1, 4)
        pos = t['fg_mask'][:, sl].reshape(-1).nonzero()[:, 0]
        ctr = ((an[l][:, :2] + an[l][:, 2:]) / 2 / s).repeat(len(gb), 1)[pos]
        pb = distance2bbox(ctr, box[pos]); tb = t['bbox_targets'][:, sl].reshape(-1, 4)[pos] / s
        w = cls.detach().sigmoid()[pos].max(1).values
        soft = torch.zeros_like(cls)
        soft[pos, lab.view(len(gb), -1)[:, sl].reshape(-1)[pos]] = aligned_iou(pb.detach(), tb)
        terms = [quality_focal_loss(cls, soft).sum() / N, 2 * (diou_loss(pb, tb) * w).sum()]
        if K:
            kp = flatten_level(outs[2][l], 2 * K).reshape(-1, 2 * K)
            kt = kps2distance(ctr, t['kps_targets'][:, sl].reshape(-1, 2 * K)[pos] / s)
            vis = torch.gather(gk[..., 2], 1, t['assigned_gt_idx'].clamp(min=0)[..., None].expand(-1, -1, K))[:, sl].reshape(-1, K)[pos]
            sl1 = smooth_l1(kp[pos], kt).view(-1, K, 2).sum(-1)                       # (P, K) per point
            kl = (sl1 * vis).sum(1) if per_point else sl1.sum(1) * vis.mean(1)
            terms.append(0.1 * (kl * w).sum())
        per.append(terms); W += w.sum()
    out = [torch.stack([p[0] for p in per]), torch.stack([p[1] for p in per]) / W]
    return out + ([torch.stack([p[2] for p in per]) / W] if K else [])


@pytest.mark.parametrize('C,K,vis', [(3, 4, 'point'), (3, 4, 'face'), (2, 0, 'face'), (1, 5, 'face'), (1, 7, 'point')])
def test_losses_equal_anchor_by_anchor(C, K, vis):
    cfg = get_config('scrfd_500m', num_classes=C, use_kps=K > 0, kps_points=max(K, 1), kps_visibility=vis)
    outs = _outs(3, C, K)
    gb, gk, gm, labels = _batch(max(K, 1))
    res = compute_loss(outs, gb, gk if K else None, gm, cfg, gt_labels=labels % C)
    ref = loss_by_anchor(outs, gb, gk, gm, labels % C, C, K, vis == 'point')
    for k, r in zip(['cls', 'bbox', 'kps'], ref):   # float32 sums of the same terms in another order
        torch.testing.assert_close(res[f'loss_{k}_per_level'], r, rtol=1e-5, atol=1e-7)


def test_one_class_labels_change_nothing():
    "Class ids of a one-class batch are all 0: passing them gives bit-identical losses (the face path is untouched)."
    cfg = PRESETS['scrfd_500m_bnkps']
    outs = _outs(3, 1, 5)
    gb, gk, gm, labels = _batch(5)
    a = compute_loss(outs, gb, gk, gm, cfg)
    b = compute_loss(outs, gb, gk, gm, cfg, gt_labels=torch.zeros_like(labels))
    for k in a: assert torch.equal(a[k], b[k]), k


def test_point_visibility_ignores_unlabelled_points():
    "'point' weighting: an unlabelled point's prediction does not matter; 'face' (the reference's) lets it pull."
    outs = _outs(3, 2, 4)
    gb, gk, gm, labels = _batch(4)
    gk[..., 1, 2] = 0; gk[..., 0, 2] = 1                           # point 1 unlabelled everywhere, point 0 labelled
    moved = (outs[0], outs[1], [k.clone() for k in outs[2]])
    for k in moved[2]: k.view(3, 2, 4, 2, *k.shape[-2:])[:, :, 1] += 5.0   # point 1's offsets of every anchor
    for vis, same in (('point', True), ('face', False)):
        cfg = get_config('scrfd_500m', num_classes=2, use_kps=True, kps_points=4, kps_visibility=vis)
        a = compute_loss(outs, gb, gk, gm, cfg, gt_labels=labels % 2)['loss_kps']
        b = compute_loss(moved, gb, gk, gm, cfg, gt_labels=labels % 2)['loss_kps']
        assert bool(torch.equal(a, b)) == same, vis


def test_flip_by_permutation_and_labels_through_the_crop():
    "A flip reorders K points by flip_idx (x mirrored); the pipeline's labels follow the objects its crop keeps."
    k = np.array([[[1, 5, 1], [9, 5, 1], [9, 9, 1], [1, 9, 0]]], np.float32)     # TL, TR, BR, BL
    _, kf, _ = flip_annotations(np.array([[1, 5, 9, 9]], np.float32), k, np.zeros((0, 4), np.float32), 20, (1, 0, 3, 2))
    np.testing.assert_array_equal(kf[0], [[11, 5, 1], [19, 5, 1], [19, 9, 0], [11, 9, 1]])
    ann = dict(bboxes=np.array([[10, 10, 30, 30], [300, 300, 330, 330], [40, 40, 60, 60]], np.float32),
               labels=np.array([2, 1, 0]), keypoints=np.zeros((3, 4, 3), np.float32), bboxes_ignore=np.zeros((0, 4), np.float32))
    pipe = TrainPipeline(size=64, photometric=False, flip_ratio=0.0)
    # scripted draws: the crop scale 0.3 (a 120 px square of the 400 px image), then its left and top corner 0
    rng = ScriptedRNG([('choice', None, 0.3), ('integers', None, 0), ('integers', None, 0)])
    out = pipe(np.zeros((400, 400, 3), np.uint8), ann, rng)
    np.testing.assert_array_equal(out['gt_labels'], [2, 0])           # the object at 300 px left the 120 px crop
    assert out['gt_keypoints'].shape == (2, 4, 3)


def test_collate_labels_and_any_k():
    "collate pads class ids with the boxes; over the cap the kept objects keep their own classes."
    s = lambda n, lab: dict(img=torch.zeros(3, 32, 32), gt_bboxes=np.array([[0, 0, 4 + i, 4 + i] for i in range(n)], np.float32),
                            gt_keypoints=np.ones((n, 4, 3), np.float32), gt_labels=np.array(lab), gt_bboxes_ignore=np.zeros((0, 4)))
    b = collate([s(3, [1, 2, 0]), s(1, [2])])
    assert b['gt_kps'].shape == (2, 3, 4, 3) and b['gt_labels'].tolist() == [[1, 2, 0], [2, 0, 0]]
    b = collate([s(3, [1, 2, 0]), s(1, [2])], pad_to=2)              # the two largest (objects 1 and 2) stay
    assert b['gt_labels'].tolist() == [[2, 0], [2, 0]] and b['truncated_faces'] == 1


def test_decode_per_class_nms():
    "Two classes on the same box both survive per-class NMS (a second box of class 0 there does not); class-agnostic NMS keeps the best."
    A = 8 * 8 * 2 + 4 * 4 * 2 + 2 * 2 * 2
    scores = torch.zeros(1, A, 2); scores[0, 0] = torch.tensor([0.9, 0.8]); scores[0, 1] = torch.tensor([0.7, 0.1])
    bbox = torch.ones(1, A, 4)
    fs = [(8, 8), (4, 4), (2, 2)]
    d = postprocess_flat(scores, bbox, None, fs, mode='mmdet', score_thr=0.5, nms_thr=0.45, rescale=False)[0]
    assert d['labels'].tolist() == [0, 1] and torch.allclose(d['scores'], torch.tensor([0.9, 0.8]))   # anchors 0, 1: one location, one box
    d = postprocess_flat(scores, bbox, None, fs, mode='mmdet', score_thr=0.5, nms_thr=0.45, rescale=False, class_agnostic=True)[0]
    assert d['labels'].tolist() == [0] and d['scores'].tolist() == [pytest.approx(0.9)]


def test_detections_unpack_as_before():
    d = Detections(np.zeros((2, 4)), np.array([.9, .8]), None, np.array([1, 0]), ('face', 'card'))
    boxes, scores, kps = d
    assert d.classes == ['card', 'face'] and kps is None
    assert [x['class'] for x in dets_to_json(*d, d.labels, d.names)] == ['card', 'face']
    assert 'class' not in dets_to_json(*d, d.labels, ('face',))[0]                  # a face model's JSON as before


def test_multiclass_export_matches_the_model(tmp_path):
    "A C = 3, K = 4 model exports score (B, rows, 3) and kps (B, rows, 8) with its class names; onnxruntime finds what PyTorch finds."
    from scrfd_nb.export import export_onnx
    from scrfd_nb.backends import OnnxRunner
    import onnx
    cfg = get_config('scrfd_500m_bnkps', num_classes=3, kps_points=4, flip_idx=(1, 0, 3, 2), class_names=('a', 'b', 'c'))
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    with torch.no_grad():                                  # a few confident anchors: decoding has something to keep
        for conv in m.bbox_head.stride_cls.values(): conv.bias.data += torch.tensor([6., 0, 3, 0, 0, 5])
    p = export_onnx(m, tmp_path/'c3.onnx', shape=(128, 128))
    mo = onnx.load(str(p))
    dims = {o.name: o.type.tensor_type.shape.dim[-1].dim_value for o in mo.graph.output}
    assert dims == {'score_8': 3, 'score_16': 3, 'score_32': 3, 'bbox_8': 4, 'bbox_16': 4, 'bbox_32': 4, 'kps_8': 8, 'kps_16': 8, 'kps_32': 8}
    assert json.loads({m.key: m.value for m in mo.metadata_props}['class_names']) == ['a', 'b', 'c']
    img = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    d0, d1 = detect(m, img, 0.5, input_size=128), detect(OnnxRunner(p), img, 0.5, input_size=128)
    assert len(d0[0]) > 0 and d0[2].shape[1:] == (4, 2) and set(d0.labels.tolist()) == {0, 2}
    assert d1.names == ('a', 'b', 'c') and np.array_equal(np.sort(d0.labels), np.sort(d1.labels))
    assert len(d0[0]) == len(d1[0])                        # same detections; near-equal scores may swap places: match each
    dist = np.abs(d0[0][:, None] - d1[0][None]).max(-1) + 1e9 * (d0.labels[:, None] != d1.labels[None])
    assert dist.min(1).max() < 1e-3                        # float32 convolutions of two runtimes, boxes of ~100 px
    from scrfd_nb.model import load_model                  # the export loads back into our model, head from its metadata
    back = load_model(p)
    assert back.cfg.model.head == m.cfg.model.head and back.cfg.data.class_names == ('a', 'b', 'c') and back.cfg.data.flip_idx == (1, 0, 3, 2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(): torch.testing.assert_close(back(x)[0][0], m(x)[0][0], rtol=1e-4, atol=1e-4)   # BatchNorm folded into the convs


def test_face_export_has_no_extra_metadata(tmp_path):
    "A 1-class 5-point export stays the reference's layout: 1, 4 and 10 columns, no metadata of ours (insightface reads it as before)."
    from scrfd_nb.export import export_onnx
    import onnx
    p = export_onnx(build_model('scrfd_500m_bnkps').eval(), tmp_path/'f.onnx', shape=(64, 64))
    mo = onnx.load(str(p))
    assert [o.type.tensor_type.shape.dim[-1].dim_value for o in mo.graph.output] == [1] * 3 + [4] * 3 + [10] * 3
    assert len(mo.metadata_props) == 0


def test_crops_align_faces_and_rectify_quads(tmp_path):
    "Crops: a 4-corner model's objects are rectified (a 40x20 rectangle comes out 40x20); of a multi-class 5-point model only faces are aligned."
    from scrfd_nb.align import save_crops
    img = np.zeros((100, 100, 3), np.uint8); img[30:50, 20:60] = 200
    quad = np.array([[[20, 30], [60, 30], [60, 50], [20, 50]]], np.float64)
    (p,) = save_crops(img, quad, tmp_path, 'q')
    import cv2
    c = cv2.imread(str(p))
    assert c.shape[:2] == (20, 40) and c[2:-2, 2:-2].min() == 200
    five = np.tile(np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]]), (2, 1, 1))
    paths = save_crops(np.zeros((112, 112, 3), np.uint8), five, tmp_path, 'f', classes=['card', 'face'])
    assert [x.name for x in paths] == ['f_1.png']                 # detection 1, the face, keeps its index
    with pytest.raises(ValueError, match='5 face landmarks or 4 corners'): save_crops(img, np.zeros((1, 7, 2)), tmp_path, 'x')
