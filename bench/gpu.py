"""Speed of scrfd_nb training, data loading and detection on one device, next to the network alone and the reference
(issue 7; reference figures from ../shared/reference/ANCHORS.md, one H200, torch 2.11, mmdet 2.7 code).

One process, whatever device there is (cuda / npu / cpu). For every model, configuration and batch size:
  net     network alone: forward + backward of (sum of the head outputs' means)                 -> img/s
  step    our full training step: forward, ATSS targets + losses (scrfd_nb.train.compute_losses), backward,
          SGD step (fused on CUDA, foreach elsewhere)                                          -> img/s, step/net
  step+h  the same with one host read of the loss per step (what scrfd_nb.train's loop does)  -> img/s
then detection at batch 1, 640x480 (network alone; network + decode + NMS from a uint8 image; eager, CUDA graph,
torch.compile reduce-overhead) and batched detection throughput, and the loader from JPEG files (synthetic
WIDER-size images written by scrfd_nb.synthetic) with the full augmentation: CPU workers doing everything, and
CPU crop/resize/flip + GPU photometric/normalise, or decode-only workers + all the pixel work on the GPU (the trainer's
default on an accelerator; scrfd_nb.gpu_augment), plus loader + training step end to end.
Timings: median of --steps synchronised steps after --warmup. Each row is printed when measured, one table at the
end; a failing configuration gives an error row and the script goes on. --budget stops starting new rows when the
time is spent (rows are run in order of importance), so the run fits one device call.

  python bench/gpu.py                     # on a GPU: everything, ~8 min on an H100/H200 (see bench/RESULTS.md)
  python bench/gpu.py --quick             # tiny sizes, few steps (automatic when there is no accelerator)
  python bench/gpu.py --only train --models scrfd_10g_bnkps --configs bf16-cl --batches 128
"""
import argparse, datetime, json, math, os, platform, statistics, sys, tempfile, time, traceback
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'tests'))   # pipeline_refs: the earlier split, measured as a row
import numpy as np
import torch

from scrfd_nb.runtime import pick_device, make_sgd
from scrfd_nb.model import build_model
from scrfd_nb.train import compute_losses

LOSS_KEYS = ('loss_cls', 'loss_bbox', 'loss_kps')

# reference figures (ANCHORS.md): training step (mmdet, fp32/TF32) and network alone, img/s; detection ms
REF_STEP = {'scrfd_10g_bnkps': {8: 92.6, 32: 130.1}, 'scrfd_500m_bnkps': {16: 114.8}, 'scrfd_34g': {8: 53.4}}
REF_NET = {('scrfd_10g_bnkps', 'fp32', 32): 340, ('scrfd_10g_bnkps', 'bf16-cl', 32): 753,
           ('scrfd_10g_bnkps', 'bf16-cl', 128): 883, ('scrfd_10g_bnkps', 'bf16-cl-compile', 128): 1186,
           ('scrfd_500m_bnkps', 'bf16-cl-compile', 128): 3737, ('scrfd_34g', 'bf16-cl-compile', 64): 241}
REF_DET_NET_MS = {('scrfd_500m_bnkps', 'fp32'): 3.84, ('scrfd_10g_bnkps', 'fp32'): 4.93, ('scrfd_34g', 'fp32'): 17.38,
                  ('scrfd_500m_bnkps', 'fp16-graph'): 0.57, ('scrfd_10g_bnkps', 'fp16-graph'): 1.27,
                  ('scrfd_34g', 'fp16-graph'): 2.42, ('scrfd_10g_bnkps', 'fp16-compile-ro'): 1.27}
TARGET_STEP = {'scrfd_10g_bnkps': 1000, 'scrfd_500m_bnkps': 3000, 'scrfd_34g': 220}   # issue 7, img/s

# configurations: (autocast dtype name, channels_last, compile)
CONFIGS = {'fp32': ('fp32', False, False), 'fp32-cl': ('fp32', True, False), 'bf16': ('bf16', False, False),
           'bf16-cl': ('bf16', True, False), 'bf16-cl-compile': ('bf16', True, True),
           'fp16-cl': ('fp16', True, False)}


# ------------------------------------------------------------------------------------------------ helpers
class Ctx:
    "Device, options and the rows measured so far."
    def __init__(self, a, dev):
        self.a, self.dev, self.rows, self.t0 = a, dev, [], time.perf_counter()
    def left(self): return self.a.budget - (time.perf_counter() - self.t0)
    def sync(self):
        if self.dev.type != 'cpu': torch.accelerator.synchronize()
    def add(self, **r):
        r.setdefault('t', round(time.perf_counter() - self.t0, 1))
        self.rows.append(r); print(fmt_row(r), flush=True)
        if self.a.out: Path(self.a.out, 'bench_gpu.json').write_text(json.dumps(dict(meta=META, rows=self.rows), indent=1, default=str))
    def empty_cache(self):
        if self.dev.type != 'cpu':
            try: torch.accelerator.empty_cache()
            except Exception: pass

META = {}

def fmt(v, f='.1f'):
    return '' if v is None else (format(v, f) if isinstance(v, (int, float)) else str(v))

HDR = f"{'what':<10}{'model':<18}{'config':<17}{'batch':>6}{'img/s':>10}{'ms':>9}{'ratio':>7}{'vs ref':>8}  note"

def fmt_row(r):
    return (f"{r.get('what', ''):<10}{r.get('model', ''):<18}{r.get('config', ''):<17}{fmt(r.get('batch'), 'd'):>6}"
            f"{fmt(r.get('img_s')):>10}{fmt(r.get('ms'), '.2f'):>9}{fmt(r.get('ratio'), '.2f'):>7}"
            f"{fmt(r.get('vs_ref'), '.2f'):>8}  {r.get('note', '')}")

def timeit(fn, c:Ctx, steps:int, warmup:int) -> float:
    "Median seconds of fn() over `steps` synchronised runs after `warmup` runs."
    for _ in range(warmup): fn()
    c.sync(); ts = []
    for _ in range(steps):
        t = time.perf_counter(); fn(); c.sync(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)

def amp_ctx(dev, prec, cache=True):
    "Autocast for 'fp32' (off), 'bf16', 'fp16'; cache=False for CUDA-graph capture (cached casts must not be freed)."
    if prec == 'fp32': return torch.autocast(dev.type, enabled=False)
    return torch.autocast(dev.type, dtype=torch.bfloat16 if prec == 'bf16' else torch.float16, cache_enabled=cache)

def fake_batch(B, size, dev, G=16, seed=0, channels_last=True):
    "Random images and up to G plausible faces (8-320 px as the reference bench) per image, padded like data.collate."
    g = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.empty(B, G, 1).uniform_(math.log(8), math.log(min(320, size * 0.5)), generator=g))
    wh = side * torch.empty(B, G, 2).uniform_(0.75, 1.0, generator=g)
    xy = torch.rand(B, G, 2, generator=g) * (size - wh)
    boxes = torch.cat([xy, xy + wh], -1)
    kp = xy[:, :, None] + wh[:, :, None] * torch.tensor([[.3, .4], [.7, .4], [.5, .6], [.35, .8], [.65, .8]])
    kps = torch.cat([kp, torch.ones(B, G, 5, 1)], -1)
    n = torch.randint(1, G + 1, (B,), generator=g)
    mask = torch.arange(G)[None] < n[:, None]
    x = torch.randn(B, 3, size, size, generator=g).to(dev)
    return dict(images=x.contiguous(memory_format=torch.channels_last) if channels_last else x,
                gt_boxes=boxes.to(dev), gt_kps=kps.to(dev), gt_mask=mask.to(dev))

def can_compile(dev):
    try:
        import torch._dynamo  # noqa
        if dev.type == 'cuda':
            import triton  # noqa
        return True
    except Exception as e:
        return False


# ------------------------------------------------------------------------------------------------ training
def make_train(model_name, B, size, cfg, c:Ctx, model=None):
    prec, cl, comp = CONFIGS[cfg]
    dev = c.dev
    raw = model if model is not None else build_model(model_name).to(dev)
    raw = raw.to(memory_format=torch.channels_last if cl else torch.contiguous_format).train()
    net_model = torch.compile(raw, dynamic=False) if comp else raw
    opt = make_sgd(raw.parameters(), 1e-4, device_type=dev.type, fused=dev.type == 'cuda')
    batch = fake_batch(B, size, dev, channels_last=cl)

    def net():
        with amp_ctx(dev, prec): outs = net_model(batch['images'])
        loss = sum(t.float().mean() for o in outs if o is not None for t in o)
        loss.backward()
        raw.zero_grad(set_to_none=True)

    def step(host_read=False):
        with amp_ctx(dev, prec): outs = net_model(batch['images'])
        losses = compute_losses(raw, outs, batch)
        loss = sum(losses[k] for k in LOSS_KEYS if k in losses)
        if host_read: float(loss.detach())   # the train loop's per-step host read (logging, finiteness check)
        loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        return loss
    return raw, net, step, batch

def bench_train(c:Ctx, model_name, cfg, B):
    a = c.a
    raw, net, step, batch = make_train(model_name, B, a.size, cfg, c)
    w = a.warmup + (2 if CONFIGS[cfg][2] else 0)
    t_net = timeit(net, c, a.steps, w)
    t_step = timeit(step, c, a.steps, a.warmup)
    t_sync = timeit(lambda: step(True), c, max(3, a.steps // 2), 1) if c.dev.type != 'cpu' else None
    mem = None
    if c.dev.type != 'cpu':
        try: mem = torch.accelerator.max_memory_allocated() / 2**30
        except Exception: pass
    del raw, net, step, batch
    ref = REF_STEP.get(model_name, {}).get(B) if a.size == 640 else None
    refn = REF_NET.get((model_name, cfg, B)) if a.size == 640 else None
    c.add(what='net', model=model_name, config=cfg, batch=B, img_s=B / t_net, ms=1e3 * t_net,
          vs_ref=(B / t_net / refn) if refn else None, note=f'ref net {refn}' if refn else '')
    tgt = TARGET_STEP.get(model_name) if a.size == 640 else None
    note = (f'ref step {ref} img/s' if ref else '') + (f'; target {tgt}: {"MET" if B / t_step >= tgt else "not met"}' if tgt and cfg.startswith('bf16') and B >= 64 else '')
    if mem: note += f'; peak {mem:.1f} GiB'
    c.add(what='step', model=model_name, config=cfg, batch=B, img_s=B / t_step, ms=1e3 * t_step, ratio=t_net / t_step,
          vs_ref=(B / t_step / ref) if ref else None, note=note.strip('; '))
    if t_sync is not None:
        c.add(what='step+h', model=model_name, config=cfg, batch=B, img_s=B / t_sync, ms=1e3 * t_sync,
              ratio=t_step / t_sync, note='with one float(loss) per step; ratio = step / step+h')
    if c.dev.type != 'cpu':
        try: torch.accelerator.reset_peak_memory_stats()
        except Exception: pass

def count_syncs(c:Ctx, model_name):
    "CUDA only: host synchronisations in one training step (torch.cuda.set_sync_debug_mode), with where they happen."
    import warnings
    if c.dev.type != 'cuda': raise RuntimeError('sync debug mode needs CUDA')
    raw, net, step, batch = make_train(model_name, 4, c.a.size, 'bf16-cl', c)
    step(); c.sync()
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try: step(True)   # with the train loop's float(loss)
        finally: torch.cuda.set_sync_debug_mode(0)
    locs = {}
    for w in ws:
        if 'synchroniz' not in str(w.message): continue
        k = f"{Path(w.filename).name}:{w.lineno}"
        locs[k] = locs.get(k, 0) + 1
    n = sum(locs.values())
    c.add(what='syncs', model=model_name, config='bf16-cl', batch=4, ratio=n,
          note=f'{n} synchronising calls in one step (incl. the loop float(loss)): ' + ', '.join(f'{k} x{v}' for k, v in locs.items()))

def loss_parity(c:Ctx, model_name):
    "bf16-autocast losses vs fp32 on the same weights and batch (issue 7: same losses within bf16 tolerance)."
    a = c.a
    raw = build_model(model_name).to(c.dev).train()
    batch = fake_batch(min(4, a.batches_max), a.size, c.dev)
    res = {}
    for prec in ('fp32', 'bf16'):
        torch.manual_seed(0)
        with amp_ctx(c.dev, prec): outs = raw(batch['images'])
        l = compute_losses(raw, outs, batch)
        res[prec] = {k: float(l[k].detach()) for k in LOSS_KEYS if k in l}
    rel = max(abs(res['bf16'][k] - res['fp32'][k]) / max(abs(res['fp32'][k]), 1e-6) for k in res['fp32'])
    c.add(what='parity', model=model_name, config='bf16 vs fp32', batch=batch['images'].shape[0], ratio=rel,
          note='max rel. diff of the loss terms: ' + ', '.join(f"{k[5:]} {res['fp32'][k]:.4f}/{res['bf16'][k]:.4f}" for k in res['fp32']))


# ------------------------------------------------------------------------------------------------ detection
def bench_detect(c:Ctx, model_name, variant, wh=(640, 480)):
    "Batch-1 latency: network alone on a (1,3,H,W) input, and full detect (letterbox, copy, network, decode, NMS)."
    from scrfd_nb.detect import preprocess, postprocess
    a, dev = c.a, c.dev
    W, H = wh
    prec = {'fp32': 'fp32', 'fp16': 'fp16', 'bf16': 'bf16', 'fp16-graph': 'fp16', 'fp16-compile-ro': 'fp16'}[variant]
    if prec == 'fp16' and dev.type == 'cpu': prec = 'bf16'
    raw = build_model(model_name).to(dev).eval().to(memory_format=torch.channels_last)
    img = (np.random.default_rng(0).random((H, W, 3)) * 255).astype(np.uint8)
    x, metas = preprocess([img], (W, H), mode='insightface', device=dev)
    x = x.contiguous(memory_format=torch.channels_last)
    fn = raw
    if variant == 'fp16-compile-ro': fn = torch.compile(raw, mode='reduce-overhead', dynamic=False)

    @torch.no_grad()
    def net_eager(xx):
        with amp_ctx(dev, prec, cache=False): return fn(xx)
    net = net_eager
    if variant == 'fp16-graph':
        if dev.type != 'cuda': raise RuntimeError('CUDA graphs need a CUDA device')
        static_x = x.clone()
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3): net_eager(static_x)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g): static_out = net_eager(static_x)
        def net(xx):
            static_x.copy_(xx, non_blocking=True); g.replay(); return static_out

    def full():
        xx, mm = preprocess([img], (W, H), mode='insightface', device=dev)
        outs = net(xx.contiguous(memory_format=torch.channels_last))
        return postprocess([[t.float() for t in o] if o is not None else None for o in outs], mm,
                           mode='insightface', host=True)
    n = max(a.steps * 3, 10) if dev.type != 'cpu' else a.steps
    w = a.warmup * 4 + (3 if 'compile' in variant else 0)
    t_net = timeit(lambda: net(x), c, n, w)
    t_full = timeit(full, c, n, a.warmup)
    ref = REF_DET_NET_MS.get((model_name, variant)) if wh == (640, 480) else None
    c.add(what='det-net', model=model_name, config=variant, batch=1, img_s=1 / t_net, ms=1e3 * t_net,
          vs_ref=ref / (1e3 * t_net) if ref else None, note=f'{W}x{H}' + (f'; ref {ref} ms' if ref else ''))
    tgt = 1.5 if model_name == 'scrfd_10g_bnkps' and wh == (640, 480) and dev.type != 'cpu' else None
    c.add(what='detect', model=model_name, config=variant, batch=1, img_s=1 / t_full, ms=1e3 * t_full,
          ratio=t_net / t_full, note=f'{W}x{H} uint8 -> boxes (letterbox, H2D, net, decode, NMS on host)'
          + (f'; target 1.5 ms: {"MET" if 1e3 * t_full <= tgt else "not met"}' if tgt else ''))

def bench_detect_batched(c:Ctx, model_name, prec, B, size):
    "Batched detection throughput (test_widerface style): B images 640x640, network + decode + NMS."
    from scrfd_nb.detect import postprocess
    dev = c.dev
    raw = build_model(model_name).to(dev).eval().to(memory_format=torch.channels_last)
    x = torch.randn(B, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    @torch.no_grad()
    def run():
        with amp_ctx(dev, prec): outs = raw(x)
        return postprocess([[t.float() for t in o] if o is not None else None for o in outs], None,
                           mode='insightface', score_thr=0.5, host=True)
    t = timeit(run, c, max(3, c.a.steps // 2), c.a.warmup)
    c.add(what='detect-b', model=model_name, config=prec + '-cl', batch=B, img_s=B / t, ms=1e3 * t,
          note=f'{size}x{size} net + decode + NMS, random input')


# ------------------------------------------------------------------------------------------------ loader
def bench_gpu_augment(c:Ctx, B, size):
    "scrfd_nb.gpu_augment on this device: equal to the CPU pipeline (transforms, cv2) and its cost per batch."
    from scrfd_nb.transforms import sample_photometric, photometric_normalize, PhotoParams
    from scrfd_nb.gpu_augment import photo_param_tensor, device_photometric_normalize
    dev, rng = c.dev, np.random.default_rng(0)
    x = (rng.random((8, 64, 64, 3)) * 255).astype(np.float32)
    x[::3] *= 0.2                                          # dark samples: negative pixels after brightness -32
    draws = [sample_photometric(rng) for _ in range(7)] + [PhotoParams(delta=-32.0, hue=-17.9, saturation=1.5)]
    ref = np.stack([photometric_normalize(xi.copy(), d) for xi, d in zip(x, draws)])
    got = device_photometric_normalize(torch.from_numpy(x).to(dev), photo_param_tensor(draws)).permute(0, 2, 3, 1).float().cpu().numpy()
    err = float(np.abs(got - ref).max())
    c.add(what='check', config='gpu_augment', batch=8, ratio=err,
          note=f'max |diff| {err:.1e} vs transforms.photometric_normalize (normalised units): {"OK" if err < 1e-4 else "CHECK"}')
    from scrfd_nb.transforms import TrainPipeline
    from scrfd_nb.gpu_augment import DecodeOnlyPipeline, collate_decoded, device_augment_batch
    ims = [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in [(120, 90), (64, 150), (100, 100), (80, 200)]]
    ann = dict(bboxes=np.array([[20, 20, 50, 55]], np.float32), keypoints=np.zeros((1, 5, 3), np.float32),
               bboxes_ignore=np.zeros((0, 4), np.float32))
    ref = torch.stack([TrainPipeline(size=64)(im, ann, np.random.default_rng(s))['img'] for s, im in enumerate(ims)])
    got = device_augment_batch(collate_decoded([DecodeOnlyPipeline(size=64)(im, ann, np.random.default_rng(s))
                                                for s, im in enumerate(ims)]), dev)['images'].float().cpu()
    err = float((got - ref).abs().max())
    c.add(what='check', config='device_augment', batch=4, ratio=err,
          note=f'max |diff| {err:.1e} vs TrainPipeline (decode-only workers + device_augment_batch): {"OK" if err < 2e-4 else "CHECK"}')
    xb = torch.from_numpy((rng.random((B, size, size, 3)) * 255).astype(np.uint8)).to(dev)
    pb = photo_param_tensor([sample_photometric(rng) for _ in range(B)]).to(dev)
    for name, fn in [('eager', device_photometric_normalize)] + ([('compile', torch.compile(device_photometric_normalize, dynamic=False))]
                                                               if can_compile(dev) and not c.a.quick else []):
        t = timeit(lambda: fn(xb, pb, dtype=torch.bfloat16), c, max(3, c.a.steps), c.a.warmup + (2 if name == 'compile' else 0))
        c.add(what='gpu-aug', config=f'{name} u8->bf16', batch=B, img_s=B / t, ms=1e3 * t,
              note=f'{size}x{size} photometric + normalise, channels_last out')


def synthetic_root(c:Ctx) -> Path:
    from scrfd_nb.synthetic import make_synthetic_widerface
    a = c.a
    root = Path(a.data_dir or Path(tempfile.gettempdir()) / 'scrfd_bench_synth')
    lo, hi = (a.jpeg_size // 2, a.jpeg_size) if a.quick else (768, a.jpeg_size)
    t = time.perf_counter()
    make_synthetic_widerface(root, num_train=a.jpeg_count, num_val=0, seed=0, image_size=(lo, hi),
                             workers=max(1, min(16, os.cpu_count() or 1)), force=True)
    print(f"# synthetic JPEG dataset: {a.jpeg_count} images {lo}-{hi} px in {root} ({time.perf_counter() - t:.1f} s)", flush=True)
    return root

def loader_dataset(root, variant, size):
    from scrfd_nb.data import WiderFaceDataset
    from scrfd_nb.transforms import TrainPipeline
    from scrfd_nb.gpu_augment import DecodeOnlyPipeline
    from pipeline_refs import CropPipeline   # the earlier split, a benchmark row only
    if variant == 'cpu-full': pipe = TrainPipeline(size=size)
    elif variant == 'split-decode': pipe = DecodeOnlyPipeline(size=size)   # the trainer's default on an accelerator
    else: pipe = CropPipeline(size=size, out_dtype='uint8' if variant == 'split-u8' else 'float32')
    return WiderFaceDataset(root / 'train', mode='train', pipeline=pipe)

def make_loader(ds, variant, B, workers, n_batches, pin):
    from functools import partial
    from scrfd_nb.data import collate
    from scrfd_nb.gpu_augment import collate_decoded
    from pipeline_refs import collate_hwc
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=B * n_batches,
                                             generator=torch.Generator().manual_seed(0))
    kw = dict(num_workers=workers, pin_memory=pin, drop_last=True)
    if workers > 0: kw |= dict(prefetch_factor=4, persistent_workers=False)
    cf = partial({'cpu-full': collate, 'split-decode': collate_decoded}.get(variant, collate_hwc), pad_to=32)
    return torch.utils.data.DataLoader(ds, B, sampler=sampler, collate_fn=cf, **kw)

def to_device(batch, variant, dev, dtype):
    from scrfd_nb.gpu_augment import device_augment_batch
    from pipeline_refs import gpu_normalize_batch
    if variant == 'split-decode': return device_augment_batch(batch, dev, dtype=dtype, channels_last=True)
    if variant == 'cpu-full':
        from scrfd_nb.data import batch_to
        out = batch_to(batch, dev)
        out['images'] = out['images'].to(dtype=dtype, memory_format=torch.channels_last)
        return out
    return gpu_normalize_batch(batch, dev, dtype=dtype, channels_last=True)

def bench_pipeline_core(c:Ctx, root, variant, size, n):
    "One core, in this process: JPEG read + pipeline per sample (img/s per core) for each variant."
    ds = loader_dataset(root, variant, size)
    torch.set_num_threads(1)
    try:
        import cv2; cv2.setNumThreads(1)
        rng = np.random.default_rng(0)
        ds.load(0, rng)
        t, tc = time.perf_counter(), time.process_time()
        for i in range(n): ds.load(i % len(ds), rng)
        dt, dc = (time.perf_counter() - t) / n, (time.process_time() - tc) / n
    finally:
        torch.set_num_threads(c.threads); cv2.setNumThreads(-1)
    c.add(what='pipe/core', model='', config=variant, batch=1, img_s=1 / dc, ms=1e3 * dc,
          note=f'JPEG read + augmentation, 1 thread, {size} px out; CPU time (wall {1 / dt:.1f} img/s); ref 111.8 img/s/core (WIDER JPEGs)')

def bench_loader(c:Ctx, root, variant, B, workers, n_batches, size, model_name=None, cfg='bf16-cl'):
    "Loader img/s from JPEG to the device-side normalised batch (and, with a model, the training step on it)."
    dev = c.dev
    ds = loader_dataset(root, variant, size)
    pin = dev.type != 'cpu'
    prec = CONFIGS[cfg][0]
    dtype = torch.bfloat16 if (prec == 'bf16' and model_name is None) else torch.float32
    step = None
    if model_name is not None:
        raw, _, step_fn, _ = make_train(model_name, B, size, cfg, c)
        def step(batch):
            with amp_ctx(dev, prec): outs = raw(batch['images'])
            losses = compute_losses(raw, outs, batch)
            sum(losses[k] for k in LOSS_KEYS if k in losses).backward()
            opt.step(); opt.zero_grad(set_to_none=True)
        opt = make_sgd(raw.parameters(), 1e-4, device_type=dev.type, fused=dev.type == 'cuda')
    dl = make_loader(ds, variant, B, workers, n_batches + 2, pin)
    it = iter(dl)
    for _ in range(2):   # worker start-up, first batches (and the step's cuDNN autotuning)
        b = to_device(next(it), variant, dev, dtype)
        if step: step(b)
    c.sync(); t = time.perf_counter(); n = 0
    for batch in it:
        b = to_device(batch, variant, dev, dtype)
        if step: step(b)
        n += b['images'].shape[0]
    c.sync(); dt = time.perf_counter() - t
    what = 'e2e' if model_name else 'loader'
    c.add(what=what, model=model_name or '', config=f'{variant} w{workers}' + (f' {cfg}' if model_name else ''), batch=B,
          img_s=n / dt, ms=1e3 * dt / max(1, n / B),
          note=('JPEG -> augmented batch on the device' if not model_name else 'JPEG -> loss.backward -> SGD step')
          + (f'; target 800 img/s' if model_name == 'scrfd_10g_bnkps' and dev.type != 'cpu' else ''))


# ------------------------------------------------------------------------------------------------ main
def plan(a, dev):
    "The measurements in order of importance: (name, cost guess in s, function, args)."
    P = []   # (tier, label, cost, fn, args); sorted by tier (stable), so --budget drops the least important
    models = a.models.split(',')
    cfgs = a.configs.split(',')
    big = {'scrfd_500m_bnkps': 128, 'scrfd_10g_bnkps': 128, 'scrfd_34g': 64}
    ref_b = {'scrfd_500m_bnkps': 16, 'scrfd_10g_bnkps': 8, 'scrfd_34g': 8}
    batches = [int(b) for b in a.batches.split(',')] if a.batches else None
    key = 'scrfd_10g_bnkps' if 'scrfd_10g_bnkps' in models else models[0]
    def bs_for(m, cfg):
        if batches: return batches
        if a.quick: return [2]
        if cfg.startswith('fp32'): return sorted({ref_b[m], 32 if m == 'scrfd_10g_bnkps' else ref_b[m]})
        if 'compile' in cfg: return [big[m]]
        return sorted({ref_b[m], 32, big[m]})
    if 'train' in a.only:
        order = sorted(models, key=lambda m: m != key)
        for m in order:
            for cfg in cfgs:
                bl = bs_for(m, cfg)
                for B in bl:
                    comp = 'compile' in cfg
                    if comp and not can_compile(dev):
                        P.append((9, f'train {m} {cfg}', 0, 'skip', ('no torch.compile backend',))); break
                    if cfg == 'bf16-cl' and B == bl[-1]: tier = 0                       # the headline rows
                    elif cfg == 'fp32' and B == ref_b.get(m) and m == key: tier = 0     # the reference configuration
                    elif comp and m == key: tier = 1                                    # the network-alone figure to beat
                    elif comp: tier = 6
                    else: tier = 4
                    P.append((tier, f'train {m} {cfg} b{B}', 150 if comp else 20, bench_train, (m, cfg, B)))
        if dev.type == 'cuda': P.append((0, 'syncs', 10, count_syncs, (key,)))
        P.append((6, 'parity', 10, loss_parity, (key,)))
    if 'detect' in a.only:
        wh = (640, 480) if not a.quick else (160, 128)
        variants = ['fp32'] + (['fp16'] if dev.type != 'cpu' else []) + (['fp16-graph'] if dev.type == 'cuda' else [])
        for v in variants: P.append((1, f'detect {key} {v}', 10, bench_detect, (key, v, wh)))
        if not a.quick and dev.type == 'cuda': P.append((5, f'detect {key} fp16-compile-ro', 60, bench_detect, (key, 'fp16-compile-ro', wh)))
        P.append((1, f'detect-b {key}', 15, bench_detect_batched, (key, 'fp32' if dev.type == 'cpu' else 'fp16', 2 if a.quick else 32, 128 if a.quick else 640)))
    if 'loader' in a.only:
        size = a.size
        n, lb, nb = (6, 4, 3) if a.quick else (48, 32, 20)
        em = ('scrfd_500m_bnkps' if 'scrfd_500m_bnkps' in models else models[0]) if a.quick else key
        ecfg = 'bf16-cl' if dev.type != 'cpu' else 'fp32'
        P.append((2, 'gpu_augment', 20, bench_gpu_augment, (4 if a.quick else 32, size)))
        P.append((2, 'synthetic data', 30, 'data', ()))
        for v in ('cpu-full', 'split-decode', 'split-f32', 'split-u8'): P.append((2, f'pipe/core {v}', 10, bench_pipeline_core, ('ROOT', v, size, n)))
        for v in ('split-decode', 'cpu-full', 'split-u8'): P.append((2, f'loader {v}', 20, bench_loader, ('ROOT', v, lb, a.workers, nb, size)))
        P.append((2, f'e2e {em}', 40, bench_loader, ('ROOT', 'split-decode', lb, a.workers, nb, size, em, ecfg)))
        P.append((5, 'loader split-f32', 20, bench_loader, ('ROOT', 'split-f32', lb, a.workers, nb, size)))
        if not a.quick: P.append((5, f'e2e {em} cpu-full', 40, bench_loader, ('ROOT', 'cpu-full', lb, a.workers, nb, size, em, ecfg)))
    P.sort(key=lambda t: t[0])
    return [t[1:] for t in P]

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='auto', help='auto, cpu, cuda, npu')
    p.add_argument('--quick', action='store_true', help='tiny sizes and few steps (automatic without an accelerator)')
    p.add_argument('--full', action='store_true', help='full sizes even on the CPU')
    p.add_argument('--only', default='train,detect,loader', help='sections: train, detect, loader')
    p.add_argument('--models', default='scrfd_10g_bnkps,scrfd_500m_bnkps,scrfd_34g')
    p.add_argument('--configs', default=None, help=f'training configs, of {",".join(CONFIGS)} '
                   '(default fp32,bf16-cl,bf16-cl-compile; quick: fp32)')
    p.add_argument('--batches', default=None, help='batch sizes for every model (default: reference batch, 32, 128/64)')
    p.add_argument('--size', type=int, default=None, help='training crop (default 640; quick 96)')
    p.add_argument('--steps', type=int, default=None, help='timed steps (default 15; quick 2)')
    p.add_argument('--warmup', type=int, default=None, help='warm-up steps (default 5; quick 1)')
    p.add_argument('--workers', type=int, default=None, help='loader workers (default: CPU count)')
    p.add_argument('--jpeg-count', type=int, default=None, help='synthetic JPEGs to write (default 256; quick 12)')
    p.add_argument('--jpeg-size', type=int, default=None, help='largest side of the synthetic JPEGs (default 1024, WIDER-like)')
    p.add_argument('--data-dir', default=None, help='where to write the synthetic JPEGs (default: a temp folder)')
    p.add_argument('--budget', type=float, default=None, help='seconds after which no new row starts (default 500; quick 900)')
    p.add_argument('--out', default=os.environ.get('OUT'), help='write bench_gpu.json here (default $OUT)')
    a = p.parse_args(argv)

    dev = pick_device(a.device)
    a.quick = (a.quick or dev.type == 'cpu') and not a.full
    q = a.quick
    a.configs = a.configs or ('fp32' if q else 'fp32,bf16-cl,bf16-cl-compile')   # CPU bf16 convolutions are very slow
    a.size = a.size or (96 if q else 640)
    a.steps = a.steps or (2 if q else 15)
    a.warmup = a.warmup if a.warmup is not None else (1 if q else 5)
    a.workers = a.workers if a.workers is not None else (2 if q else min(16, os.cpu_count() or 1))
    a.jpeg_count = a.jpeg_count or (12 if q else 256)
    a.jpeg_size = a.jpeg_size or (320 if q else 1024)
    a.budget = a.budget or (900 if q else 500)
    a.batches_max = max([int(b) for b in a.batches.split(',')] if a.batches else [4])
    a.only = set(a.only.split(','))
    if a.out: Path(a.out).mkdir(parents=True, exist_ok=True)
    if dev.type == 'cuda':
        torch.backends.cudnn.benchmark = True   # the reference's fp32 is TF32 convolutions (cuDNN default)
    name = platform.processor() or platform.machine()
    cap = ''
    if dev.type != 'cpu':
        try:
            mod = torch.get_device_module(dev.type)
            name = mod.get_device_name(dev)
            if dev.type == 'cuda': cap = f" sm_{''.join(map(str, torch.cuda.get_device_capability(dev)))}, cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}"
        except Exception: pass
    META.update(date=f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", device=str(dev), name=name,
                torch=torch.__version__, python=platform.python_version(), cpus=os.cpu_count(), threads=torch.get_num_threads(),
                quick=q, size=a.size, steps=a.steps, warmup=a.warmup, compile=can_compile(dev))
    print(f"# scrfd_nb bench/gpu.py  {META['date']}  device {dev} ({name}{cap})  torch {torch.__version__}  "
          f"python {META['python']}  {os.cpu_count()} CPUs, {torch.get_num_threads()} threads  "
          f"{'QUICK (tiny sizes)' if q else 'full'}: crop {a.size}, median of {a.steps} after {a.warmup} warm-up, "
          f"budget {a.budget:.0f} s, compile {'available' if META['compile'] else 'unavailable'}", flush=True)
    print(HDR, flush=True)
    c = Ctx(a, dev); c.threads = torch.get_num_threads()
    root = None
    for label, cost, fn, args in plan(a, dev):
        if fn == 'skip': c.add(what='skipped', note=f'{label}: {args[0]}'); continue
        if c.left() < cost:
            c.add(what='skipped', note=f'{label}: time budget ({c.left():.0f} s left, needs ~{cost} s)'); continue
        try:
            if fn == 'data': root = synthetic_root(c); continue
            if 'ROOT' in args:
                if root is None: raise RuntimeError('no synthetic dataset')
                args = tuple(root if x == 'ROOT' else x for x in args)
            fn(c, *args)
        except torch.OutOfMemoryError:
            c.add(what='error', note=f'{label}: out of memory')
        except Exception as e:
            c.add(what='error', note=f'{label}: {e.__class__.__name__}: {str(e).splitlines()[0][:160] if str(e) else ""}')
            if a.out:
                with open(Path(a.out, 'bench_gpu_errors.txt'), 'a') as f: f.write(f'== {label}\n{traceback.format_exc()}\n')
        finally:
            c.empty_cache()
    print(f"\n# table ({META['date']}, {dev} {name}, torch {torch.__version__}, {'QUICK' if q else 'full'} run, "
          f"crop {a.size}, {time.perf_counter() - c.t0:.0f} s). img/s: images per second; ms: per step / per call; "
          f"ratio: step/net (net rows: -), det-net/detect, step/step+h; vs ref: ours / reference (ANCHORS.md, H200) "
          f"for img/s, reference / ours for detection ms")
    print(HDR); print('-' * len(HDR))
    for r in c.rows: print(fmt_row(r))
    return c.rows


if __name__ == '__main__': main()
