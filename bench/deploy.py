"""fp32 vs --simplify vs --fp16 vs --int8 exports of the official keypoint models, measured side by side (issue 15 point 2).

    python bench/deploy.py [--models det_500m det_2.5g] [--synth DIR] [--calib DIR] [--runs 30] [--work DIR]

For each model: our fixed 640x640 export of the official weights (fp32), the same simplified (onnxsim), in float16
(`export.to_fp16`) and int8 QDQ (`export.quantize_int8`, calibrated on 32 images of a synthetic set made with
seed 1, not the evaluation set). Then, all in onnxruntime on the CPU:
  latency   one 640x640 input (solvay_conference_1927.jpg through detect.preprocess), 1 thread, the variants
            interleaved run by run (so a change of machine load hits all alike), median of --runs after 3 warm-ups
  agreement the fp32 file's faces (score >= 0.5) on every photo of ../shared/data/images: the fraction found again
            by the variant (one-to-one at IoU >= 0.5) and the mean |corner difference| in px of the matched boxes
  (the official .onnx of the same weights is measured alike, as a reference row)
  AP        synthetic validation set (100 images, seed 0; score > 0.02, NMS 0.4), and the WIDER protocol on the
            real WIDER val photos of ../shared/data/images (their boxes from scrfd_labelv2_val.txt)
"""
import argparse, os, statistics, subprocess, sys, time
from pathlib import Path
import cv2
import numpy as np
import onnxruntime as ort
from scrfd_nb.core import shared_file
from scrfd_nb.detect import preprocess
from scrfd_nb.evaluate import evaluate_widerface, greedy_match, load_gt_labelv2, evaluate_landmarks
from scrfd_nb.export import export_onnx, to_fp16, quantize_int8, calib_images, detect_onnx
from scrfd_nb.model import load_model
from scrfd_nb.synthetic import ensure_synthetic
from scrfd_nb.predict import to_xywh


def session(path, threads):
    so = ort.SessionOptions(); so.log_severity_level = 3
    so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=so, providers=['CPUExecutionProvider'])


def latency(paths, x, runs):
    ss = {k: session(p, 1) for k, p in paths.items()}
    for s in ss.values():
        for _ in range(3): s.run(None, {'input.1': x})
    t = {k: [] for k in ss}
    for _ in range(runs):
        for k, s in ss.items():
            t0 = time.perf_counter(); s.run(None, {'input.1': x}); t[k].append(1e3 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in t.items()}


def agreement(ref_dets, dets):
    found = n = 0; err = []
    for (rb, rs), (b, s) in zip(ref_dets, dets):
        m = greedy_match(to_xywh(b, s), to_xywh(rb, rs)[:, :4])
        n += len(rb); found += int((m >= 0).sum())
        if (m >= 0).any(): err.append(np.abs(b[m[m >= 0]] - rb[m >= 0]).ravel())
    return found / max(n, 1), float(np.concatenate(err).mean()) if err else float('nan'), n


def wider_subset(names, out):
    "The labelv2 blocks of the given WIDER val images (boxes only) as a file."
    lines, keep = [], False
    for line in shared_file('data', 'widerface', 'scrfd_labelv2_val.txt').read_text().splitlines():
        if line.startswith('#'): keep = Path(line.split()[1]).stem in names
        if keep: lines.append(line)
    Path(out).write_text('\n'.join(lines) + '\n')
    return load_gt_labelv2(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', default=['det_500m', 'det_2.5g'])
    ap.add_argument('--synth', default='/tmp/scrfd_deploy/synth', help='synthetic validation set (made if missing)')
    ap.add_argument('--calib', default='/tmp/scrfd_deploy/calib', help='synthetic calibration set (made if missing)')
    ap.add_argument('--work', default='/tmp/scrfd_deploy/models')
    ap.add_argument('--runs', type=int, default=30)
    a = ap.parse_args(argv)
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    print(f"commit {commit}, onnxruntime {ort.__version__}, {os.cpu_count()} CPUs, load average at start "
          f"{' '.join(open('/proc/loadavg').read().split()[:3])}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    synth = ensure_synthetic(a.synth, num_train=0, num_val=100, seed=0)
    calib = ensure_synthetic(a.calib, num_train=0, num_val=32, seed=1)
    gt = load_gt_labelv2(synth/'val'/'labelv2.txt')
    photos = sorted(p for p in shared_file('data', 'images').iterdir() if p.suffix in ('.jpg', '.png'))
    imgs = [cv2.imread(str(p)) for p in photos]
    Path(a.work).mkdir(parents=True, exist_ok=True)
    wgt = wider_subset({p.stem for p in photos}, Path(a.work)/'wider_subset.txt')
    print(f'WIDER val photos with ground truth: {len(wgt)} ({", ".join(wgt.names)}), {len(wgt.boxes)} faces')
    x = preprocess([cv2.imread(str(shared_file('data', 'images', 'solvay_conference_1927.jpg')))], 640)[0].numpy()
    rows = []
    for name in a.models:
        model = load_model(shared_file('data', 'models', f'{name}.onnx'))
        w = Path(a.work)/name; w.mkdir(parents=True, exist_ok=True)
        paths = {'fp32': export_onnx(model, w/'fp32.onnx', shape=(640, 640), dynamic=False)}
        paths['fp32 simplified'] = export_onnx(model, w/'sim.onnx', shape=(640, 640), dynamic=False, simplify=True)
        paths['fp16'] = to_fp16(paths['fp32'], w/'fp16.onnx')
        t = time.perf_counter()
        paths['int8 QDQ'] = quantize_int8(paths['fp32'], w/'int8.onnx', calib_images(calib/'val'/'images', 32), input_size=640)
        print(f'{name}: int8 calibration on 32 images took {time.perf_counter() - t:.0f} s')
        paths['official file (fp32)'] = shared_file('data', 'models', f'{name}.onnx')
        lat = latency(paths, x, a.runs)
        res = {}
        for k, p in paths.items():
            s = session(p, 2)
            dets = [detect_onnx(s, im)[:2] for im in imgs]
            preds, kps = {}, {}
            for ev, nm in zip(gt.events, gt.names):
                b, sc, kp = detect_onnx(s, str(synth/'val'/'images'/ev/f'{nm}.jpg'), score_thr=0.02)
                preds.setdefault(ev, {})[nm] = to_xywh(b, sc); kps.setdefault(ev, {})[nm] = kp
            wp = {}
            for ev, nm in zip(wgt.events, wgt.names):
                b, sc, _ = detect_onnx(s, str(photos[[q.stem for q in photos].index(nm)]), score_thr=0.02)
                wp.setdefault(ev, {})[nm] = to_xywh(b, sc)
            res[k] = dict(dets=dets, ap=evaluate_widerface(preds, gt)['easy'], nme=evaluate_landmarks(preds, kps, gt)['nme'],
                          wider=evaluate_widerface(wp, wgt))
        for k in paths:
            rec, err, n = agreement(res['fp32']['dets'], res[k]['dets'])
            extra = sum(len(d[0]) for d in res[k]['dets']) - round(rec * n)
            r = res[k]
            rows.append((name, k, paths[k].stat().st_size / 2**20, lat[k], lat[k] / lat['fp32'], rec, n, err, extra,
                         r['ap'], r['ap'] - res['fp32']['ap'], r['nme'], r['wider']['hard'], r['wider']['hard'] - res['fp32']['wider']['hard']))
    print(f"load average at the end {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print('| model | file | MiB | ms (1 thread) | vs fp32 | fp32 faces found (IoU 0.5) | mean box error px | extra faces | '
          'synthetic AP | ΔAP | landmark NME | WIDER AP (real photos, hard) | ΔAP |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f'| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.2f}x | {100 * r[5]:.1f} % of {r[6]} | {r[7]:.2f} | {r[8]} | '
              f'{r[9]:.4f} | {r[10]:+.4f} | {r[11]:.4f} | {r[12]:.4f} | {r[13]:+.4f} |')


if __name__ == '__main__': main()
