"""Every runtime's accuracy and speed in one table (issue 25): `python -m scrfd_nb.benchmark` on det_500m, det_2.5g and
a demo-trained model, side by side with onnxruntime fp32 (the baseline insightface ships) in the same run.

    python bench/runtimes.py [--models det_500m det_2.5g DEMO.pt] [--threads 1] [--runs 15] [--num-val 50]

Validation set: a synthetic set (--num-val images at 640, seed 0, made on first use); int8 calibration: another
synthetic set (32 images, seed 1), the same for onnxruntime and OpenVINO; photos: ../shared/data/images (the recall of
PyTorch's faces, the worst box error, and the image timed). Each model is one benchmark run (its rows interleaved
run by run when timed); the extra column is each row's batch-1 latency over onnxruntime fp32's in that run.
"""
import argparse, json, os, subprocess, sys, tempfile
from pathlib import Path
from scrfd_nb.core import shared_file
from scrfd_nb.synthetic import ensure_synthetic


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', default=['det_500m', 'det_2.5g'], help='official names or weight files')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--runs', type=int, default=15)
    ap.add_argument('--num-val', type=int, default=50)
    ap.add_argument('--input-size', type=int, default=640)
    ap.add_argument('--work', default='/tmp/scrfd_runtimes')
    ap.add_argument('--runtimes', nargs='+', help='passed on to the benchmark')
    a = ap.parse_args(argv)
    work = Path(a.work)
    val = ensure_synthetic(work/'synth', num_train=0, num_val=a.num_val, seed=0)/'val'
    calib = ensure_synthetic(work/'calib', num_train=0, num_val=32, seed=1)/'val'/'images'
    for m in a.models:
        w = Path(m) if Path(m).is_file() else shared_file('data', 'models', f'{m}.onnx')
        out = work/f'{w.stem}.json'
        cmd = [sys.executable, '-m', 'scrfd_nb.benchmark', '--weights', str(w), '--data', str(val), '--images',
               str(shared_file('data', 'images')), '--calib', str(calib), '--input-size', str(a.input_size),
               '--threads', str(a.threads), '--runs', str(a.runs), '--json', str(out), '--work', str(work/w.stem)]
        if a.runtimes: cmd += ['--runtimes', *a.runtimes]
        print(f'## {m}\n', flush=True)
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        print(r.stdout, flush=True)
        if r.returncode: sys.exit(f'{m}: the benchmark exited {r.returncode}')
        rows = json.loads(out.read_text())
        base = next((x['latency_ms'] for x in rows if (x['runtime'], x['precision']) == ('onnxruntime', 'fp32')), None)
        if base:
            print('| runtime | precision | ms (batch 1) | vs onnxruntime fp32 |\n|---|---|---|---|')
            for x in rows:
                if x['latency_ms']: print(f"| {x['runtime']} | {x['precision']} | {x['latency_ms']:.1f} | {x['latency_ms'] / base:.2f}x |")
            print(flush=True)


if __name__ == '__main__': main()
