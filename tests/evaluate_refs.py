"""The WIDER FACE evaluation protocol (spec §6) as a straightforward per-image loop port of the reference: per image, per
prediction, per threshold Python loops, as the reference runs them. The oracle of tests/test_evaluate.py (random scenes)
and the baseline of bench/evaluate.py; `scrfd_nb.evaluate.evaluate_widerface` is what the package runs."""
import numpy as np
from scrfd_nb.evaluate import SETTINGS


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
