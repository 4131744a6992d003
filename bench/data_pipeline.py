"""Train-pipeline throughput: ours (fused crop+resize, one-pass photometric+normalise) vs a naive step-by-step port.

Per-core figures: one process, OpenCV and torch single-threaded, images decoded from the real JPEGs in
../shared/data/images every time (page cache warm), random face boxes as annotations. img/s per core = images /
CPU seconds of this process (robust to other processes on a shared machine); wall figures are printed too.
Rounds alternate ours / naive so both see the same machine load. Then the loader (2 worker processes, batch 8,
collate included) over a folder of symlinks to the same JPEGs, ours vs the naive pipeline inside the same dataset.

"split" rows: the work divided between loader workers and the training device (`scrfd_nb.gpu_augment`).
- "decode-only": what the trainer does on an accelerator (`--augment-on device`): the workers decode and draw every
  random decision and the annotation geometry (`DecodeOnlyPipeline`); crop canvas, float resize, flip, photometric
  distortion and normalisation run batched on the device (`device_augment_batch`), equal to the reference's float
  values within 1e-4.
- "uint8" / "float32": the earlier split, no longer a training path (`CropPipeline` in tests/pipeline_refs.py): the
  workers also crop, resize and flip, the device does the photometric step.
The worker rows are the CPU cost per image of the train pipeline in that mode. "device part on CPU" is what the
device's share costs when the device is this CPU (batch 8, one thread): a CPU-only machine would pay the sum.

    python bench/data_pipeline.py [--n 60] [--rounds 3] [--loader-batches 20] [--big]
Reference (ANCHORS.md, this machine kind, idle): 111.8 img/s per core (WIDER-size JPEGs), 40.6 with a
3000x2171 photo as 1 of 3 samples; JPEG decode is 25 % of the reference's time on the WIDER-size images. The speed
of this shared machine varies between runs (decode alone 232-353 img/s over six runs of one session), so besides the
ratio to the absolute figure the table gives the ratio in units of this run's own decode time, which does not depend
on the machine's speed.
"""
import argparse, os, time, tempfile, statistics
from pathlib import Path
import numpy as np
import cv2
import torch

from scrfd_nb.core import shared_file
from scrfd_nb.transforms import TrainPipeline, read_image
from scrfd_nb.data import WiderFaceDataset, build_loader
from scrfd_nb.gpu_augment import device_photometric_normalize, DecodeOnlyPipeline, collate_decoded, device_augment_batch
import sys; sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'tests'))
from pipeline_refs import naive_train_pipeline, CropPipeline, collate_hwc   # the reference ports and the earlier split

WIDER = ['0_Parade_marchingband_1_20.jpg', '19_Couple_Couple_19_743.jpg']
BIG = 'solvay_conference_1927.jpg'  # 3000x2171
REFERENCE = {'WIDER': 111.8, 'BIG': 40.6}  # img/s per core, ANCHORS.md (reference code, this machine kind, idle)
REF_DECODE_SHARE = 0.25  # ANCHORS.md: JPEG decode is 25 % of the reference's time per WIDER image


def fake_faces(w, h, rng, n=12):
    "n random face boxes (10-15 % of the short side at most) with keypoints, as a WIDER annotation."
    s = rng.uniform(0.01, 0.15, n) * min(w, h) + 4
    x1 = rng.uniform(0, w - s); y1 = rng.uniform(0, h - s)
    b = np.stack([x1, y1, x1 + s, y1 + s * 1.2], 1).clip(0, [w, h, w, h]).astype(np.float32)
    k = np.zeros((n, 5, 3), np.float32)
    k[..., 0] = b[:, None, 0] + s[:, None] * np.array([.3, .7, .5, .35, .65]); k[..., 1] = b[:, None, 1] + s[:, None] * np.array([.4, .4, .6, .8, .8]); k[..., 2] = 1
    return dict(bboxes=b, keypoints=k, bboxes_ignore=np.zeros((0, 4), np.float32))


def per_core(fn, paths, anns, n, seed):
    "Run fn(img, ann, rng) on n samples (decode included) → (cpu s/img, wall s/img)."
    rng = np.random.default_rng(seed)
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        j = i % len(paths)
        fn(read_image(paths[j]), anns[j], rng)
    return (time.process_time() - c0) / n, (time.perf_counter() - t0) / n


def make_split(d, names, copies):
    "A split folder of symlinks to the real JPEGs with fake annotations."
    d = Path(d); (d/'images'/'ev').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0); lines = []
    for c in range(copies):
        for nm in names:
            src = shared_file('data', 'images', nm); dst = d/'images'/'ev'/f'{c}_{nm}'
            if not dst.exists(): os.symlink(src, dst)
            im = read_image(src); h, w = im.shape[:2]
            a = fake_faces(w, h, rng)
            lines.append(f'# ev/{c}_{nm} {w} {h}')
            lines += [' '.join(f'{v:.2f}' for v in [*bb, *kk.ravel()]) for bb, kk in zip(a['bboxes'], a['keypoints'])]
    (d/'labelv2.txt').write_text('\n'.join(lines) + '\n')
    return d


class Naive:
    "Picklable naive pipeline for the loader."
    def __init__(self, clip): self.clip = clip
    def __call__(self, img, ann, rng):
        o = naive_train_pipeline(img, ann, rng, bbox_clip_border=self.clip)
        o['img'] = torch.from_numpy(o['img']); return o


def device_part_on_cpu(paths, anns, n, bs=8, decode_only=False):
    "CPU seconds per image of the device's share of a split (batch bs) when the device is this CPU."
    pipe = DecodeOnlyPipeline() if decode_only else CropPipeline(out_dtype='uint8'); rng = np.random.default_rng(0)
    outs = [pipe(read_image(paths[i % len(paths)]), anns[i % len(paths)], rng) for i in range(bs)]
    if decode_only: batch = collate_decoded(outs); fn = lambda: device_augment_batch(batch)
    else:
        x, p = torch.stack([o['img'] for o in outs]), torch.stack([o['photo'] for o in outs])
        fn = lambda: device_photometric_normalize(x, p)
    fn()
    c0 = time.process_time()
    for _ in range(max(1, n // bs)): fn()
    return (time.process_time() - c0) / (max(1, n // bs) * bs)


def loader_rate(ds, batches, workers=2, bs=8, collate_fn=None):
    ld = build_loader(ds, bs, workers=workers, seed=0, shuffle=True, collate_fn=collate_fn)
    it = iter(ld); next(it)  # start-up (worker spawn) excluded
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        try: b = next(it)
        except StopIteration: it = iter(ld); b = next(it)
        n += len(b['gt_boxes'])   # batch size (decode-only batches pack their images flat)
    dt = time.perf_counter() - t0
    del it, ld
    return n / dt


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=60, help='images per timed round')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--loader-batches', type=int, default=20)
    ap.add_argument('--big', action='store_true', help='also the mix with the 3000x2171 photo as 1 of 3')
    ap.add_argument('--clip', action='store_true', help='bbox_clip_border=True (500m/1g/34g); default False (2.5g/10g)')
    a = ap.parse_args(argv)
    cv2.setNumThreads(1); torch.set_num_threads(1)
    ours = TrainPipeline(bbox_clip_border=a.clip)
    ours_c = lambda im, an, rng: ours(im, an, rng)['img'].contiguous()  # + CHW contiguous layout, like the naive output
    split_u8, split_f32 = CropPipeline(bbox_clip_border=a.clip, out_dtype='uint8'), CropPipeline(bbox_clip_border=a.clip)
    decode_only = DecodeOnlyPipeline(bbox_clip_border=a.clip)
    naive = Naive(a.clip)
    mixes = [('WIDER-size JPEGs (1024 px)', WIDER)] + ([('1 of 3 = 3000x2171 photo', WIDER + [BIG])] if a.big else [])
    rows = []
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores, OpenCV {cv2.__version__}, rounds {a.rounds} x {a.n} images")
    for label, names in mixes:
        paths = [shared_file('data', 'images', n) for n in names]
        rng = np.random.default_rng(1)
        anns = [fake_faces(*read_image(p).shape[1::-1], rng) for p in paths]
        fns = {'ours': ours, 'ours + CHW copy': ours_c, 'naive': naive, 'decode only': lambda *x: None,
               'split decode-only, workers': decode_only, 'split uint8, workers': split_u8,
               'split float32, workers': split_f32}
        res = {k: [] for k in fns}
        for r in range(a.rounds):   # alternating: every pipeline sees the same machine load
            for k, fn in fns.items(): res[k].append(per_core(fn, paths, anns, a.n, r))
        med = {k: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v)) for k, v in res.items()}
        for mode in ('decode-only', 'uint8'):
            dev = device_part_on_cpu(paths, anns, a.n, decode_only=mode == 'decode-only')
            med[f'split {mode}, device part on CPU'] = (dev, dev)
        ref = REFERENCE['BIG' if BIG in names else 'WIDER']
        dec = med['decode only'][0]
        for k, (c, w) in med.items():
            # machine-speed independent: the reference costs 1 / REF_DECODE_SHARE decodes per image, ours c / dec
            norm = (1 / REF_DECODE_SHARE) * dec / c if BIG not in names else float('nan')
            rows.append((label, k, 1 / c, 1 / w, med['naive'][0] / c, 1 / c / ref, norm))
    print(f"\n{'images':28s} {'pipeline':32s} {'img/s/core (cpu)':>17s} {'img/s (wall)':>13s} {'vs naive':>9s} "
          f"{'vs reference':>13s} {'same, in decodes':>17s}")
    for label, k, rc, rw, ratio, vref, norm in rows:
        nt = f"{norm:16.2f}x" if norm == norm else f"{'-':>17s}"   # no decode share is known for the big-photo mix
        print(f"{label:28s} {k:32s} {rc:17.1f} {rw:13.1f} {ratio:8.2f}x {vref:12.2f}x {nt}")
    print("vs reference: img/s/core / ANCHORS.md's figure (measured on an idle machine of this kind); same, in decodes: "
          "the reference's cost per image is 4 JPEG decodes (decode = 25 % of it), ours is (our time / decode time here), "
          "so machine speed cancels")
    if a.loader_batches:
        with tempfile.TemporaryDirectory() as d:
            split = make_split(d, WIDER, copies=a.loader_batches * 8 // len(WIDER) + 16)  # one epoch covers the timed batches
            r_ours = loader_rate(WiderFaceDataset(split, pipeline=ours), a.loader_batches)
            r_naive = loader_rate(WiderFaceDataset(split, pipeline=naive), a.loader_batches)
            r_u8 = loader_rate(WiderFaceDataset(split, pipeline=split_u8), a.loader_batches, collate_fn=collate_hwc)
            r_dec = loader_rate(WiderFaceDataset(split, pipeline=decode_only), a.loader_batches, collate_fn=collate_decoded)
        print(f"\nloader, 2 workers, batch 8 ({a.loader_batches} batches, wall): ours {r_ours:.1f} img/s, "
              f"naive {r_naive:.1f} img/s, ratio {r_ours / r_naive:.2f}x; workers' part of the splits: "
              f"decode-only {r_dec:.1f} img/s ({r_dec / r_naive:.2f}x naive), uint8 {r_u8:.1f} img/s ({r_u8 / r_naive:.2f}x)")


if __name__ == '__main__':
    main()
