"""Benchmark: WIDER FACE evaluation of the full validation set (3226 images, three settings).

Ours (`scrfd_nb.evaluate.evaluate_widerface`, vectorised over the whole set) against a straightforward port of the
reference algorithm (spec §6; per image, per prediction, per threshold Python loops, as the reference runs them),
in the same process, on the golden prediction sets. Both must give the same APs (checked).

    python bench/evaluate.py [--sets good noisy edge unsorted] [--repeat 5]
"""
import argparse, sys, time
from pathlib import Path
import numpy as np
from scrfd_nb.core import shared_file
from scrfd_nb.evaluate import SETTINGS, load_gt_mat, evaluate_widerface, write_pred_dir, read_pred_dir, golden_preds
sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'tests'))
from evaluate_refs import loop_evaluate   # the baseline: the per-image loop port of spec §6, shared with the tests

SETS = {'good': 'widerface_preds_0_good.npz', 'noisy': 'widerface_preds_1_noisy.npz',
        'edge': 'widerface_preds_2_edge.npz', 'unsorted': 'widerface_preds_3_unsorted.npz'}


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
