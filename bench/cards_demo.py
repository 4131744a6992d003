"""The 2-class demo beyond faces (issue 23 point 4): faces with 5 landmarks and ID cards with 4 corners, trained on a
CPU in minutes, exported, detected, a card rectified.

  python bench/cards_demo.py                    # python -m scrfd_nb.train --synth cards (the demo recipe, 60 epochs)
  python bench/cards_demo.py --work W --skip-train   # only evaluate / draw an existing run

Trains `python -m scrfd_nb.train --synth cards` (scrfd_500m_bnkps with C = 2, K = 5 from the data; 240 synthetic
training pictures of 160-256 px with 1-2 cards each, 60 validation pictures), then scores its best.pth on the
synthetic validation set twice on the same images: PyTorch (the trainer's own evaluation path) and the exported ONNX
file in onnxruntime, both through `coco_eval.coco_evaluate` (pycocotools box AP@[.5:.95], AP50, AP75, AP per class;
OKS AP with the stated default sigma; NME). It draws detections on four validation pictures with class names and the
rectified crop of a detected card into nbs/images/cards_demo.jpg (synthetic pictures: no licence question), and
prints a bench/RESULTS.md section.
"""
import argparse, subprocess, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import numpy as np
import torch


def figure(model, val, out:Path, n:int=4):
    "Detections on `n` validation pictures (class names, keypoints) and the rectified crop of the best card."
    import cv2, matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from scrfd_nb.inference import detect, draw_detections
    from scrfd_nb.align import rectify_quad
    from scrfd_nb.synthetic import CARD_QUAD
    recs = [r for r in val['records'] if len(r['labels']) and (np.asarray(r['labels']) == 1).any()][:n]
    fig, axs = plt.subplots(1, n + 1, figsize=(3.2 * (n + 1), 3.4))
    card = None
    for ax, r in zip(axs, recs):
        img = cv2.imread(str(Path(val['images'])/r['filename']))
        dets = detect(model, img, 0.3, input_size=model.cfg.data.img_size)
        ax.imshow(draw_detections(img, *dets, labels=dets.labels, names=dets.names, thickness=1)[..., ::-1]); ax.axis('off')
        ax.set_title(', '.join(f"{dets.classes.count(c)} {c}" for c in dets.names), fontsize=9)
        for i in np.flatnonzero(dets.labels == 1):
            if card is None or dets[1][i] > card[0]: card = (dets[1][i], img, dets[2][i][list(CARD_QUAD)])
    if card is not None:
        axs[-1].imshow(rectify_quad(card[1], card[2])[..., ::-1]); axs[-1].set_title(f'card rectified ({card[0]:.2f})', fontsize=9)
    axs[-1].axis('off')
    fig.tight_layout(); fig.savefig(out, dpi=80, pil_kwargs={'quality': 85} if str(out).endswith('.jpg') else None); plt.close(fig)   # a photo-like figure: JPEG


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--work', default='work_dirs/cards_demo', help='work dir of the run')
    ap.add_argument('--skip-train', action='store_true', help='use the run already in --work')
    ap.add_argument('--figure', default=str(ROOT/'nbs'/'images'/'cards_demo.jpg'))
    a = ap.parse_args()
    t0 = time.time()
    if not a.skip_train:
        subprocess.run([sys.executable, '-m', 'scrfd_nb.train', '--synth', 'cards', '--work-dir', a.work, '--no-progress'],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    train_s = time.time() - t0
    from scrfd_nb.model import load_model
    from scrfd_nb.train import read_split, evaluate_coco
    from scrfd_nb.runtime import setup_runtime
    from scrfd_nb.backends import OnnxRunner
    from scrfd_nb.export import export_onnx
    from scrfd_nb.benchmark import machine
    work = Path(a.work)
    model = load_model(work/'best.pth').eval()
    recs, images, info = read_split(work/'synthetic', 'val', 'test')
    val = dict(records=recs, images=images, info=info)
    onnx = export_onnx(model, work/'best.onnx', shape=(model.cfg.data.img_size,) * 2)
    rt = setup_runtime('cpu', 'off')
    rows = {'PyTorch (trainer\'s evaluation path)': evaluate_coco(model, val, rt, model.cfg),   # the trainer's own scoring
            'onnxruntime (exported best.onnx)': evaluate_coco(model, val, rt, model.cfg, runner=OnnxRunner(onnx))}
    figure(model, val, Path(a.figure))
    ck = torch.load(work/'best.pth', map_location='cpu', weights_only=True)
    print(f"## Beyond faces: the 2-class demo, faces (5 landmarks) and ID cards (4 corners) (`bench/cards_demo.py`, issue 23) — `python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}`, {machine()}\n")
    print(f"`python -m scrfd_nb.train --synth cards`: scrfd_500m_bnkps with C = 2 and K = 5 from the data (a card's corners "
          f"in the face's slots 0, 1, 3, 4; slot 2 unlabelled), the demo recipe ({model.cfg.train.epochs} epochs of "
          f"{model.cfg.data.img_size}-px crops, {len(read_split(work/'synthetic', 'train')[0])} training pictures), one process; "
          f"{'trained in ' + format(train_s / 60, '.1f') + ' min' if not a.skip_train else 'an existing run'}; best.pth from epoch "
          f"{ck['epoch']}. Validation: {len(recs)} synthetic pictures, {sum(int((np.asarray(r['labels']) == 0).sum()) for r in recs)} faces, "
          f"{sum(int((np.asarray(r['labels']) == 1).sum()) for r in recs)} cards. OKS sigma {rows[next(iter(rows))]['sigmas'][0]:.4f} "
          "for every point (coco_eval's stated default: NME 0.1 scores OKS 0.5).\n")
    print('| runtime | COCO AP | AP50 | AP75 | AP face | AP card | OKS AP | OKS AP50 | NME |\n|---|---|---|---|---|---|---|---|---|')
    for k, r in rows.items():
        pc = r['ap_per_class']
        print(f"| {k} | {r['ap']:.4f} | {r['ap50']:.4f} | {r['ap75']:.4f} | {pc['face']:.4f} | {pc['card']:.4f} | "
              f"{r['kp_ap']:.4f} | {r['kp_ap50']:.4f} | {r['nme']:.4f} |")
    print(f"\n![detections with class names and a rectified card](../nbs/images/{Path(a.figure).name})")


if __name__ == '__main__':
    main()
