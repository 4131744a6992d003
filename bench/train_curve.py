"""Loss and AP curves of a training run, from its work dir's metrics.jsonl, as one small PNG.

    python bench/train_curve.py WORK_DIR OUT.png [--title TEXT]
"""
import argparse, json
from pathlib import Path
import numpy as np
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('work_dir'); p.add_argument('out'); p.add_argument('--title', default='')
    a = p.parse_args(argv)
    rows = [json.loads(l) for l in (Path(a.work_dir)/'metrics.jsonl').read_text().splitlines() if l.strip()]
    loss = [r for r in rows if 'loss' in r]; ap = [r for r in rows if 'ap_hard' in r]
    fig, ax = plt.subplots(1, 2, figsize=(8, 2.8), dpi=80)
    it = np.array([r['iter'] for r in loss]); l = np.array([r['loss'] for r in loss])
    k = max(1, len(l) // 50)
    ax[0].plot(it, l, color='0.8', lw=0.8)
    ax[0].plot(it[k - 1:], np.convolve(l, np.ones(k) / k, 'valid'), lw=1.5, label=f'loss (mean of {k} logs)')
    ax2 = ax[0].twinx(); ax2.plot(it, [r['lr'] for r in loss], 'k--', lw=0.8); ax2.set_ylabel('lr (dashed)')
    ax[0].set_xlabel('iteration'); ax[0].set_title('training loss'); ax[0].legend(loc='upper right', fontsize=8)
    ax[1].plot([r['epoch'] for r in ap], [r['ap_hard'] for r in ap], 'o-')
    for r in ap[-1:]: ax[1].annotate(f"{r['ap_hard']:.3f}", (r['epoch'], r['ap_hard']), textcoords='offset points', xytext=(-30, 6))
    ax[1].set_xlabel('epoch'); ax[1].set_ylim(0, 1); ax[1].grid(alpha=0.3)
    ax[1].set_title('synthetic val AP (easy = medium = hard)')
    if a.title: fig.suptitle(a.title, fontsize=9)
    fig.tight_layout(); fig.savefig(a.out)
    print(f"wrote {a.out}: {len(loss)} loss points, APs {[round(r['ap_hard'], 3) for r in ap]}")


if __name__ == '__main__': main()
