"""Benchmark: WIDER FACE evaluation of the full validation set (3226 images, three settings).

Ours (`scrfd_nb.evaluate.evaluate_widerface`, vectorised over the whole set) against a straightforward port of the
reference algorithm (spec §6; per image, per prediction, per threshold Python loops, as the reference runs them),
in the same process, on the golden prediction sets. Both must give the same APs (checked).

    python bench/evaluate.py [--sets good noisy edge unsorted] [--repeat 5]
"""
import argparse, time
import numpy as np
from scrfd_nb.core import shared_file
from scrfd_nb.evaluate import SETTINGS, load_gt_mat, evaluate_widerface, write_pred_dir, read_pred_dir, golden_preds

SETS = {'good': 'widerface_preds_0_good.npz', 'noisy': 'widerface_preds_1_noisy.npz',
        'edge': 'widerface_preds_2_edge.npz', 'unsorted': 'widerface_preds_3_unsorted.npz'}


# ---------------------------------------------------------------- the baseline: a per-image loop port of spec §6
def loop_norm_score(preds):
    "Global min-max normalisation, in place: subtraction in float32, division in float64, stored back."
    lo, hi = 2, -1
    for imgs in preds.values():
        for v in imgs.values():
            if len(v): lo, hi = min(v[:, -1].min(), lo), max(v[:, -1].max(), hi)
    for imgs in preds.values():
        for v in imgs.values():
            if len(v): v[:, -1] = (v[:, -1] - lo).astype(np.float64) / (hi - lo)

def loop_iou(gt, p):
    "+1 IoU of one prediction row (float32) against all gts (float64 corners)."
    x1, y1 = np.maximum(gt[:, 0], p[0]), np.maximum(gt[:, 1], p[1])
    x2, y2 = np.minimum(gt[:, 2], p[2]), np.minimum(gt[:, 3], p[3])
    w, h = x2 - x1 + 1, y2 - y1 + 1
    inter = w * h
    with np.errstate(divide='ignore', invalid='ignore'):
        o = inter / ((gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1) + (p[2] - p[0] + 1) * (p[3] - p[1] + 1) - inter)
    o[w <= 0] = 0; o[h <= 0] = 0
    return o

def loop_image_eval(pred, gt, counted, thr):
    p, g = pred.copy(), gt.copy()
    p[:, 2] += p[:, 0]; p[:, 3] += p[:, 1]; g[:, 2] += g[:, 0]; g[:, 3] += g[:, 1]
    state = np.zeros(len(g)); proposal = np.ones(len(p)); pred_recall = np.zeros(len(p))
    for h in range(len(p)):
        o = loop_iou(g, p[h])
        k = o.argmax()
        if o[k] >= thr:
            if not counted[k]: state[k] = -1; proposal[h] = -1
            elif state[k] == 0: state[k] = 1
        pred_recall[h] = (state == 1).sum()
    return pred_recall, proposal

def loop_img_pr_info(pred, proposal, pred_recall, n=1000):
    pr = np.zeros((n, 2))
    for t in range(n):
        r = np.where(pred[:, 4] >= 1 - (t + 1) / n)[0]
        if len(r):
            r = r[-1]
            pr[t] = (proposal[:r + 1] == 1).sum(), pred_recall[r]
    return pr

def loop_voc_ap(rec, prec):
    mrec, mpre = np.concatenate(([0.], rec, [1.])), np.concatenate(([0.], prec, [0.]))
    for i in range(len(mpre) - 1, 0, -1): mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])

def loop_evaluate(preds, gt, iou_thresh=0.5):
    "Per-image loop port of the reference protocol; `gt` is a WiderGT (read once, outside the timing)."
    preds = {e: {n: v.copy() for n, v in imgs.items()} for e, imgs in preds.items()}
    loop_norm_score(preds)
    aps = {}
    for si, name in enumerate(SETTINGS):
        count, pr = 0, np.zeros((1000, 2))
        for i, (ev, nm) in enumerate(zip(gt.events, gt.names)):
            pred = preds[ev][nm]
            boxes = gt.boxes[gt.offsets[i]:gt.offsets[i + 1]]
            count += gt.num_faces[i, si]
            if len(boxes) == 0 or len(pred) == 0: continue
            rec, prop = loop_image_eval(pred, boxes, gt.keep[gt.offsets[i]:gt.offsets[i + 1], si], iou_thresh)
            pr += loop_img_pr_info(pred, prop, rec)
        with np.errstate(divide='ignore', invalid='ignore'):
            aps[name] = loop_voc_ap(pr[:, 1] / count, pr[:, 1] / pr[:, 0])
    return aps


# ---------------------------------------------------------------- the benchmark
def best_of(fn, k):
    "(best wall s, median wall s, median CPU s of this process, result) of k runs."
    ts, cs = [], []
    for _ in range(k):
        t, c = time.perf_counter(), time.process_time(); out = fn()
        ts.append(time.perf_counter() - t); cs.append(time.process_time() - c)
    return min(ts), float(np.median(ts)), float(np.median(cs)), out

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sets', nargs='+', default=['good', 'unsorted'], choices=list(SETS))
    ap.add_argument('--repeat', type=int, default=5, help='runs of ours (best and median reported)')
    ap.add_argument('--no-baseline', action='store_true', help='skip the slow loop port')
    a = ap.parse_args(argv)
    t = time.perf_counter(); gt = load_gt_mat(shared_file('data', 'widerface')); t_gt = time.perf_counter() - t
    print(f"ground truth (.mat, scipy.io.loadmat + flattening): {t_gt:.2f} s, {len(gt)} images, {len(gt.boxes)} faces")
    print(f"{'set':9s} {'#preds':>7s} | {'ours best':>9s} {'median':>7s} {'cpu':>6s} | {'from files':>10s} | "
          f"{'loop port':>9s} {'cpu':>7s} | {'ratio wall':>10s} {'cpu':>5s} | max |AP diff| ours / port vs reference")
    for name in a.sets:
        preds, z = golden_preds(SETS[name])
        ref = {s: float(z['ap_' + s]) for s in SETTINGS}
        tb, tm, tc, res = best_of(lambda: evaluate_widerface(preds, gt), a.repeat)
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            write_pred_dir(preds, d)
            tf, _, _, res_f = best_of(lambda: evaluate_widerface(read_pred_dir(d), gt), 1)
        d_ours = max(abs(res[s] - ref[s]) for s in SETTINGS)
        assert max(abs(res_f[s] - ref[s]) for s in SETTINGS) == d_ours
        nan = float('nan')
        tl = cl = d_port = nan
        if not a.no_baseline:
            _, tl, cl, aps = best_of(lambda: loop_evaluate(preds, gt), 1)
            d_port = max(abs(aps[s] - ref[s]) for s in SETTINGS)
        print(f"{name:9s} {len(z['preds_xywhs']):7d} | {tb:8.3f}s {tm:6.3f}s {tc:5.2f}s | {tf:9.3f}s | "
              f"{tl:8.1f}s {cl:6.1f}s | {tl / tm:9.0f}x {cl / tc:4.0f}x | {d_ours:.1e} / {d_port:.1e}", flush=True)
    print("ratio = loop port / ours (median of ours); cpu = process CPU time (robust to other load on the machine);\n"
          "'from files' = read_pred_dir of the written result files + evaluation (one run);\n"
          "the reference itself takes 30.8 s per set on this machine, one process (ANCHORS.md)")

if __name__ == '__main__':
    main()
