"""Channels-last BatchNorm on the CPU: where its precision goes, and what each way back costs (issue 26).

    python bench/bn_precision.py [--steps 5] [--threads 2] [--skip-golden]

(A) One BatchNorm in isolation, float32 against float64, on the shapes scrfd_500m_bnkps feeds its BatchNorms at
    batch 4, 640x640 (the largest five), inputs with mean 0 and mean 3 (a one-pass-variance cancellation would show
    as a difference between the two), a random and a structured (ramp x noise) output gradient:
      NCHW native         ATen's contiguous kernel: statistics summed in float64; backward sums per (n, c) plane
      channels-last native ATen's channels-last kernel: each thread adds its rows into a float32 buffer, in order
      channels-last precise `runtime.PreciseBatchNorm2d` (what `--channels-last` uses on a CPU): cascade (pairwise)
                          float32 sums of the channels-last tensor (`Tensor.sum`), two-pass variance, eval-mode kernel
                          for the output, cascade-summed backward
(B) The whole first iteration of the reference's trajectory (golden (h): its initial state, its first batch,
    1 thread): the gradient of every parameter in float64 (the exact gradient, up to float64 rounding) against the
    reference's own float32 gradient and ours in each layout, and the two checks tests/test_trajectory.py makes of
    it (global norm within 1e-4 of the reference's, every tensor within 1e-2 relative L2).
(C) The training step (`train.train_step`, scrfd_500m_bnkps, batch 4, 640x640, fp32, --threads) in each layout,
    interleaved step by step, median of --steps after two warm-ups; the ratio is NCHW's time / the variant's.
Prints the command, commit and load average.
"""
import argparse, copy, os, statistics, subprocess, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / 'bench'), str(ROOT / 'tests')]
import numpy as np
import torch
from torch import nn
from scrfd_nb.runtime import PreciseBatchNorm2d

CL = torch.channels_last

class NchwBatchNorm(nn.BatchNorm2d):
    "BatchNorm through the NCHW kernel inside a channels-last network (two layout copies each way)."
    def forward(self, x):
        if not self.training or x.is_contiguous(): return super().forward(x)
        return super().forward(x.contiguous()).contiguous(memory_format=CL)

LAYOUTS = {'NCHW': None, 'channels-last native': nn.BatchNorm2d, 'channels-last precise': PreciseBatchNorm2d,
           'channels-last, BN in NCHW': NchwBatchNorm}

def as_layout(model, name):
    "A copy of `model` in layout `name` (same weights)."
    m = copy.deepcopy(model)
    if LAYOUTS[name] is None: return m
    m = m.to(memory_format=CL)
    for mod in m.modules():
        if type(mod) is nn.BatchNorm2d: mod.__class__ = LAYOUTS[name]
    return m

def rel(a, b): return float((a.double() - b).norm() / b.norm().clamp_min(1e-300))

def part_a():
    print("\n## (A) one BatchNorm, float32 vs float64: relative L2 error of output y, batch mean, batch var (running "
          "statistics), input gradient dx, weight gradient dw")
    shapes = [(4, 16, 320, 320), (4, 40, 160, 160), (4, 72, 80, 80), (4, 152, 40, 40), (4, 288, 20, 20)]
    print(f"| shape | input mean | dy | layout | y | mean | var | dx | dw |\n|---|---|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for s in shapes:
        for mu in (0.0, 3.0):
            x64 = torch.randn(s, generator=g, dtype=torch.float64) + mu + 0.5 * torch.randn(1, s[1], 1, 1, generator=g, dtype=torch.float64)
            w64 = torch.empty(s[1], dtype=torch.float64).uniform_(0.5, 1.5, generator=g)
            for dyk in ('random', 'ramp'):
                dy64 = torch.randn(s, generator=g, dtype=torch.float64)
                if dyk == 'ramp': dy64 = dy64 * 0.1 + torch.linspace(-1, 1, dy64.numel(), dtype=torch.float64).view(s)
                def run(layout, dtype):
                    bn = (nn.BatchNorm2d if layout == 'NCHW' else LAYOUTS[layout])(s[1], momentum=1.0).to(dtype)   # running stats = this batch's
                    bn.weight.data.copy_(w64)
                    x = x64.to(dtype, copy=True).contiguous(memory_format=torch.contiguous_format if layout == 'NCHW' else CL).requires_grad_()
                    y = bn(x); y.backward(dy64.to(dtype).contiguous(memory_format=torch.contiguous_format if layout == 'NCHW' else CL))
                    return y.detach(), bn.running_mean.clone(), bn.running_var.clone(), x.grad, bn.weight.grad
                ref = run('NCHW', torch.float64)
                for layout in ('NCHW', 'channels-last native', 'channels-last precise'):
                    errs = [rel(a, b) for a, b in zip(run(layout, torch.float32), ref)]
                    print(f"| {s} | {mu:g} | {dyk} | {layout} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")

def part_b():
    print("\n## (B) iteration 1 of the reference's trajectory (golden (h), 1 thread): gradients against float64")
    import test_trajectory as T
    from scrfd_nb.train import compute_losses, LOSS_KEYS
    p = T.require_shared() / 'golden' / 'train_trajectory_500m_bnkps.npz'
    with np.load(p) as z: gd = {k: z[k] for k in z.files}
    n_threads = torch.get_num_threads(); torch.set_num_threads(1)
    bt = T.batch(gd, int(gd['traj_batch_index'][0]))
    base, _, _ = T.trainer_model(gd, 'sd_init')
    grads = {}
    def grad_of(model, b):
        l = compute_losses(model, model(b['images']), b)
        sum(l[k] for k in LOSS_KEYS if k in l).backward()
        return {n: q.grad.detach().double().clone() for n, q in model.named_parameters()}
    m64 = copy.deepcopy(base).double()
    grads['float64'] = grad_of(m64, {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in bt.items()})
    grads['reference (mmdet, its golden)'] = {n: torch.from_numpy(gd[f'grad_it01__{n}']).double() for n in grads['float64']}
    for name in LAYOUTS: grads[name] = grad_of(as_layout(base, name), bt)
    torch.set_num_threads(n_threads)
    names, exact, golden = list(grads['float64']), grads['float64'], grads['reference (mmdet, its golden)']
    gnorm = lambda gr: float(torch.sqrt(sum((gr[n] ** 2).sum() for n in names)))
    print("| gradient | global norm | rel. L2 error vs float64 (all parameters) | worst tensor vs float64 | "
          "global norm vs reference (test: <= 1e-4) | worst tensor vs reference (test: <= 1e-2) |\n|---|---|---|---|---|---|")
    for k, gr in grads.items():
        err64 = float(torch.sqrt(sum(((gr[n] - exact[n]) ** 2).sum() for n in names))) / gnorm(exact)
        w64 = max(rel(gr[n], exact[n]) for n in names if exact[n].norm() > 0)
        wref = max((rel(gr[n], golden[n]), n) for n in names if golden[n].norm() > 0)
        print(f"| {k} | {gnorm(gr):.6f} | {err64:.1e} | {w64:.1e} | {abs(gnorm(gr) / gnorm(golden) - 1):.1e} | {wref[0]:.1e} ({wref[1]}) |")

def part_c(steps, threads):
    print(f"\n## (C) training step, scrfd_500m_bnkps, batch 4, 640x640, fp32, {threads} threads, median of {steps} interleaved steps")
    from gpu import fake_batch
    from scrfd_nb.model import build_model
    from scrfd_nb.runtime import make_sgd, setup_runtime
    from scrfd_nb.train import train_step
    torch.set_num_threads(threads)
    rt = setup_runtime('cpu', amp='off')
    base = build_model('scrfd_500m_bnkps').train()
    runs = {}
    for name in LAYOUTS:
        m = as_layout(base, name)
        runs[name] = (m, make_sgd(m.parameters(), 1e-3), fake_batch(4, 640, torch.device('cpu'), channels_last=name != 'NCHW'))
    T = {k: [] for k in runs}
    for i in range(steps + 2):
        for k, (m, opt, b) in runs.items():
            t0 = time.perf_counter(); train_step(m, m, b, opt, 1e-3, rt); dt = time.perf_counter() - t0
            if i >= 2: T[k].append(dt)
    ref = statistics.median(T['NCHW'])
    print("| layout | step (s), median | min | NCHW time / this |\n|---|---|---|---|")
    for k, v in T.items():
        print(f"| {k} | {statistics.median(v):.3f} | {min(v):.3f} | {ref / statistics.median(v):.2f}x |")

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--steps', type=int, default=5); p.add_argument('--threads', type=int, default=2)
    p.add_argument('--skip-golden', action='store_true', help='skip (B), which needs ../shared (or $SCRFD_SHARED)')
    p.add_argument('--parts', default='abc')
    a = p.parse_args(argv)
    commit = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
    print(f"# python bench/bn_precision.py {' '.join(argv if argv is not None else sys.argv[1:])}; commit {commit}; "
          f"torch {torch.__version__}; load average {os.getloadavg()[0]:.2f} at the start")
    if 'a' in a.parts: part_a()
    if 'b' in a.parts and not a.skip_golden: part_b()
    if 'c' in a.parts: part_c(a.steps, a.threads)
    print(f"# load average {os.getloadavg()[0]:.2f} at the end")

if __name__ == '__main__': main()
