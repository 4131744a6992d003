"""bf16 autocast against fp32, per training step, from the reference trainer's stored states (golden (h)).

For each stored state of `train_trajectory_500m_bnkps.npz` (before iterations 1, 11, 21 and after 30) and the batch
the reference used next, one forward + backward through the trainer's own `compute_losses`, once in fp32 (`--amp
off`, the reference's precision) and once under `torch.autocast('cpu', bfloat16)` (what `--amp auto` picks on
accelerators with bf16). Prints per step: each loss term's relative difference, the gradient's cosine and norm
ratio (bf16 / fp32) globally and per part of the network (backbone, neck, head), and the fp32 run's own
1-vs-2-thread noise on the same quantities for scale.

    python bench/precision.py [--out bench/precision.md]
"""
import argparse, copy, os, platform, subprocess, sys, time
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
from test_trajectory import trainer_model, batch          # the golden's batches and states through the trainer's code
from scrfd_nb.core import shared_file
from scrfd_nb.runtime import Runtime
from scrfd_nb.train import compute_losses, LOSS_KEYS

STEPS = [('sd_init', 0, 'iteration 1 (initial state)'), ('sd_it10', 10, 'iteration 11 (after warmup)'),
         ('sd_it20', 20, 'iteration 21 (after the decay)'), ('sd_it30', None, 'after iteration 30')]
PARTS = ('backbone', 'neck', 'bbox_head')


def run(g, tag, b, dtype, threads=1):
    torch.set_num_threads(threads)
    model, _, _ = trainer_model(g, tag)
    rt = Runtime(torch.device('cpu'), dtype=dtype)
    bt = batch(g, b)
    with rt.autocast(): outs = model(bt['images'])
    L = compute_losses(model, outs, bt)
    loss = sum(L[k] for k in LOSS_KEYS)
    loss.backward()
    grads = {n: p.grad.double().flatten() for n, p in model.named_parameters()}
    return {k: float(L[k]) for k in LOSS_KEYS} | {'loss': float(loss)}, grads


def compare(ga, gb, prefix=''):
    ks = [k for k in ga if k.startswith(prefix)]
    a, b = torch.cat([ga[k] for k in ks]), torch.cat([gb[k] for k in ks])
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0)), float(b.norm() / a.norm())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=None, help='also write the table (markdown) here')
    a = ap.parse_args(argv)
    with np.load(shared_file('golden', 'train_trajectory_500m_bnkps.npz')) as z: g = {k: z[k] for k in z.files}
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
    head = (f"`python bench/precision.py` — commit {commit}, {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
            f"{platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.2f}, 1 thread\n")
    rows = ['| step | term | fp32 | bf16 | rel diff | fp32 1 vs 2 threads |', '|---|---|---|---|---|---|']
    grows = ['| step | part | bf16 grad cosine | bf16 / fp32 norm | fp32 2-thread cosine | fp32 2-thread norm ratio |',
             '|---|---|---|---|---|---|']
    for tag, it, name in STEPS:
        b = int(g['after30_batch_index']) if it is None else int(g['traj_batch_index'][it])
        (l32, g32), (l16, g16), (l32b, g32b) = run(g, tag, b, None), run(g, tag, b, torch.bfloat16), run(g, tag, b, None, 2)
        for k in (*LOSS_KEYS, 'loss'):
            rows.append(f"| {name} | {k} | {l32[k]:.6f} | {l16[k]:.6f} | {abs(l16[k] - l32[k]) / abs(l32[k]):.2e} | "
                        f"{abs(l32b[k] - l32[k]) / abs(l32[k]):.1e} |")
        for part in ('', *PARTS):
            c, r = compare(g32, g16, part); cn, rn = compare(g32, g32b, part)
            grows.append(f"| {name} | {part or 'all'} | {c:.5f} | {r:.4f} | {cn:.6f} | {rn:.5f} |")
    text = head + '\n' + '\n'.join(rows) + '\n\n' + '\n'.join(grows) + '\n'
    print(text)
    if a.out: Path(a.out).write_text(text)


if __name__ == '__main__': main()
