"""Whole training runs in fp32 against bf16 autocast: the demo recipe, the same seeds, final AP (issue 12, point 4b).

Each run is one `python -m scrfd_nb.train` process with the demo recipe (the default without --data-path: 60 epochs
of the built-in synthetic portraits and groups, batch 8, lr 0.05 = 0.2 x 8/32) at `--seed S` and `--amp off|bf16`;
the seed drives the synthetic data, the initialisation and the augmentation, so runs with the same seed differ only
in precision. Validation on `--num-val` images (default 200, so that evaluation noise is small next to training
noise). Every finished run appends one line to the results file; rerunning skips the (seed, amp) pairs already in
it, so the sweep can be spread over several sittings. `--report` prints the table: per precision the mean final
hard AP and its spread, and the paired difference (bf16 - fp32, same seed) with its standard error.

    python bench/amp_runs.py --seeds 0-5 --jobs 2          # run what is missing (nice 19, 1 thread per run)
    python bench/amp_runs.py --report                     # the table from bench/amp_runs.jsonl

On a CPU without bf16 instructions (this project's 2-core AMD EPYC: no AVX512-BF16/AMX) bf16 autocast is emulated
and a run takes about 4x the fp32 time (8.5-9 img/s against 37 img/s at 2 threads).
"""
import argparse, json, math, os, platform, shutil, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'bench' / 'amp_runs.jsonl'


def parse_seeds(s):
    out = []
    for part in s.split(','):
        a, _, b = part.partition('-')
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def done(path):
    if not path.exists(): return set()
    return {(r['seed'], r['amp']) for r in map(json.loads, path.read_text().splitlines()) if r.get('final_ap_hard') is not None}


def one_run(seed, amp, args):
    work = Path(args.work_root) / f'{amp}_s{seed}'
    if work.exists(): shutil.rmtree(work)   # a run cut short earlier: start it again
    cmd = [sys.executable, '-m', 'scrfd_nb.train', '--seed', str(seed), '--amp', amp, '--work-dir', str(work),
           '--num-val', str(args.num_val), '--no-progress']
    env = os.environ | {'OMP_NUM_THREADS': str(args.threads), 'MKL_NUM_THREADS': str(args.threads),
                        'PYTHONPATH': str(ROOT)}   # the scrfd_nb beside this script (a frozen clone keeps a sweep on one commit)
    t0 = time.time()
    p = subprocess.run(['nice', '-n', str(args.nice)] + cmd, env=env, cwd='/tmp', capture_output=True, text=True)
    wall = time.time() - t0
    rows = [json.loads(l) for l in (work / 'metrics.jsonl').read_text().splitlines()] if (work / 'metrics.jsonl').exists() else []
    evals = [r for r in rows if 'ap_hard' in r]
    losses = [r['loss'] for r in rows if 'loss' in r]
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    rec = dict(seed=seed, amp=amp, rc=p.returncode, final_ap_hard=evals[-1]['ap_hard'] if evals and p.returncode == 0 else None,
               ap_by_epoch={r['epoch']: round(r['ap_hard'], 4) for r in evals}, final_loss=losses[-1] if losses else None,
               loss_curve=[round(x, 4) for x in losses[::10]], wall_s=round(wall), threads=args.threads,
               num_val=args.num_val, commit=commit, torch=__import__('torch').__version__, cpu=platform.processor() or platform.machine(),
               finished=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), cmd=' '.join(cmd))
    if p.returncode != 0: rec['stderr_tail'] = p.stderr[-2000:]
    with open(args.out, 'a') as f: f.write(json.dumps(rec) + '\n')
    print(f"seed {seed} amp {amp}: rc {p.returncode}, final hard AP {rec['final_ap_hard']}, {wall/60:.1f} min", flush=True)
    return rec


def mean_sd(xs):
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float('nan')
    return m, sd


def report(path):
    rows = [r for r in map(json.loads, Path(path).read_text().splitlines()) if r.get('final_ap_hard') is not None]
    by = {}
    for r in rows: by.setdefault(r['amp'], {})[r['seed']] = r
    print('| precision | runs | seeds | mean final AP (hard) | sd over seeds | se of the mean | mean wall (min) |')
    print('|---|---|---|---|---|---|---|')
    for amp in ('off', 'bf16'):
        if amp not in by: continue
        aps = [r['final_ap_hard'] for r in by[amp].values()]
        m, sd = mean_sd(aps)
        wall = sum(r['wall_s'] for r in by[amp].values()) / len(aps) / 60
        print(f"| {'fp32 (--amp off)' if amp == 'off' else 'bf16 autocast'} | {len(aps)} | {sorted(by[amp])} | {m:.4f} | "
              f"{sd:.4f} | {sd / math.sqrt(len(aps)):.4f} | {wall:.1f} |")
    common = sorted(set(by.get('off', {})) & set(by.get('bf16', {})))
    if common:
        d = [by['bf16'][s]['final_ap_hard'] - by['off'][s]['final_ap_hard'] for s in common]
        m, sd = mean_sd(d)
        se = sd / math.sqrt(len(d)) if len(d) > 1 else float('nan')
        print(f"\npaired difference bf16 - fp32 over seeds {common}: {m:+.4f} (sd {sd:.4f}, se {se:.4f}; "
              f"resolved to +-{2 * se:.3f} at 2 se); per seed: {', '.join(f'{s}: {x:+.3f}' for s, x in zip(common, d))}")


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--seeds', default='0-5', help='seeds, e.g. 0-5 or 0,2,7')
    ap.add_argument('--amp', nargs='+', default=['off', 'bf16'], choices=['off', 'bf16'])
    ap.add_argument('--jobs', type=int, default=2, help='runs at a time')
    ap.add_argument('--threads', type=int, default=1, help='OMP threads per run')
    ap.add_argument('--nice', type=int, default=19)
    ap.add_argument('--num-val', type=int, default=200)
    ap.add_argument('--work-root', default='/tmp/amp_runs')
    ap.add_argument('--out', default=str(RESULTS))
    ap.add_argument('--report', action='store_true')
    a = ap.parse_args()
    if a.report:
        if not Path(a.out).is_file(): sys.exit(f'--out {a.out}: no results yet (run without --report first)')
        report(a.out); sys.exit(0)
    have = done(Path(a.out))
    todo = [(s, m) for s in parse_seeds(a.seeds) for m in a.amp if (s, m) not in have]
    print(f"{len(todo)} runs to do: {todo}", flush=True)
    with ThreadPoolExecutor(a.jobs) as ex: list(ex.map(lambda sm: one_run(*sm, a), todo))
    report(a.out)
