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


# --- issue 23: a second object kind (ID cards) and the COCO layout -------------------------------------------------
import contextlib, io, json
import numpy as np
import pytest
import scrfd_nb.synthetic as syn
from scrfd_nb.align import rectify_quad

# md5 of the text files of `--preset tiny --seed 0` as written before cards existed: faces-only output must not move
FACES_ONLY_MD5 = {'README': 'ea074cd12745bd04e5032779180dbf22', 'meta.json': '8a833ac375c63a91be555720c86a3dec',
                  'train/labelv2.txt': '8c0cae61589e9b4100f1f769af7e8876', 'val/labelv2.txt': 'd3111d4210292ef5fda01aab37541f46'}


def test_faces_only_output_unchanged(tmp_path):
    d = digest(syn.make_synthetic_widerface(tmp_path/'a', preset='tiny', seed=0))
    assert {k: d[k] for k in FACES_ONLY_MD5} == FACES_ONLY_MD5
    assert digest(syn.make_synthetic_widerface(tmp_path/'b', preset='tiny', seed=0, cards=(0, 0))) == d


def test_draw_card_lands_on_its_corners():
    "A white card on black: coverage area and centroid of the quadrilateral, its box, card inside each corner, none outside."
    for g in [syn.CardGeom(60.3, 45.7, 70, 0.2, (0.5, -0.3), 2.0), syn.CardGeom(50.5, 40.2, 60, -0.35, (-0.6, 0.4), 1.6)]:
        img = np.zeros((90, 120, 3), np.uint8)
        syn.draw_card(img, g.corners(), np.full((40, 64, 3), 255, np.uint8))
        m = img[..., 0] / 255.0
        ys, xs = np.mgrid[:90, :120] + 0.5
        c = g.corners(); x, y = c[:, 0], c[:, 1]
        cr = x * np.roll(y, -1) - np.roll(x, -1) * y; area = cr.sum() / 2
        cen = [((x + np.roll(x, -1)) * cr).sum() / (6 * area), ((y + np.roll(y, -1)) * cr).sum() / (6 * area)]
        assert abs(m.sum() / area - 1) < 0.01
        np.testing.assert_allclose([(m * xs).sum() / m.sum(), (m * ys).sum() / m.sum()], cen, atol=0.03)
        yy, xx = np.nonzero(m > 0.5)
        np.testing.assert_allclose([xx.min(), yy.min(), xx.max() + 1, yy.max() + 1], g.box(), atol=1.01)
        d = (c.mean(0) - c) / np.linalg.norm(c.mean(0) - c, axis=1, keepdims=True)
        assert all(m[p[1], p[0]] > 0.95 for p in (c + 2.5 * d).astype(int))
        assert all(m[p[1], p[0]] < 0.05 for p in (c - 2.5 * d).astype(int))


def test_generated_cards_are_where_their_labels_say(tmp_path, monkeypatch):
    """Every card of a COCO dataset: its labelled corners are the corners it was drawn at (to the file's 3 decimals),
    the box encloses them, and (clean pictures) the crop rectified from the labels fits the card's texture better than
    with the corners half a pixel off."""
    drawn, orig = [], syn.draw_card
    monkeypatch.setattr(syn, 'draw_card', lambda img, c, tex: (drawn.append((np.array(c), tex.copy())), orig(img, c, tex))[1])
    root = syn.make_synthetic_widerface(tmp_path/'c', preset='tiny', seed=0, fmt='coco', cards=(1, 2), workers=1)
    cards = []
    for split in ('train', 'val'):
        d = json.loads((root/split/'annotations.json').read_text())
        cards += [a for a in d['annotations'] if a['category_id'] == 2]
    assert len(cards) == len(drawn) >= 16
    for a, (c, _) in zip(cards, drawn):
        k = np.reshape(a['keypoints'], (5, 3))
        assert list(k[:, 2]) == [2, 2, 0, 2, 2] and a['num_keypoints'] == 4 and a['iscrowd'] == 0
        np.testing.assert_allclose(k[list(syn.CARD_QUAD), :2], c, atol=5e-4 + 1e-9)
        x, y, w, h = a['bbox']
        assert (k[k[:, 2] > 0, 0] >= x - 0.01).all() and (k[k[:, 2] > 0, 0] <= x + w + 0.01).all()
        assert (k[k[:, 2] > 0, 1] >= y - 0.01).all() and (k[k[:, 2] > 0, 1] <= y + h + 0.01).all()
    drawn.clear()
    cfg = syn.SynthConfig(image_size=(200, 320), cards=(1, 3), noise=0, image_blur_prob=0)
    for i in range(6):
        n0 = len(drawn)
        img, _, objs = syn.render_image(np.random.default_rng([3, i]), cfg)
        cs = [o for o in objs if o.get('kind') == 'card']
        assert len(cs) == len(drawn) - n0
        for o, (c, tex) in zip(cs, drawn[n0:]):
            k = o['kps'][list(syn.CARD_QUAD), :2]
            th, tw = tex.shape[:2]
            err = lambda q: np.abs(rectify_quad(img, q, (tw, th)).astype(int) - tex)[1:-1, 1:-1].mean()
            assert err(k) < min(err(k + s) for s in ([.5, 0], [-.5, 0], [0, .5], [0, -.5]))


def test_coco_layout_loads_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    out = tmp_path/'fc'
    r = cli('--out', out, '--preset', 'tiny', '--format', 'coco', '--cards', '2', '--workers', '1')
    assert r.returncode == 0, r.stderr
    m = read_meta(out)
    assert m['params']['format'] == 'coco' and m['params']['config']['cards'] == [0, 2]
    for split in ('train', 'val'):
        with contextlib.redirect_stdout(io.StringIO()): co = COCO(str(out/split/'annotations.json'))
        cats = co.loadCats(co.getCatIds())
        assert [(c['id'], c['name']) for c in cats] == [(1, 'face'), (2, 'card')]
        assert cats[0]['keypoints'] == ['left_eye', 'right_eye', 'nose', 'left_mouth', 'right_mouth']
        assert cats[1]['keypoints'] == ['top_left', 'top_right', 'center', 'bottom_left', 'bottom_right']
        imgs = co.loadImgs(co.getImgIds())
        assert len(imgs) == m['counts'][split]['images'] and all((out/split/'images'/i['file_name']).is_file() for i in imgs)
        anns = co.loadAnns(co.getAnnIds())
        assert sum(a['category_id'] == 2 for a in anns) == m['counts'][split]['cards']
        assert sum(a['category_id'] == 1 and not a['iscrowd'] for a in anns) == m['counts'][split]['faces']
        assert sum(a['iscrowd'] for a in anns) == m['counts'][split]['ignore']
        for a in anns:
            im = co.imgs[a['image_id']]; x, y, w, h = a['bbox']
            assert 0 <= x and 0 <= y and x + w <= im['width'] + 0.01 and y + h <= im['height'] + 0.01 and w > 0 and h > 0
            k = np.reshape(a['keypoints'], (5, 3))
            assert a['num_keypoints'] == (k[:, 2] > 0).sum() and (a['num_keypoints'] == 0) == bool(a['iscrowd'])
    r = cli('--out', out, '--preset', 'tiny', '--format', 'coco', '--cards', '2', '--workers', '2')   # same dataset: reused
    assert r.returncode == 0 and read_meta(out) == m
    from scrfd_nb.formats import check_dataset, load_split    # the loaders read it: 2 classes, K = 5, the face's flip order
    rep = check_dataset(out)
    assert rep.ok and not rep.warnings, rep.format()
    recs, _, info = load_split(out, 'val', mode='test')
    assert (info.class_names, info.num_kps, tuple(info.flip_idx)) == (('face', 'card'), 5, (1, 0, 2, 4, 3))
    assert sum(int((r['labels'] == 1).sum()) for r in recs) == m['counts']['val']['cards']


@pytest.mark.parametrize('args, words', [(['--cards', '2'], '--format coco'), (['--format', 'coco', '--cards', '-1'], '--cards'),
                                         (['--format', 'coco', '--cards', '3', '1'], 'bad cards'), (['--format', 'yolo'], '--format')])
def test_cards_bad_input(tmp_path, args, words):
    r = cli('--out', tmp_path/'x', '--preset', 'tiny', '--workers', '1', *args)
    assert r.returncode == 2 and words in r.stderr.strip().splitlines()[-1] and 'Traceback' not in r.stderr
    assert not (tmp_path/'x').exists()
