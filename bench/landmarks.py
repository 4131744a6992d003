"""Landmark NME (and AP) of detectors on a labelv2 validation set with keypoints, through result files with keypoints.

    python bench/landmarks.py --data DIR [--models det_500m det_2.5g CKPT] [--input-size 640 160] [--out /tmp/lm] [--num-val 100]

DIR/val/labelv2.txt is used as it is when it exists (e.g. a training run's work_dir/synthetic); otherwise DIR is
created by scrfd_nb.synthetic.ensure_synthetic (num_train 0, --num-val images, seed 0).
Each model (an official file in ../shared/data/models, or a path) runs `detect(model, image)` (insightface preprocessing,
at each --input-size, score > 0.02, NMS 0.4) on every image; the detections with their keypoints are written as 15-number WIDER
result files to OUT/<model>/ and scored by `python -m scrfd_nb.evaluate` (AP and landmark NME), whose output is printed.
"""
import argparse, subprocess, sys, time
from pathlib import Path
import cv2
import numpy as np
from scrfd_nb.detect import detect
from scrfd_nb.core import shared_file
from scrfd_nb.evaluate import write_pred_dir, load_gt_labelv2
from scrfd_nb.model import load_model
from scrfd_nb.synthetic import ensure_synthetic
from scrfd_nb.predict import to_xywh


def predict(model, images_dir, gt, score_thr=0.02, nms_thr=0.4, input_size=640):
    preds, kps = {}, {}
    for ev, nm in zip(gt.events, gt.names):
        img = cv2.imread(str(Path(images_dir)/ev/f'{nm}.jpg'))
        b, s, k = detect(model, img, score_thr=score_thr, nms_thr=nms_thr, input_size=input_size)
        preds.setdefault(ev, {})[nm] = to_xywh(b, s)
        kps.setdefault(ev, {})[nm] = np.zeros((0, 5, 2), np.float32) if k is None else k
    return preds, kps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--data', required=True)
    ap.add_argument('--models', nargs='+', default=['det_500m', 'det_2.5g'])
    ap.add_argument('--out', default='/tmp/scrfd_landmarks')
    ap.add_argument('--num-val', type=int, default=100)
    ap.add_argument('--input-size', type=int, nargs='+', default=[640], help='network input sides to run each model at')
    a = ap.parse_args(argv)
    root = Path(a.data)   # an existing labelv2 set (e.g. a training run's work_dir/synthetic) is used as it is
    if not (root/'val'/'labelv2.txt').is_file(): root = ensure_synthetic(a.data, num_train=0, num_val=a.num_val, seed=0)
    gt_file = root/'val'/'labelv2.txt'
    gt = load_gt_labelv2(gt_file)
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    print(f'commit {commit}; {len(gt)} images, {len(gt.boxes)} faces; load average {open("/proc/loadavg").read().split()[:3]}')
    for name in a.models:
        path = Path(name) if Path(name).is_file() else shared_file('data', 'models', f'{name}.onnx')
        model = load_model(path)
        for size in a.input_size:
            t = time.perf_counter()
            preds, kps = predict(model, root/'val'/'images', gt, input_size=size)
            out = write_pred_dir(preds, Path(a.out)/f'{path.stem}_{size}', kps=kps)
            cmd = [sys.executable, '-m', 'scrfd_nb.evaluate', '--pred', str(out), '--gt', str(gt_file)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            print(f'## {path} at {size} ({time.perf_counter() - t:.0f} s): python -m scrfd_nb.evaluate --pred {out} --gt {gt_file}')
            print(r.stdout.strip(), r.stderr.strip())


if __name__ == '__main__': main()
