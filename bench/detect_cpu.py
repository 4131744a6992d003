"""CPU face detection: our `detect(model, image)` (and its levers) vs insightface 2.1's onnxruntime `SCRFD.detect`, side by side.

    python bench/detect_cpu.py [--models det_500m det_2.5g] [--threads 1 2] [--runs 15] [--image NAME]

Same image (../shared/data/images/solvay_conference_1927.jpg by default), same official weights, 640x640 input,
score 0.5, NMS 0.4. Per model and thread count the variants run interleaved, one call each in turn (so a change of
the machine's load hits all alike), median of --runs after 2 warm-ups; every variant's detections are checked
against insightface's (same count, boxes within 0.05 px, scores within 1e-4) before timing. Variants:
  insightface   SCRFD(model_file=official .onnx, session with N threads).detect
  torch         detect(load_model(official), image) (torch.set_num_threads(N))
  torch fused   the same with BatchNorm folded into the convolutions (export.fuse_model)
  torch fused+cl   fused, channels_last weights and input
  OnnxDetector  export.OnnxDetector(model, threads=N).detect: our export of the weights (BN folded, dynamic shape)
                in onnxruntime, decoded by export.detect_onnx (= detect(model, image)'s code)
The ratio column is time / insightface's time in the same run. The commit and the load average are printed.
"""
import argparse, statistics, subprocess, time
from pathlib import Path
import cv2
import numpy as np
import onnxruntime as ort
import torch
from scrfd_nb.detect import detect
from scrfd_nb.core import shared_file
from scrfd_nb.model import load_model
from scrfd_nb.backends import OnnxDetector
from scrfd_nb.export import fuse_model


def session(path, threads):
    so = ort.SessionOptions(); so.log_severity_level = 3
    so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so, providers=['CPUExecutionProvider'])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', default=['det_500m', 'det_2.5g'])
    ap.add_argument('--threads', nargs='+', type=int, default=[1, 2])
    ap.add_argument('--runs', type=int, default=15)
    ap.add_argument('--image', default='solvay_conference_1927.jpg')
    a = ap.parse_args(argv)
    from insightface.model_zoo.scrfd import SCRFD
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    load = lambda: ' '.join(open('/proc/loadavg').read().split()[:3])
    print(f"commit {commit}, torch {torch.__version__}, onnxruntime {ort.__version__}, image {a.image}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {load()}")
    img = cv2.imread(str(shared_file('data', 'images', a.image)))
    rows = []
    for name in a.models:
        path = shared_file('data', 'models', f'{name}.onnx')
        model = load_model(path).eval()
        fused = fuse_model(model)
        fcl = fuse_model(model).to(memory_format=torch.channels_last)
        for th in a.threads:
            torch.set_num_threads(th)
            det = SCRFD(model_file=str(path), session=session(path, th))
            det.prepare(-1, input_size=(640, 640), det_thresh=0.5, nms_thresh=0.4)
            fast = OnnxDetector(model, threads=th)
            variants = {
                'insightface': lambda: det.detect(img, input_size=(640, 640)),
                'torch': lambda: detect(model, img),
                'torch fused': lambda: detect(fused, img),
                'torch fused+cl': lambda: detect(fcl, img),
                'OnnxDetector': lambda: fast.detect(img),
            }
            with torch.inference_mode():
                ref, _ = variants['insightface']()
                for k, f in variants.items():
                    out = f()
                    b, s = (out[0][:, :4], out[0][:, 4]) if k == 'insightface' else out[:2]
                    assert len(b) == len(ref), (k, len(b), len(ref))
                    np.testing.assert_allclose(b, ref[:, :4], atol=0.05, err_msg=k)
                    np.testing.assert_allclose(s, ref[:, 4], atol=1e-4, err_msg=k)
                    for _ in range(2): f()
                t = {k: [] for k in variants}
                for _ in range(a.runs):
                    for k, f in variants.items():
                        t0 = time.perf_counter(); f(); t[k].append(1e3 * (time.perf_counter() - t0))
            med = {k: statistics.median(v) for k, v in t.items()}
            for k in variants:
                rows.append((name, th, k, med[k], med[k] / med['insightface'], len(ref)))
            print(f'{name}, {th} thread(s): ' + ', '.join(f'{k} {v:.1f} ms' for k, v in med.items()) + f'; load {load()}', flush=True)
    print(f'load average at the end {load()}')
    print('| model | threads | variant | ms (median) | vs insightface | faces |')
    print('|---|---|---|---|---|---|')
    for r in rows: print(f'| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.2f}x | {r[5]} |')


if __name__ == '__main__': main()
