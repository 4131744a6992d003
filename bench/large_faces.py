"""Recall by face size, the score curves, and the second pass for close-up faces (issue 24 point 3), for the official
det_500m and det_2.5g through the project's WIDER prediction path (`test_widerface.predict_widerface`, mode 0:
keep-ratio resize to 640, score > 0.02, NMS 0.45; loaded into our PyTorch model).

    python bench/large_faces.py [--out /tmp/large_faces] [--models det_500m det_2.5g] [--threads 2]

Three labelled sets, made in --out on first use:
  real     the two WIDER FACE val photos of ../shared/data/images with their boxes from scrfd_labelv2_val.txt
  synth    the synthetic validation set (scrfd_nb.synthetic, default preset: 100 images of 320-640 px, seed 0)
  closeup  a synthetic set made of close-ups (one or two faces of 150-600 px box height in 320-640 px pictures, up to
           0.9 of the short side; 60 images, seed 1)
For every (model, set): one pass at 640 (the default), and the same plus a second pass at 320 merged by NMS
(`--extra-mode 320`): recall at score >= 0.5 and AP per size bucket (evaluate.evaluate_by_size, hard setting = every
face), the best-F1 threshold and recall/precision at 0.3 and 0.5 (evaluate.threshold_curves), and seconds per image
(whole prediction path: read, resize, network, decode, NMS, merge).
"""
import argparse, json, os, subprocess, sys, time
from pathlib import Path
import numpy as np
import torch
from scrfd_nb.core import shared_file
from scrfd_nb.evaluate import load_gt_labelv2, threshold_curves, evaluate_by_size, curves_summary
from scrfd_nb.synthetic import make_synthetic_widerface, Scene
from scrfd_nb.backends import TorchRunner
from scrfd_nb.predict import predict_widerface, list_images
from scrfd_nb.model import load_model

REAL = ('0--Parade/0_Parade_marchingband_1_20.jpg', '19--Couple/19_Couple_Couple_19_743.jpg')


def real_set(root: Path) -> tuple:
    (root/'images').mkdir(parents=True, exist_ok=True)
    lines, keep, out = shared_file('data', 'widerface', 'scrfd_labelv2_val.txt').read_text().splitlines(), False, []
    for l in lines:
        if l.startswith('#'): keep = l.split()[1] in REAL
        if keep: out.append(l)
    for r in REAL:
        p = root/'images'/r; p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists(): os.symlink(shared_file('data', 'images', Path(r).name), p)
    (root/'labelv2.txt').write_text('\n'.join(out) + '\n')
    return root/'images', root/'labelv2.txt'


def sets(out: Path) -> dict:
    s = {'real': real_set(out/'real')}
    v = make_synthetic_widerface(out/'synth', num_train=0, num_val=100, seed=0)/'val'
    s['synth'] = (v/'images', v/'labelv2.txt')
    c = make_synthetic_widerface(out/'closeup', num_train=0, num_val=60, seed=1,
                                 scenes=(Scene('0--Portrait', 1.0, (1, 2), (150, 600)),), max_face_frac=0.9)/'val'
    s['closeup'] = (c/'images', c/'labelv2.txt')
    return s


def run(runner, images, labels, extra):
    items = list_images(images, labels)
    t0 = time.perf_counter()
    preds = predict_widerface(runner, items, 0, progress=False, extra_modes=extra)
    dt = (time.perf_counter() - t0) / len(items)
    gt = load_gt_labelv2(labels)
    return dict(s_per_image=dt, by_size=evaluate_by_size(preds, gt, 0.5), curves=curves_summary(threshold_curves(preds, gt)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default='/tmp/large_faces')
    ap.add_argument('--models', nargs='+', default=['det_500m', 'det_2.5g'])
    ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    data = sets(out)
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
    print(f"`python bench/large_faces.py` — commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"torch {torch.__version__}, {a.threads} threads, load average {os.getloadavg()[0]:.2f} at the start")
    res = {}
    for m in a.models:
        runner = TorchRunner(load_model(shared_file('data', 'models', f'{m}.onnx')))
        for name, (images, labels) in data.items():
            for extra in ((), (320,)):
                res[(m, name, extra)] = r = run(runner, images, labels, extra)
                print(f"{m} {name} {'640+320' if extra else '640'}: {r['s_per_image'] * 1000:.0f} ms/image", file=sys.stderr)
    print(f"(load average {os.getloadavg()[0]:.2f} at the end)\n")
    print('Recall at score >= 0.5 per face size (sqrt(w h) in image px; faces in brackets), 640 alone -> with the 320 pass:\n')
    buckets = [b for b in res[(a.models[0], 'closeup', ())]['by_size']]
    for name in data:
        used = [b for b in buckets if res[(a.models[0], name, ())]['by_size'][b]['faces']]
        print(f"| {name} | " + ' | '.join(f"{b} ({res[(a.models[0], name, ())]['by_size'][b]['faces']})" for b in used) + ' | ms/image |')
        print('|---' * (len(used) + 2) + '|')
        for m in a.models:
            r0, r1 = res[(m, name, ())], res[(m, name, (320,))]
            cells = [f"{r0['by_size'][b]['recall']:.3f} → {r1['by_size'][b]['recall']:.3f}" for b in used]
            print(f"| {m} | " + ' | '.join(cells) + f" | {r0['s_per_image'] * 1000:.0f} → {r1['s_per_image'] * 1000:.0f} |")
        print()
    print('AP per face size, 640 alone -> with the 320 pass:\n')
    for name in data:
        used = [b for b in buckets if res[(a.models[0], name, ())]['by_size'][b]['faces']]
        print(f"| {name} | " + ' | '.join(used) + ' |'); print('|---' * (len(used) + 1) + '|')
        for m in a.models:
            r0, r1 = res[(m, name, ())], res[(m, name, (320,))]
            print(f"| {m} | " + ' | '.join(f"{r0['by_size'][b]['ap']:.3f} → {r1['by_size'][b]['ap']:.3f}" for b in used) + ' |')
        print()
    print('Score thresholds (single pass at 640): best F1 and its threshold; recall / precision at 0.3 and 0.5:\n')
    print('| model | set | faces | best F1 | at score >= | recall / precision at 0.3 | at 0.5 |'); print('|---' * 7 + '|')
    for m in a.models:
        for name in data:
            c = res[(m, name, ())]['curves']['all']
            print(f"| {m} | {name} | {c['faces']} | {c['best_f1']:.3f} | {c['best_f1_threshold']:.3f} | "
                  f"{c['at']['0.3']['recall']:.3f} / {c['at']['0.3']['precision']:.3f} | {c['at']['0.5']['recall']:.3f} / {c['at']['0.5']['precision']:.3f} |")
    (out/'results.json').write_text(json.dumps({f'{m}|{n}|{"+".join(map(str, e)) or "640"}': v for (m, n, e), v in res.items()},
                                               indent=1, default=lambda x: None))


if __name__ == '__main__':
    main()
