"""Where the CPU training step of scrfd_nb goes (issue 7: "profile before optimising"), and which ops in the step
would synchronise the host with an accelerator.

  python bench/train_cpu.py                       # scrfd_500m_bnkps, batch 4, 640x640, fp32, 2 threads
  python bench/train_cpu.py --steps 5 --trace /tmp/trace.json

Prints (1) per-phase wall time of the step (network forward, ATSS targets, losses, backward, SGD step), median of
--steps after a warm-up, next to the reference's figure on this machine kind (ANCHORS.md: 0.30 s per step, network
90 %, targets + losses + optimizer 31 ms); (2) the torch.profiler table of the step's top ops by self CPU time with
the phase labels; (3) a dry run of targets + losses + backward on the 'meta' device (the accelerator code path), which fails on any
op that reads tensor values on the host, and lists the host-built tensors copied to the device per step (each one a
blocking copy, i.e. a device->host wait, on CUDA).
"""
import argparse, statistics, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
from scrfd_nb.model import build_model
from scrfd_nb.runtime import make_sgd
from scrfd_nb.anchors import grid_anchors
from scrfd_nb.losses import build_targets, compute_loss
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import fake_batch, LOSS_KEYS

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='scrfd_500m_bnkps'); p.add_argument('--batch', type=int, default=4)
    p.add_argument('--size', type=int, default=640); p.add_argument('--steps', type=int, default=5)
    p.add_argument('--threads', type=int, default=2); p.add_argument('--trace', default=None)
    p.add_argument('--nchw', action='store_true', help='contiguous NCHW (default: channels_last, as scrfd_nb.train)')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = torch.device('cpu')
    model = build_model(a.model).train()
    if not a.nchw: model = model.to(memory_format=torch.channels_last)
    opt = make_sgd(model.parameters(), 1e-4)
    batch = fake_batch(a.batch, a.size, dev, channels_last=not a.nchw)
    T = {k: [] for k in ('forward', 'targets', 'losses', 'backward', 'optimizer', 'total')}

    def step(rec=True):
        from torch.profiler import record_function
        t0 = time.perf_counter()
        with record_function('## forward'): outs = model(batch['images'])
        t1 = time.perf_counter()
        with record_function('## targets'):
            h = model.cfg.model.head
            anchors = grid_anchors([tuple(c.shape[-2:]) for c in outs[0]], h.strides, h.base_sizes, h.anchor_scales, device=dev)
            tg = build_targets(anchors, batch['gt_boxes'], batch['gt_kps'], batch['gt_mask'], model.cfg.assign.topk, dense=False)
        t2 = time.perf_counter()
        with record_function('## losses'):
            l = compute_loss(outs, batch['gt_boxes'], batch['gt_kps'], batch['gt_mask'], model.cfg, use_kps=model.use_kps,
                             anchors=anchors, targets=tg)
            loss = sum(l[k] for k in LOSS_KEYS if k in l)
        t3 = time.perf_counter()
        with record_function('## backward'): loss.backward()
        t4 = time.perf_counter()
        with record_function('## optimizer'): opt.step(); opt.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        if rec:
            for k, v in zip(T, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0)): T[k].append(v)
        return loss

    step(False)
    for _ in range(a.steps): step()
    tot = statistics.median(T['total'])
    print(f"# {a.model}, batch {a.batch}, {a.size}x{a.size}, fp32, {'NCHW' if a.nchw else 'channels_last'}, {a.threads} threads, torch {torch.__version__}; "
          f"median of {a.steps} steps")
    print(f"{'phase':<12}{'ms':>9}{'share':>8}")
    for k, v in T.items():
        m = statistics.median(v)
        print(f"{k:<12}{1e3 * m:>9.1f}{100 * m / tot:>7.1f}%")
    ntl = sum(statistics.median(T[k]) for k in ('targets', 'losses', 'optimizer'))
    print(f"step {tot:.3f} s = {a.batch / tot:.1f} img/s (reference on this machine kind: 0.30 s, 13.5 img/s); "
          f"targets + losses + optimizer {1e3 * ntl:.0f} ms (reference 31 ms)")

    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(2): step(False)
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=25))
    if a.trace: prof.export_chrome_trace(a.trace)

    meta_dry_run(model, batch)

def meta_dry_run(model, batch):
    "Targets + losses + backward on the 'meta' device: takes the accelerator code path, and any op that needs tensor"
    " values on the host (.item(), nonzero, boolean-mask indexing, repeat_interleave by a tensor) raises there."
    " Host-built tensors sent to the device (torch.tensor(list, device=...): a blocking H2D copy, i.e. a stream sync"
    " on CUDA) are listed by file:line."
    import contextlib, traceback
    outs = model(batch['images'])
    meta = lambda t: t.detach().to('meta')
    mo = tuple(None if o is None else [meta(t).requires_grad_() for t in o] for o in outs)
    real_autocast, real_tensor, calls = torch.autocast, torch.tensor, []
    def spy(*args, **kw):
        if str(kw.get('device', '')).startswith('meta'):
            fr = traceback.extract_stack(limit=2)[0]; calls.append(f"{Path(fr.filename).name}:{fr.lineno}")
        return real_tensor(*args, **kw)
    torch.autocast, torch.tensor = (lambda *a, **k: contextlib.nullcontext()), spy   # autocast has no 'meta' backend
    try:
        compute_loss(mo, meta(batch['gt_boxes']), meta(batch['gt_kps']), batch['gt_mask'].to('meta'), model.cfg,
                     use_kps=model.use_kps)   # first call fills the anchor cache
        calls.clear()
        l = compute_loss(mo, meta(batch['gt_boxes']), meta(batch['gt_kps']), batch['gt_mask'].to('meta'), model.cfg,
                         use_kps=model.use_kps)
        sum(l[k] for k in LOSS_KEYS if k in l).backward()
        print("\n# meta-device dry run of targets + losses + backward (the accelerator code path): OK, no op that reads "
              "tensor values on the host")
    except Exception as e:
        print(f"\n# meta-device dry run FAILED (a host read of tensor values on the accelerator path?): {e!r}"[:400])
        traceback.print_exc(limit=-4)
    finally:
        torch.autocast, torch.tensor = real_autocast, real_tensor
    print(f"# host-built tensors copied to the device in one step (each a blocking copy = stream sync on CUDA): "
          f"{', '.join(calls) or 'none'}")

if __name__ == '__main__': main()
