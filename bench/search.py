"""The same small architecture search with and without early stopping, side by side (issue 21).

The searches draw the same candidates (trial n draws from the seed (seed, n)), train them with the demo recipe on
the built-in synthetic data and rank them by hard AP; one trains every candidate to the end, the others let
successive halving (ASHA) or Hyperband stop the weak ones at their rungs. Printed: wall time, epochs trained, the best candidate and
its AP for each, and whether early stopping kept the same winner; then the table of the full search and its plot.

    python bench/search.py --out /tmp/bench_search --trials 5 --epochs 30 --eval-every 6 --num-train 160   # ~25 min on 2 CPU cores
    python bench/search.py --out /tmp/bench_search --report   # print the tables again from the two result folders
"""
import argparse, json, os, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from scrfd_nb.search import SearchConfig, search


def machine():
    load = os.getloadavg()[0]
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    import torch
    return f"commit {commit}, torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, load {load:.2f}"


def settings(a, out, pruner):
    return SearchConfig(gflops=a.gflops, space='backbone', template='scrfd_2.5g', trials=a.trials, epochs=a.epochs,
                        eval_every=a.eval_every, img_size=a.img_size, num_train=a.num_train, num_val=a.num_val,
                        pruner=pruner, reduction_factor=a.eta, out=str(out), device='cpu', seed=a.seed, latency=True)


def table(recs):
    rows = ['| trial | status | GFLOPs | params (M) | latency (ms) | epochs | AP easy | medium | hard |', '|---|---|---|---|---|---|---|---|---|']
    for r in sorted(recs, key=lambda r: -(r['ap_hard'] or 0)):
        rows.append(f"| {r['number']} | {r['status']} | {r['gflops']:.3f} | {r['params'] / 1e6:.2f} | {r['latency_ms'] or float('nan'):.1f} | "
                    f"{r['epochs']} | {r['ap_easy'] or 0:.3f} | {r['ap_medium'] or 0:.3f} | {r['ap_hard'] or 0:.3f} |")
    return '\n'.join(rows)


def summary(name, recs, seconds):
    best = max((r for r in recs if r['status'] == 'complete'), key=lambda r: (r['ap_hard'], -r['gflops']))
    epochs = sum(r['epochs'] for r in recs)
    return best, f"| {name} | {seconds / 60:.1f} min | {epochs} | trial {best['number']} | {best['ap_hard']:.3f} | " \
                 f"{sum(r['status'] == 'pruned' for r in recs)} |"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', required=True)
    ap.add_argument('--gflops', type=float, default=1.0)
    ap.add_argument('--trials', type=int, default=8)
    ap.add_argument('--epochs', type=int, default=20)
    ap.add_argument('--eval-every', type=int, default=4)
    ap.add_argument('--img-size', type=int, default=160)
    ap.add_argument('--num-train', type=int, default=240)
    ap.add_argument('--num-val', type=int, default=60)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--eta', type=int, default=2, help="the pruners' reduction factor")
    ap.add_argument('--pruners', default='none,halving,hyperband', help='comma-separated; a pruner whose folder has results is not run again')
    ap.add_argument('--report', action='store_true')
    a = ap.parse_args()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    times = json.loads((out/'times.json').read_text()) if (out/'times.json').exists() else {}
    if not a.report:
        print(machine(), flush=True)
        for pruner in a.pruners.split(','):
            d = out/pruner
            if pruner in times and (d/'results.json').exists(): continue
            shutil.rmtree(d, ignore_errors=True)
            t0 = time.perf_counter(); search(settings(a, d, pruner)); times[pruner] = time.perf_counter() - t0
            (out/'times.json').write_text(json.dumps(times))
        print(machine(), flush=True)
    names = {'none': 'no early stopping', 'halving': 'successive halving (ASHA)', 'hyperband': 'Hyperband'}
    recs = {p: json.loads((out/p/'results.json').read_text()) for p in a.pruners.split(',') if (out/p/'results.json').exists()}
    print(f"\nbackbone step around scrfd_2.5g at {a.gflops} GFLOPs (VGA), {a.trials} candidates x {a.epochs} epochs of "
          f"{a.num_train} synthetic images at {a.img_size} px, evaluated every {a.eval_every}; demo recipe, seed {a.seed}; pruners' eta {a.eta}\n")
    print('| search | wall time | epochs trained | best | best hard AP | pruned |\n|---|---|---|---|---|---|')
    bests = {}
    for p in recs:
        bests[p], line = summary(names[p], recs[p], times.get(p, float('nan')))
        print(line)
    for p in recs:
        if p != 'none' and 'none' in recs:
            print(f"{names[p]}: same winner as without early stopping: {bests['none']['draw'] == bests[p]['draw']}; "
                  f"time {times.get(p, float('nan')) / times.get('none', float('nan')):.2f}x")
    for p in recs: print(f"\n{names[p]}, every candidate:\n" + table(recs[p]))


if __name__ == '__main__':
    main()
