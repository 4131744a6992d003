"""Training end to end, in subprocesses as a user runs it: `python -m scrfd_nb.launch ...` on CPU with gloo.

Tiny synthetic data (small images, small crops) keeps each run to seconds. What is checked:
- a 2-process run finishes, writes checkpoints, a log and config.json, and its loss goes down;
- `--augment-on device` (workers only decode; the pixel work batched on the device, here the CPU) trains like the
  workers' path: same crops, same float pixels, so the same first loss;
- a run killed with SIGKILL mid-epoch and resumed ends with exactly the weights of the uninterrupted run;
- a rank that raises makes the launcher exit non-zero within 30 s, naming the rank;
- the lr schedule equals mmcv's formulas (warmup, steps, scaling rule) at chosen iterations;
- `--init-from` an official ONNX model + `--eval-only` reproduces that model's detections (onnxruntime + decoder).
"""
import json, os, re, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
from conftest import require_package
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--device', 'cpu', '--img-size', '64', '--batch-size', '4', '--workers', '0', '--log-interval', '1',
        '--eval-interval', '0', '--no-progress']


def env(**kw):
    e = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', TORCH_DEVICE_BACKEND_AUTOLOAD='0')
    e.pop('SCRFD_FAIL_RANK', None)
    e.update({k: str(v) for k, v in kw.items()})
    return e


def launch(args, timeout=240, **kw):
    return subprocess.run([sys.executable, '-m', 'scrfd_nb.launch', *args], cwd=ROOT, env=env(**kw),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "A tiny synthetic WIDER FACE dataset shared by the tests of this file."
    from scrfd_nb.synthetic import ensure_synthetic
    return ensure_synthetic(tmp_path_factory.mktemp('synth')/'data', num_train=16, num_val=4, seed=0,
                            image_size=(64, 96))


def losses(work):
    return [json.loads(l)['loss'] for l in (Path(work)/'metrics.jsonl').read_text().splitlines() if '"loss"' in l]


def test_lr_schedule_matches_mmcv():
    from scrfd_nb.train import lr_at, make_schedule, scaled_lr
    from scrfd_nb.config import get_config
    # mmcv 1.x: warmup lr = regular * (1 - (1 - it/1500) * (1 - 0.001)); regular = base * 0.1 ** (#steps <= epoch)
    ref = lambda it, ep, base: base * 0.1 ** ((ep >= 440) + (ep >= 544)) * (
        1 - (1 - it / 1500) * 0.999 if it < 1500 else 1)
    for it, ep in [(0, 0), (1, 0), (402, 0), (403, 1), (1000, 2), (1499, 3), (1500, 3), (177_000, 439),
                   (177_400, 440), (219_300, 544), (257_919, 639)]:
        assert lr_at(it, ep, 0.01) == pytest.approx(ref(it, ep, 0.01), rel=1e-12, abs=0), (it, ep)
    # scaling rule: 8 cards x 8 images = 64 -> 2x; 34g's 0.02 at batch 32
    s = make_schedule(get_config('scrfd_10g_bnkps').train, 8, 8, 202, log=lambda *a: None)
    assert s.base_lr == pytest.approx(0.02) and s.steps == (440, 544) and s.warmup_iters == 1500
    assert scaled_lr(0.02, 16) == pytest.approx(0.01)


def test_two_process_run_learns(data, tmp_path):
    work = tmp_path/'w'
    r = launch(['--nproc', '2', '--data-path', str(data), '--work-dir', str(work), '--epochs', '4',
                '--lr', '0.16', '--warmup-iters', '2', *TINY])   # 0.16 at the reference batch 64 = 0.02 at 2 x 4
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (work/'train.log').exists() and 'done:' in (work/'train.log').read_text()
    cfg = json.loads((work/'config.json').read_text())
    assert cfg['world_size'] == 2 and cfg['global_batch'] == 8 and cfg['backend'] == 'gloo'
    cks = sorted(p.name for p in work.glob('ckpt_*.pth'))
    assert cks and cks[-1] == 'ckpt_e0004_i00000008.pth', cks      # 16 images / (2 x 4) = 2 iterations per epoch
    ck = torch.load(work/cks[-1], map_location='cpu', weights_only=False)
    assert len(ck['rng']) == 2 and ck['epoch'] == 4 and ck['iter'] == 8
    l = losses(work)
    assert len(l) == 8 and all(np.isfinite(l))
    assert np.mean(l[-2:]) < np.mean(l[:2]), l


def test_augment_on_device_matches_workers(data, tmp_path):
    runs = {}
    for where in ('cpu', 'device'):
        work = tmp_path/where
        r = subprocess.run([sys.executable, '-m', 'scrfd_nb.train', '--data-path', str(data), '--work-dir', str(work),
                            '--epochs', '1', '--lr', '0.32', '--warmup-iters', '2', '--augment-on', where, *TINY],
                           cwd=ROOT, env=env(), capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        runs[where] = (losses(work), (work/'train.log').read_text())
    (l_cpu, log_cpu), (l_dev, log_dev) = runs['cpu'], runs['device']
    assert 'batched on cpu' in log_dev and 'all of it in the loader workers' in log_cpu
    assert [json.loads((tmp_path/w/'config.json').read_text())['augment_on'] for w in ('cpu', 'device')] == ['cpu', 'device']
    assert len(l_dev) == len(l_cpu) == 4 and all(np.isfinite(l_dev))
    # iteration 0: same weights, same crops and draws, pixels equal within float rounding (1e-6)
    assert l_dev[0] == pytest.approx(l_cpu[0], rel=1e-4), (l_dev, l_cpu)


def _weights(p):
    return torch.load(p, map_location='cpu', weights_only=False)['model']


def test_resume_after_sigkill_is_exact(data, tmp_path):
    args = ['--nproc', '1', '--data-path', str(data), '--epochs', '3', '--deterministic', '--ckpt-iters', '2',
            '--warmup-iters', '3', *TINY]
    full = tmp_path/'full'    # the uninterrupted run, in parallel with the interrupted one (2 cores)
    pf = subprocess.Popen([sys.executable, '-m', 'scrfd_nb.launch', *args, '--work-dir', str(full)], cwd=ROOT, env=env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # the same run, killed with SIGKILL in the middle of epoch 1 (after iteration 7 of 4 per epoch)
    part = tmp_path/'part'
    p = subprocess.Popen([sys.executable, '-m', 'scrfd_nb.launch', *args, '--work-dir', str(part)], cwd=ROOT,
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    killed = False
    for line in p.stdout:
        if ' it 7 ' in line:
            os.killpg(p.pid, signal.SIGKILL); killed = True; break
    p.wait(timeout=60)
    assert killed and p.returncode != 0
    last = sorted(part.glob('ckpt_*.pth'))[-1]
    assert last.name == 'ckpt_e0001_i00000006.pth', last        # mid-epoch: batch 2 of epoch 1
    _, err = pf.communicate(timeout=240)
    assert pf.returncode == 0, err[-3000:]
    r = launch([*args, '--work-dir', str(part), '--resume', 'latest'])
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'resumed from' in r.stdout and 'batch 2 of the epoch, iteration 6' in r.stdout
    a, b = _weights(full/'ckpt_e0003_i00000012.pth'), _weights(part/'ckpt_e0003_i00000012.pth')
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, diff[:5]


def test_failing_rank_stops_the_job(data, tmp_path):
    r = launch(['--nproc', '2', '--data-path', str(data), '--work-dir', str(tmp_path/'f'), '--epochs', '50', *TINY],
               timeout=120, SCRFD_FAIL_RANK=1)
    t_exit = time.time()
    assert r.returncode != 0
    summary = r.stderr[r.stderr.find('scrfd_nb.launch: job failed'):]
    assert 'rank 1 (local rank 1' in summary and 'injected failure in rank 1' in summary, r.stderr[-3000:]
    t_fail = float(re.search(r'injected failure in rank 1 at t=([0-9.]+)', summary)[1])
    assert t_exit - t_fail < 30, t_exit - t_fail      # the whole job is gone within 30 s of the error


def test_init_from_onnx_reproduces_its_detections(data, tmp_path, shared):
    ort = require_package('onnxruntime', 'a dev requirement: pip install -e ".[dev]"')
    from scrfd_nb.detect import preprocess, onnx_outputs_to_flat, postprocess_flat
    from scrfd_nb.evaluate import read_pred_dir
    from scrfd_nb.config import get_config
    onnx = shared/'data'/'models'/'det_500m.onnx'
    work = tmp_path/'e'
    r = launch(['--nproc', '1', '--device', 'cpu', '--data-path', str(data), '--work-dir', str(work), '--init-from',
                str(onnx), '--eval-only', '--no-progress'])
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'init-from: 285/285 tensors loaded' in r.stdout
    ours = read_pred_dir(work/'preds')
    d = get_config('scrfd_500m_bnkps').detect
    sess = ort.InferenceSession(str(onnx), providers=['CPUExecutionProvider'])
    imgs = sorted((data/'val'/'images').rglob('*.jpg'))
    assert len(imgs) == 4
    n = 0
    for im in imgs:
        x, metas = preprocess([im], d.input_size, mode='mmdet')
        outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        s, b, k, = onnx_outputs_to_flat(outs)[:3]
        fs = [(d.input_size // st, d.input_size // st) for st in (8, 16, 32)]
        ref = postprocess_flat(s, b, k, fs, metas, mode='mmdet', score_thr=d.score_thr, nms_thr=d.nms_thr)[0]
        rb, rs = ref['boxes'].numpy(), ref['scores'].numpy()
        mine = ours[im.parent.name][im.stem]
        top = rs > 0.1                              # near the 0.02 threshold, BN folding may flip a box in or out
        m = mine[mine[:, 4] > 0.1]
        assert len(m) == top.sum(), (im, len(m), top.sum())
        np.testing.assert_allclose(m[:, 4], rs[top], atol=1e-4)
        np.testing.assert_allclose(m[:, :2], rb[top, :2], atol=2e-2)
        np.testing.assert_allclose(m[:, :2] + m[:, 2:4], rb[top, 2:4], atol=2e-2)
        n += len(m)
    assert n > 0


def run_py(args, timeout=240, **kw):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env(**kw), capture_output=True, text=True, timeout=timeout)


def test_every_checkpoint_loads_safely_and_drives_the_consumers(data, tmp_path, shared):
    "A short run's every file loads with weights_only=True and works in detect, export and --init-from."
    work = tmp_path/'w'
    r = launch(['--nproc', '1', '--data-path', str(data), '--work-dir', str(work), '--epochs', '2', '--ckpt-iters', '3',
                *TINY[:-3], '--eval-interval', '2', '--no-progress'])   # TINY ends with --eval-interval 0 --no-progress
    assert TINY[-3:] == ['--eval-interval', '0', '--no-progress']
    assert r.returncode == 0, r.stderr[-3000:]
    files = sorted(work.glob('*.pth'))
    names = [p.name for p in files]
    assert 'ckpt_e0002_i00000008.pth' in names and 'best.pth' in names and any('e0000' in n or 'e0001' in n for n in names), names
    img = data/'val'/'images'
    img = sorted(img.rglob('*.jpg'))[0]
    for p in files:
        ck = torch.load(p, map_location='cpu', weights_only=True)
        assert {'model', 'config'} <= set(ck), p
        d = run_py(['-m', 'scrfd_nb.detect', '--weights', str(p), '--image', str(img), '--json', str(tmp_path/f'{p.stem}.json'),
                    '--thr', '0.0', '--input-size', '64'])
        assert d.returncode == 0 and (tmp_path/f'{p.stem}.json').exists(), (p, d.stderr[-2000:])
    last = work/'ckpt_e0002_i00000008.pth'
    e = run_py(['-m', 'scrfd_nb.export', '--weights', str(last), '--out', str(tmp_path/'m.onnx'), '--shape', '64', '64'])
    assert e.returncode == 0 and (tmp_path/'m.onnx').stat().st_size > 100_000, e.stderr[-2000:]
    i = launch(['--nproc', '1', '--device', 'cpu', '--data-path', str(data), '--work-dir', str(tmp_path/'i'),
                '--init-from', str(last), '--eval-only', '--img-size', '64', '--no-progress'])
    assert i.returncode == 0 and 'init-from: 285/285 tensors loaded' in i.stdout, i.stderr[-2000:]


KILL_IN_SAVE = """
import os, signal, sys, torch
import scrfd_nb.train as T
n, real = [0], torch.save
def save(obj, f, *a, **k):           # the 2nd checkpoint: half of it written, then the process is killed
    n[0] += 1
    if n[0] < 2: return real(obj, f, *a, **k)
    f.write(b'PK\\x03\\x04' + b'x' * 4096); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
T.torch.save = save
sys.exit(T.run_cli(T.main))
"""


def test_killed_during_a_checkpoint_write_then_resume(data, tmp_path):
    "SIGKILL in the middle of writing a checkpoint: the previous one stays loadable and --resume latest continues."
    work = tmp_path/'k'
    args = ['--data-path', str(data), '--work-dir', str(work), '--epochs', '3', '--ckpt-iters', '2', '--warmup-iters', '2',
            *TINY]
    r = run_py(['-c', KILL_IN_SAVE, *args])
    assert r.returncode == -9, (r.returncode, r.stderr[-2000:])
    cks = sorted(work.glob('ckpt_*.pth'))
    assert [p.name for p in cks] == ['ckpt_e0000_i00000002.pth'], cks            # the cut one never got its name
    assert torch.load(cks[0], weights_only=True)['iter'] == 2
    r = launch(['--nproc', '1', *args, '--resume', 'latest'])
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'resumed from' in r.stdout and 'iteration 2' in r.stdout and 'done: 12 iterations' in r.stdout
    # a corrupt newest checkpoint is named and skipped; the run continues from the one before
    newest = sorted(work.glob('ckpt_*.pth'))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    r = launch(['--nproc', '1', *args, '--epochs', '4', '--resume', 'latest'])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'skipping unreadable {newest.name}' in r.stdout and 'resumed from' in r.stdout, r.stdout[-2000:]


def test_bad_training_input_is_one_line(data, tmp_path, capsys):
    "Each bad option: one error line naming it, exit 2, nothing written (in-process through run_cli, one case as a subprocess)."
    from scrfd_nb.core import run_cli
    from scrfd_nb.launch import main
    weights = tmp_path/'weights.pth'; torch.save({'model': {}}, weights)
    cases = [(['--lr', 'nan'], '--lr'), (['--batch-size', '0'], '--batch-size'), (['--img-size', '0'], '--img-size'),
             (['--config', 'scrfd_3g'], '--config'), (['--data-path', str(tmp_path/'none')], '--data-path'),
             (['--data-path', str(tmp_path)], 'train/labelv2.txt'), (['--work-dir', str(weights)], '--work-dir'),
             (['--resume', str(tmp_path/'nope.pth')], '--resume'), (['--set', 'train.lrr=1'], 'train.lrr'),
             (['--device', 'foo'], '--device'), (['--eval-interval', '-1'], '--eval-interval'), (['--nproc', '0'], '--nproc'),
             (['--nproc', '2', '--nnodes', '2', '--node-rank', '2'], '--node-rank')]
    for args, says in cases:
        code = run_cli(main, ['--work-dir', str(tmp_path/'out'), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and says in err[-1], (args, code, err[-3:])
    assert not (tmp_path/'out').exists()
    # a weights-only file given to --resume: told to use --init-from, before any training
    r = launch(['--nproc', '1', '--data-path', str(data), '--work-dir', str(tmp_path/'r'), '--resume', str(weights), *TINY], timeout=120)
    assert r.returncode == 2 and 'use --init-from' in r.stderr.strip().splitlines()[-1] and 'Traceback' not in r.stderr, r.stderr[-2000:]


def test_nan_lr_run_fails_without_writing(data, tmp_path):
    "A run whose steps cannot stay finite exits 1 with one line, and writes no checkpoint."
    work = tmp_path/'n'
    r = launch(['--nproc', '1', '--data-path', str(data), '--work-dir', str(work), '--epochs', '3', '--lr', '1e30',
                '--warmup-iters', '1', '--max-nonfinite', '2', *TINY])
    assert r.returncode == 1 and 'loss not finite for 2 iterations in a row' in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
    assert 'Traceback' not in r.stderr and not list(work.glob('*.pth'))


def test_training_ap_equals_test_widerface(data, tmp_path, shared):
    "The AP the trainer logs is the AP test_widerface prints for the same weights, images and input size (one path)."
    onnx = shared/'data'/'models'/'det_500m.onnx'
    for nms_pre in ('0', '1000'):
        work = tmp_path/f'e{nms_pre}'
        r = launch(['--nproc', '1', '--device', 'cpu', '--data-path', str(data), '--work-dir', str(work), '--init-from', str(onnx),
                    '--eval-only', '--img-size', '96', '--eval-nms-pre', nms_pre, '--no-progress'])
        assert r.returncode == 0, r.stderr[-3000:]
        logged = [json.loads(l) for l in (work/'metrics.jsonl').read_text().splitlines() if 'ap_hard' in l][-1]
        t = run_py(['-m', 'scrfd_nb.test_widerface', '--weights', str(onnx), '--data-path', str(data), '--mode', '96',
                    '--nms-pre', nms_pre, '--out', str(tmp_path/f'o{nms_pre}'),
                    '--json', str(tmp_path/f'aps{nms_pre}.json'), '--no-progress'])
        assert t.returncode == 0, t.stderr[-3000:]
        printed = json.loads((tmp_path/f'aps{nms_pre}.json').read_text())
        assert {k: logged[f'ap_{k}'] for k in ('easy', 'medium', 'hard')} == printed, (logged, printed)
        assert printed['hard'] > 0.3                     # a real detector on these faces, not two zeros
