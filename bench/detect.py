"""Post-processing speed: our batched torch decoder + NMS vs the reference numpy decoder of insightface's
`tools/scrfd.py` (decode, threshold, sort, +1 greedy NMS), on the same stored raw outputs, in one run.

    python bench/detect.py [--reps 20]

Cases: the official det_500m ONNX outputs on the Solvay photo at the deployment threshold 0.5 (29 faces), and the
golden 500m_bnkps head outputs at the evaluation threshold 0.02 (~1150 kept of ~2400 candidates), one image and a
batch of 2. Prints median milliseconds, the ratio baseline/ours, and checks that both give the same detections."""
import argparse, sys, time
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scrfd_nb.core import golden, shared_file
from scrfd_nb.anchors import feat_sizes_for
from scrfd_nb.detect import postprocess_flat


def ref_decode(outs, thresh, input_hw=(640, 640), det_scale=1.0, nms_thresh=0.4, strides=(8, 16, 32), A=2):
    "insightface tools/scrfd.py `forward` + `detect` + `nms` (numpy), on its 9 (or 6) output arrays."
    fmc = len(strides)
    scores_l, boxes_l, kps_l = [], [], []
    use_kps = len(outs) == 9
    for i, s in enumerate(strides):
        scores, bb = outs[i][:, 0], outs[i + fmc] * s
        h, w = input_hw[0] // s, input_hw[1] // s
        ac = np.stack(np.mgrid[:h, :w][::-1], axis=-1).astype(np.float32)
        ac = np.stack([(ac * s).reshape(-1, 2)] * A, axis=1).reshape(-1, 2)
        pos = np.where(scores >= thresh)[0]
        b = np.stack([ac[:, 0] - bb[:, 0], ac[:, 1] - bb[:, 1], ac[:, 0] + bb[:, 2], ac[:, 1] + bb[:, 3]], -1)
        scores_l.append(scores[pos, None]); boxes_l.append(b[pos])
        if use_kps:
            k = outs[i + 2 * fmc] * s
            kps_l.append((np.tile(ac, 5) + k).reshape(-1, 5, 2)[pos])
    scores = np.vstack(scores_l)
    order = scores.ravel().argsort()[::-1]
    pre = np.hstack((np.vstack(boxes_l) / det_scale, scores)).astype(np.float32, copy=False)[order]
    x1, y1, x2, y2, sc = pre.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    o, keep = sc.argsort()[::-1], []
    while o.size > 0:
        i = o[0]; keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[o[1:]]) - np.maximum(x1[i], x1[o[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[o[1:]]) - np.maximum(y1[i], y1[o[1:]]) + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[o[1:]] - inter)
        o = o[np.where(ovr <= nms_thresh)[0] + 1]
    kps = (np.vstack(kps_l) / det_scale)[order][keep] if use_kps else None
    return pre[keep], kps


def median_ms(f, reps):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--reps', type=int, default=20)
    a = ap.parse_args(argv)
    # case 1: official ONNX outputs, real photo, threshold 0.5
    z = np.load(shared_file('data', 'images', 'solvay_conference_1927.det_500m.outputs640.npz'))
    solvay = [z[f'{k}_{s}'] for k in ('score', 'bbox', 'kps') for s in (8, 16, 32)]
    # case 2: golden head outputs (logits) -> the ONNX layout (sigmoid, flattened), threshold 0.02
    ho = golden('scrfd_500m_bnkps_head_outputs.npz')
    def flat(i):
        out = []
        for k, C in (('cls_score', 1), ('bbox_pred', 4), ('kps_pred', 10)):
            for s in (8, 16, 32):
                t = torch.from_numpy(ho[f'{k}_s{s}'][i]).permute(1, 2, 0).reshape(-1, C)
                out.append((t.sigmoid() if C == 1 else t).numpy())
        return out
    g0, g1 = flat(0), flat(1)
    fs = feat_sizes_for(640, 640)
    meta = [dict(img_hw=(640, 640), scale=(1.0, 1.0))]

    def ours(outs_list, thr):
        sc = torch.from_numpy(np.stack([np.concatenate(o[0:3])[:, 0] for o in outs_list]))
        bb = torch.from_numpy(np.stack([np.concatenate(o[3:6]) for o in outs_list]))
        kp = torch.from_numpy(np.stack([np.concatenate(o[6:9]) for o in outs_list]))
        return postprocess_flat(sc, bb, kp, fs, meta * len(outs_list), 'insightface', thr)

    rows = []
    for name, outs_list, thr in [('solvay det_500m, thr 0.5, B=1', [solvay], 0.5),
                                 ('golden 500m_bnkps, thr 0.02, B=1', [g0], 0.02),
                                 ('golden 500m_bnkps, thr 0.02, B=2', [g0, g1], 0.02)]:
        for o, d in zip(outs_list, ours(outs_list, thr)):   # same detections as the reference decoder
            det, kps = ref_decode(o, thr)
            assert len(det) == len(d['scores']), (name, len(det), len(d['scores']))
            assert np.abs(det[:, :4] - d['boxes'].numpy()).max() < 1e-3 and np.abs(kps - d['kps'].numpy()).max() < 1e-3
        t_ref = median_ms(lambda: [ref_decode(o, thr) for o in outs_list], a.reps)
        t_ours = median_ms(lambda: ours(outs_list, thr), a.reps)
        n = sum(len(ref_decode(o, thr)[0]) for o in outs_list)
        rows.append((name, n, t_ref, t_ours))
    print(f'torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); median of {a.reps} runs')
    print(f'| case | kept | reference numpy ms | ours ms | ratio (ref/ours) |')
    print(f'|---|---|---|---|---|')
    for name, n, r, o in rows: print(f'| {name} | {n} | {r:.2f} | {o:.2f} | {r / o:.2f} |')


if __name__ == '__main__':
    main()
