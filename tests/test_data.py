"""CLI and end-to-end checks of scrfd_nb.data that are awkward in notebook prose (the planted-error CLI check is in
nbs/11_data.ipynb, next to the corrupted example it writes; the transforms' checks are in tests/test_transforms.py)."""
import subprocess, sys
import numpy as np
import pytest
from scrfd_nb.data import check_labelv2, WiderFaceDataset, build_loader
from scrfd_nb.transforms import TrainPipeline


def _cli(*args):
    return subprocess.run([sys.executable, '-m', 'scrfd_nb.data', *map(str, args)], capture_output=True, text=True, timeout=300)


def test_check_cli_passes_real_val(shared):
    r = _cli('check', shared/'data'/'widerface'/'scrfd_labelv2_val.txt')
    assert r.returncode == 0, r.stdout + r.stderr
    assert '3226 images, 39697 faces' in r.stdout


def test_check_train_mode_rejects_4_values(shared):
    rep = check_labelv2(shared/'golden'/'pipeline_labelv2_test.txt', mode='train')
    assert not rep.ok and set(rep.kinds()) == {'value count'}
    assert check_labelv2(shared/'golden'/'pipeline_labelv2_test.txt', mode='test').ok


def test_synthetic_subcommand_delegates():
    r = _cli('synthetic', '--help')
    assert r.returncode == 0 and '--out' in r.stdout


def test_loader_two_workers_shards_and_reports(tmp_path, shared):
    "Two ranks see disjoint halves; a missing image is reported in the batch and the epoch still completes."
    import cv2
    d = tmp_path/'split'; (d/'images').mkdir(parents=True)
    lines = []
    for i in range(6):
        cv2.imwrite(str(d/'images'/f'{i}.jpg'), np.full((120, 160, 3), 40 * i, np.uint8))
        lines += [f'# {i}.jpg 160 120', '30 30 70 80 0']
    lines += ['# gone.jpg 160 120', '30 30 70 80 0']
    (d/'labelv2.txt').write_text('\n'.join(lines) + '\n')
    ds = WiderFaceDataset(d)
    shards, skipped = {}, []
    for rank in (0, 1):
        ld = build_loader(ds, 2, workers=2, seed=3, rank=rank, world_size=2)
        want = ld.sampler.indices()
        got = [m['index'] for b in ld for m in b['metas']]
        skipped += [f for b in ld for f, _ in b['skipped']]
        # what each rank loads is its own shard, the missing image (6) replaced by the next one (0)
        assert got == [0 if i == 6 else i for i in want], (rank, got, want)
        shards[rank] = want
    # the two shards split the 7 images: disjoint but for the one index repeated to pad 7 to 2 x 4
    assert len(shards[0]) == len(shards[1]) == 4 and set(shards[0]) | set(shards[1]) == set(range(7))
    assert len(set(shards[0]) & set(shards[1])) <= 1 and len(set(shards[0])) + len(set(shards[1])) >= 7
    assert 'gone.jpg' in skipped
    ds2 = WiderFaceDataset(d)
    out = ds2[6]
    assert out['meta']['skipped'][0][0] == 'gone.jpg' and ds2.skipped['gone.jpg'] == 1


def test_worker_collate_shared_memory_layouts(tmp_path):
    "Batches built in workers (shared-memory buffer) equal those built in-process, for both memory layouts."
    import cv2, torch
    d = tmp_path/'s'; (d/'images').mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):  # square images + scale 1.0 + no flip/photometric: a deterministic pipeline
        cv2.imwrite(str(d/'images'/f'{i}.png'), rng.integers(0, 255, (100, 100, 3), dtype=np.uint8))
        lines += [f'# {i}.png 100 100', '20 20 60 70 0', '50 30 90 90 0']
    (d/'labelv2.txt').write_text('\n'.join(lines) + '\n')
    ds = WiderFaceDataset(d, pipeline=TrainPipeline(crop_choice=(1.0,), flip_ratio=0, photometric=False))
    ref = [b for b in build_loader(ds, 2, workers=0, shuffle=False)]
    for cl in (False, True):
        got = [b for b in build_loader(ds, 2, workers=2, shuffle=False, channels_last=cl)]
        assert len(got) == len(ref) == 2
        for r, g in zip(ref, got):
            assert g['images'].is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
            assert torch.equal(g['images'], r['images']) and torch.equal(g['gt_boxes'], r['gt_boxes'])
            assert g['gt_mask'].sum() == 4
