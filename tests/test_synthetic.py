"""The synthetic dataset CLI in subprocesses: worker processes give the same bytes as one, a non-empty different
folder is refused with exit code 2 unless --force, and a generation killed with SIGKILL leaves no dataset behind."""
import hashlib, os, signal, subprocess, sys, time
from pathlib import Path
from scrfd_nb.synthetic import read_meta, read_synthetic_labels


def cli(*args, **kw):
    return subprocess.run([sys.executable, '-m', 'scrfd_nb.synthetic', *map(str, args)], capture_output=True, text=True, **kw)


def digest(root):
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*')) if p.is_file()}


def test_workers_same_bytes_and_refusal(tmp_path):
    a, b = tmp_path/'a', tmp_path/'b'
    r = cli('--out', a, '--preset', 'tiny', '--workers', '2')
    assert r.returncode == 0, r.stderr
    assert cli('--out', b, '--preset', 'tiny', '--workers', '1').returncode == 0
    assert digest(a) == digest(b) and len(digest(a)) == 16 + 8 + 4     # jpgs + 2 labelv2 + README + meta.json
    recs = read_synthetic_labels(a/'train'/'labelv2.txt')
    assert len(recs) == read_meta(a)['counts']['train']['images'] == 16
    r = cli('--out', a, '--preset', 'tiny', '--seed', '1', '--workers', '1')
    assert r.returncode == 2 and 'other parameters' in r.stderr and read_meta(a)['params']['seed'] == 0
    r = cli('--out', a, '--preset', 'tiny', '--seed', '1', '--workers', '1', '--force')
    assert r.returncode == 0 and read_meta(a)['params']['seed'] == 1 and digest(a) != digest(b)


def test_killed_generation_leaves_nothing(tmp_path):
    out = tmp_path/'ds'
    p = subprocess.Popen([sys.executable, '-m', 'scrfd_nb.synthetic', '--out', str(out), '--num-train', '2000',
                          '--num-val', '0', '--preset', 'tiny', '--workers', '1'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not any((x/'train'/'images').exists() for x in tmp_path.glob('.ds.tmp-*')) and time.time() < deadline: time.sleep(0.1)
    time.sleep(0.5); p.send_signal(signal.SIGKILL); p.wait()
    assert not out.exists() and list(tmp_path.glob('.ds.tmp-*'))        # half a dataset, only under the temp name
    assert cli('--out', out, '--preset', 'tiny', '--num-val', '2', '--workers', '1').returncode == 0
    assert read_meta(out)['counts']['val']['images'] == 2 and not list(tmp_path.glob('.ds.tmp-*'))   # stale temp cleaned
