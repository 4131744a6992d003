"""Benchmark: ATSS assignment + SCRFD loss (forward and backward w.r.t. the head outputs) per batch on CPU.

Ours (`scrfd_nb.losses.compute_loss`: assigner batched over images, dense masked losses, no host syncs) against a
naive port of the reference structure written below: ATSS per image with full (A, G) IoU / distance matrices and a
Python loop over images (mmdet `ATSSAssigner.assign` + `_get_target_single`), then per level boolean-indexed
positives (`loss_single`). Both compute the same numbers (checked on every run). Head outputs are random tensors at
640x640 (16,800 anchors), 1-30 faces per image (uniform), face sizes log-uniform 8-300 px.

    python bench/assign_loss.py [--batch 8 32 128] [--repeat 3] [--threads 1]
"""
import argparse, time
import numpy as np
import torch
import torch.nn.functional as F
from scrfd_nb.anchors import grid_anchors, feat_sizes_for, flatten_level
from scrfd_nb.boxes import distance2bbox, kps2distance, aligned_iou, box_iou
from scrfd_nb.losses import compute_loss, pad_targets, quality_focal_loss, diou_loss, smooth_l1
from scrfd_nb.config import SCRFDConfig

INF = 1e8


# ----------------------------------------------------------------------------------------------- naive baseline
def naive_assign(anchors, nla, gt, topk=9):
    "One image, reference structure: (A, G) IoU and distance matrices, per-column topk, (A, G) -INF matrix argmax."
    A, G = len(anchors), len(gt)
    if G == 0: return torch.zeros(A, dtype=torch.long)
    overlaps = box_iou(anchors, gt, eps=1e-6)                                       # (A, G)
    ac = (anchors[:, :2] + anchors[:, 2:]) / 2.0; gc = (gt[:, :2] + gt[:, 2:]) / 2.0
    dist = (ac[:, None, :] - gc[None, :, :]).pow(2).sum(-1).sqrt()                  # (A, G)
    cands, start = [], 0
    for n in nla:
        cands.append(dist[start:start + n].topk(min(topk, n), dim=0, largest=False).indices + start); start += n
    cand = torch.cat(cands, 0)                                                      # (K, G)
    co = overlaps[cand, torch.arange(G)]
    is_pos = co >= (co.mean(0) + co.std(0))[None]
    cx, cy = ac[cand, 0], ac[cand, 1]
    dmin = torch.stack([cx - gt[:, 0], cy - gt[:, 1], gt[:, 2] - cx, gt[:, 3] - cy], 1).min(1).values
    dmin = dmin / ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])).clamp(min=1e-4).sqrt()
    is_pos &= dmin > 0.001
    ov_inf = torch.full((G, A), -INF)
    flat = (cand + torch.arange(G) * A).view(-1)[is_pos.view(-1)]                  # positive (gt, anchor) pairs
    ov_inf.view(-1)[flat] = overlaps.t().reshape(-1)[flat]
    mo, am = ov_inf.t().max(1)
    return torch.where(mo != -INF, am + 1, torch.zeros_like(am))                    # 0 neg, k>0 gt k-1


def naive_loss(outs, boxes, kps, strides=(8, 16, 32)):
    "Per-image targets (loop over images), then per-level losses on boolean-indexed positives (reference layout)."
    cls_l, box_l, kps_l = outs
    B = cls_l[0].shape[0]
    anchors = grid_anchors([o.shape[-2:] for o in cls_l], strides)
    an = torch.cat(anchors); nla = [len(a) for a in anchors]; A = len(an)
    labels, bt, kt, kw, npos = [], [], [], [], []
    for b in range(B):                                                             # the per-image loop
        a = naive_assign(an, nla, boxes[b])
        pos = (a > 0).nonzero()[:, 0]
        lab = torch.ones(A, dtype=torch.long); lab[pos] = 0
        t = torch.zeros(A, 4); t[pos] = boxes[b][a[pos] - 1]
        k = torch.zeros(A, 10); k[pos] = kps[b][a[pos] - 1, :, :2].reshape(-1, 10)
        w = torch.zeros(A); w[pos] = kps[b][a[pos] - 1, :, 2].mean(1)
        labels.append(lab); bt.append(t); kt.append(k); kw.append(w); npos.append(max(len(pos), 1))
    N = max(float(sum(npos)), 1.0)
    labels, bt, kt, kw = (torch.stack(v) for v in (labels, bt, kt, kw))
    res, W, start = [], 0.0, 0
    for l, s in enumerate(strides):
        n = nla[l]; sl = slice(start, start + n); start += n
        cls = flatten_level(cls_l[l], 1).reshape(-1, 1); box = flatten_level(box_l[l], 4).reshape(-1, 4)
        kp = flatten_level(kps_l[l], 10).reshape(-1, 10)
        lab = labels[:, sl].reshape(-1)
        pos = (lab == 0).nonzero()[:, 0]
        score = torch.zeros_like(cls)
        if len(pos):
            ctr = ((anchors[l][:, :2] + anchors[l][:, 2:]) / 2 / s).repeat(B, 1)[pos]
            pb = distance2bbox(ctr, box[pos]); tb = bt[:, sl].reshape(-1, 4)[pos] / s
            w = cls.detach().sigmoid()[pos, 0]
            score[pos, 0] = aligned_iou(pb.detach(), tb)
            lb = 2 * (diou_loss(pb, tb) * w).sum()
            tk = kps2distance(ctr, kt[:, sl].reshape(-1, 10)[pos] / s)
            lk = 0.1 * (smooth_l1(kp[pos], tk) * (kw[:, sl].reshape(-1)[pos] * w)[:, None]).sum()
            W = W + w.sum()
        else:
            lb, lk = box.sum() * 0, kp.sum() * 0
        res.append((quality_focal_loss(cls, score).sum() / N, lb, lk))
    W = float(W) if not isinstance(W, float) else W
    return dict(loss_cls=sum(r[0] for r in res), loss_bbox=sum(r[1] for r in res) / W, loss_kps=sum(r[2] for r in res) / W)


# ----------------------------------------------------------------------------------------------- workload
def make_batch(B, rng, size=640):
    boxes, kps = [], []
    for _ in range(B):
        g = rng.integers(1, 31)
        wh = np.exp(rng.uniform(np.log(8), np.log(300), (g, 1))) * rng.uniform(0.8, 1.25, (g, 2))
        xy = rng.uniform(0, size, (g, 2)) - wh / 2
        b = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        k = np.zeros((g, 5, 3), np.float32)
        k[..., :2] = b[:, None, :2] + wh[:, None, :] * rng.uniform(0.2, 0.8, (g, 5, 2)); k[..., 2] = rng.random((g, 1)) > 0.2
        boxes.append(torch.from_numpy(b)); kps.append(torch.from_numpy(k))
    fs = feat_sizes_for(size, size)
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    outs = ([torch.randn(B, 2, h, w, generator=g) - 3 for h, w in fs], [torch.rand(B, 8, h, w, generator=g) * 4 for h, w in fs],
            [torch.randn(B, 20, h, w, generator=g) for h, w in fs])
    return outs, boxes, kps


def timed(fn, outs, repeat):
    "Best (CPU seconds of this process, wall seconds) over `repeat` runs of forward + backward."
    best, wall, res = float('inf'), float('inf'), None
    for _ in range(repeat):
        o = [[t.detach().clone().requires_grad_() for t in x] for x in outs]
        c0, t0 = time.process_time(), time.perf_counter()
        res = fn(o)
        sum(res[k] for k in ('loss_cls', 'loss_bbox', 'loss_kps')).backward()
        best, wall = min(best, time.process_time() - c0), min(wall, time.perf_counter() - t0)
    return best, wall, res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--batch', type=int, nargs='+', default=[8, 32, 128])
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--threads', type=int, default=1, help='torch CPU threads (1 = stable numbers on a shared machine)')
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    print(f'torch {torch.__version__}, {a.threads} thread(s), 640x640 (16,800 anchors), 1-30 faces/image, best of {a.repeat}; '
          'CPU seconds of the process (robust on a shared machine), wall seconds in brackets')
    print(f'| batch | faces | positives | ours CPU s (wall) | naive per-image CPU s (wall) | naive / ours |')
    print(f'|---|---|---|---|---|---|')
    for B in a.batch:
        outs, boxes, kps = make_batch(B, rng)
        gb, gk, gm = pad_targets(boxes, kps)
        t_ours, w_ours, r1 = timed(lambda o: compute_loss(o, gb, gk, gm, SCRFDConfig()), outs, a.repeat)   # default head, reference weights
        t_naive, w_naive, r2 = timed(lambda o: naive_loss(o, boxes, kps), outs, a.repeat)
        for k in ('loss_cls', 'loss_bbox', 'loss_kps'):                       # same numbers
            assert torch.allclose(r1[k], r2[k], rtol=1e-4), (k, r1[k], r2[k])
        print(f'| {B} | {sum(len(b) for b in boxes)} | {int(r1["num_pos"])} | {t_ours:.3f} ({w_ours:.3f}) | {t_naive:.3f} ({w_naive:.3f}) | {t_naive / t_ours:.1f}x |', flush=True)


if __name__ == '__main__': main()
