"""The whole training step compiled once (issue 27): compile time, then the compiled step against the eager step in
the same run, and the demo job with and without `--compile-step`.

  python bench/static_step.py                                  # scrfd_500m_bnkps, the demo's shapes: batch 8, 160 px, cap 16
  python bench/static_step.py --size 320 --batch 4 --demo-iters 0

Both steps are the trainer's own `train.train_step` (forward, ATSS targets, losses, backward, SGD): eager on the
network, or on a `static.WholeStep` (forward + targets + losses as one `torch.compile(fullgraph=True, dynamic=False)`
graph, backward compiled by AOTAutograd, and the SGD update as a second graph, `static.CompiledSGD`). Batches have
static shapes (faces padded to --cap) and a different face count each step, and the lr changes every step (a
warmup); eager and compiled steps alternate, each on its own copy of the same initial weights, and the table gives
medians after the first compiled step (which includes both compilations, reported on their own: the step graph in
the forward phase, the SGD graph in the update phase). torch's own counters afterwards: graphs compiled and graph
breaks; and how far the two copies' weights have drifted apart. The demo job (`python -m scrfd_nb.train`, built-in synthetic
data, one process) runs `--perf N` with and without `--compile-step`: its total wall time (compilation included)
and the trainer's FPS over the iterations after the first five. Inductor's caches go to a fresh folder per run, so
every compilation is a cold one.
"""
import argparse, copy, os, re, statistics, subprocess, sys, tempfile, time
from functools import partial
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault('TORCHINDUCTOR_CACHE_DIR', tempfile.mkdtemp(prefix='inductor_'))   # cold compiles, before torch loads
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from scrfd_nb.model import build_model
from scrfd_nb.runtime import setup_runtime, make_sgd
from scrfd_nb.train import train_step, compute_losses
from scrfd_nb.static import WholeStep, compile_counters
from scrfd_nb.benchmark import machine
from gpu import fake_batch


def header(a) -> str:
    return f"# python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}\n# {machine()}, {a.threads} threads"

def step_bench(a):
    rt = setup_runtime('cpu', 'off')
    torch.manual_seed(0)
    base = build_model(a.model).train()
    nets = {'eager': base, 'compiled': copy.deepcopy(base)}
    w0 = torch.cat([p.detach().flatten() for p in base.parameters()])
    opts = {k: make_sgd(m.parameters(), 1e-3) for k, m in nets.items()}
    runners = {'eager': nets['eager'], 'compiled': WholeStep(nets['compiled'], partial(compute_losses, nets['compiled']))}
    batches = [fake_batch(a.batch, a.size, torch.device('cpu'), G=a.cap, seed=s, channels_last=False) for s in range(a.steps + 1)]
    T = {'eager': [], 'compiled': []}
    c0, ph = compile_counters(), {}
    def mark(phase):   # train_step's phase hook: seconds since the previous mark (ph['t'] at the start)
        now = time.perf_counter(); ph[phase] = now - ph['t']; ph['t'] = now
    for i, b in enumerate(batches):
        lr = 1e-3 * (0.1 + 0.9 * i / len(batches))
        for k in ('compiled', 'eager') if i % 2 else ('eager', 'compiled'):
            t = ph['t'] = time.perf_counter()
            terms, ok = train_step(runners[k], nets[k], b, opts[k], lr, rt, mark=mark if (i, k) == (0, 'compiled') else None)
            float(terms['loss'])
            T[k].append(time.perf_counter() - t)
        if i == 0: first, phases0 = T['compiled'][0], dict(ph)
    c = compile_counters()
    w = {k: torch.cat([p.detach().flatten() for p in m.parameters()]) for k, m in nets.items()}
    drift = float((w['compiled'] - w['eager']).norm() / (w['eager'] - w0).norm())   # apart, relative to how far training moved them
    faces = sorted({int(n) for b in batches for n in b['gt_mask'].sum(1)})
    e, comp = statistics.median(T['eager'][1:]), statistics.median(T['compiled'][1:])
    print(f"\n## step: {a.model}, batch {a.batch}, {a.size}x{a.size}, cap {a.cap} faces/image (batches with {faces[0]}-{faces[-1]} "
          f"faces per image), fp32, median of {a.steps} steps after the first")
    print(f"| | eager | compiled (whole step) | ratio eager / compiled |\n|---|---|---|---|")
    print(f"| step time | {1e3 * e:.1f} ms | {1e3 * comp:.1f} ms | {e / comp:.2f} |")
    print(f"| images/s | {a.batch / e:.1f} | {a.batch / comp:.1f} | |")
    print(f"\nfirst compiled step (compilation included): {first:.1f} s -> compile time ~ {first - comp:.1f} s "
          f"(forward phase, the step graph: {phases0['forward']:.1f} s; backward {phases0['backward']:.1f} s; "
          f"SGD update, its graph: {phases0['step']:.1f} s); graphs compiled: {c['graphs'] - c0['graphs']}, graph breaks: "
          f"{c['graph_breaks'] - c0['graph_breaks']} over {len(batches)} batches of different face counts and lrs; "
          f"weights after {len(batches)} steps: |compiled - eager| / |eager - initial| = {drift:.1e}")


def demo_job(a):
    print(f"\n## demo job: python -m scrfd_nb.train (demo recipe, built-in synthetic data, one process) --perf {a.demo_iters}")
    print("| run | wall time (compilation included) | FPS after the first 5 iterations |\n|---|---|---|")
    work = Path(tempfile.mkdtemp(prefix='static_demo_'))
    from scrfd_nb.train import RunConfig, synthetic_data
    synthetic_data(RunConfig(), work / 'synthetic')          # the demo's data, generated before any timing
    base = ['--device', 'cpu', '--perf', str(a.demo_iters), '--no-progress', '--work-dir', str(work)]
    for name, extra in (('eager, dynamic shapes (the default)', []), ('eager, --static-shapes', ['--static-shapes']),
                        ('--compile-step', ['--compile-step'])):
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix='inductor_'), OMP_NUM_THREADS=str(a.threads))
        t = time.perf_counter()
        r = subprocess.run([sys.executable, '-m', 'scrfd_nb.train', *base, *extra], cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        fps = re.search(r'FPS@all = .*? = ([\d.]+) img/s', r.stdout)
        if r.returncode or not fps: sys.exit(f"{name}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        print(f"| {name} | {wall:.0f} s | {float(fps[1]):.1f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='scrfd_500m_bnkps'); p.add_argument('--size', type=int, default=160)
    p.add_argument('--batch', type=int, default=8); p.add_argument('--cap', type=int, default=16)
    p.add_argument('--steps', type=int, default=10); p.add_argument('--threads', type=int, default=2)
    p.add_argument('--demo-iters', type=int, default=25, help='iterations of the demo job per variant (0: skip it)')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(header(a))
    step_bench(a)
    if a.demo_iters: demo_job(a)


if __name__ == '__main__':
    main()
