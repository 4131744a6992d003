"""scrfd_nb.transforms against the reference's recorded outputs, through the step-by-step ports of tests/pipeline_refs.py.

Moved out of nbs/12_transforms.ipynb with the ports (training never runs them, so the library does not carry them):
the 14 photometric golden cases through the step-by-step port and through the fused `photometric_normalize`; the six
`pipeline_cases.npz` cases (bbox_clip_border=False) and the eight `pipeline_clip_cases.npz` cases (True, README (e2);
`$SCRFD_PIPELINE_CLIP` names another copy) after every step of the literal port, at the end of `TrainPipeline` and
of the device-side split; and the fused pipeline against the literal port on a real JPEG with photometric distortion on."""
import json, os
from pathlib import Path
import numpy as np
import pytest
from scrfd_nb.core import golden
from scrfd_nb.data import parse_labelv2
from scrfd_nb.transforms import ScriptedRNG, TrainPipeline, photometric_normalize, read_image, sample_photometric
from scrfd_nb.gpu_augment import DecodeOnlyPipeline, collate_decoded, device_augment_batch
from conftest import require_shared
from pipeline_refs import golden_photometric_input, golden_rng_calls, naive_train_pipeline, photometric_distortion


@pytest.fixture(scope='module')
def photometric_cases():
    require_shared()
    gp = golden('photometric_cases.npz')
    inputs = [golden_photometric_input(j) for j in range(2)]
    for j in range(2): np.testing.assert_allclose(inputs[j][::4, ::4], gp[f'input{j}_bgr_float32_sub4'], atol=1e-4, rtol=0)
    return gp, inputs


def check_photometric(fn, gp, inputs):
    "fn(image, PhotoParams) → BGR pixel units; every recorded draw on both photos equals the reference's output."
    for j in range(2):
        for i in range(7):
            k = f'img{j}_case{i}_'
            rng = ScriptedRNG(golden_rng_calls(gp[k+'random_calls']))
            p = sample_photometric(rng); assert rng.done
            out = fn(inputs[j].copy(), p)
            np.testing.assert_allclose(out[::4, ::4], gp[k+'out_sub4'], atol=1e-3, rtol=0, err_msg=k)
            np.testing.assert_allclose(out.sum(dtype=np.float64), gp[k+'out_sum'], rtol=1e-6, err_msg=k)
            np.testing.assert_allclose((out.astype(np.float64)**2).sum(), gp[k+'out_sumsq'], rtol=1e-6, err_msg=k)


def test_photometric_port_equals_golden(photometric_cases):
    "The step-by-step PhotoMetricDistortion port (the oracle of the other tests) reproduces the reference's outputs."
    check_photometric(photometric_distortion, *photometric_cases)


def test_fused_photometric_normalize_equals_golden(photometric_cases):
    "The fused distortion + BGR→RGB + normalisation (what TrainPipeline runs) matches every recorded case."
    gp, inputs = photometric_cases
    check_photometric(lambda im, p: photometric_normalize(im, p)[..., ::-1] * 128 + 127.5, gp, inputs)
    norm = ((inputs[0][..., ::-1] - 127.5) / 128).transpose(2, 0, 1)
    np.testing.assert_allclose(photometric_normalize(inputs[0].copy(), None).transpose(2, 0, 1), norm, atol=1e-6, rtol=0)


def pipeline_clip_golden():
    "The bbox_clip_border=True pipeline golden (README (e2)): `$SCRFD_PIPELINE_CLIP` when set, else ../shared/golden's."
    p = os.environ.get('SCRFD_PIPELINE_CLIP')
    p = Path(p) if p else require_shared() / 'golden' / 'pipeline_clip_cases.npz'
    if not p.exists(): pytest.fail(f"{p}: clipped pipeline golden not found")
    with np.load(p) as z: gc = {k: z[k] for k in z.files}
    ann_file = p.parent / str(gc['ann_file'])      # pipeline_clip_labelv2_train.txt, beside the npz
    js = p.with_suffix('.json')
    return gc, ann_file, (json.loads(js.read_text()) if js.exists() else None)


def check_golden_pipeline(gc, ann_file, clip):
    """Every case of a pipeline golden (`pipeline_cases.npz`, clip False; `pipeline_clip_cases.npz`, clip True), with
    the reference's random calls: the literal port after every step (so crop_annotations / resize_annotations /
    flip_annotations are held to the reference's values at each stage), `TrainPipeline` at the end, and the
    device-side split (`DecodeOnlyPipeline` in the workers, `collate_decoded` + `device_augment_batch`) as one batch.
    Boxes, keypoints (with their flags) and ignore boxes exactly; image sums to rtol 1e-6 (float32 summation order)."""
    anns = {r['filename']: r for r in parse_labelv2(ann_file)}
    n = int(gc['num_cases']) if 'num_cases' in gc else len({k.split('_')[0] for k in gc if k.startswith('case')})
    def gimg(name): return gc['input_image_bgr_uint8__' + name.split('/')[-1].rsplit('.', 1)[0]]
    def check_step(pre, im, b, k, bi, chw=False):
        for key, x in [('gt_bboxes', b), ('gt_keypointss', k), ('gt_bboxes_ignore', bi)]:
            g_ = gc[pre + key]
            assert x.shape == g_.shape and np.array_equal(x, g_), (pre + key, x, g_)
        if im is not None:
            assert tuple(gc[pre + 'img_shape']) == (im.shape[1:] + im.shape[:1] if chw else im.shape), pre
            np.testing.assert_allclose(im.sum(dtype=np.float64), gc[pre + 'img_sum'], rtol=1e-6, atol=1e-6 * abs(gc[pre + 'img_sumsq']) ** .5, err_msg=pre)
            np.testing.assert_allclose((im.astype(np.float64) ** 2).sum(), gc[pre + 'img_sumsq'], rtol=1e-6, err_msg=pre)
            np.testing.assert_allclose(im[:, ::16, ::16] if chw else im[::16, ::16], gc[pre + 'img_subsample_every16'], atol=1e-4, err_msg=pre)
    decoded = []
    for i in range(n):
        fname = str(gc[f'case{i}_image_filename'])
        if f'case{i}_bbox_clip_border' in gc: assert bool(gc[f'case{i}_bbox_clip_border']) == clip
        calls = golden_rng_calls(gc[f'case{i}_random_calls'])
        rng = ScriptedRNG(calls)
        def trace(step, im, b, k, bi):
            if step == 'PhotoMetricDistortion': return
            check_step(f'case{i}_after_{step}_' if step != 'final' else f'case{i}_final_', im, b, k, bi, chw=step == 'final')
        naive_train_pipeline(gimg(fname), anns[fname], rng, bbox_clip_border=clip, photometric=False, trace=trace)
        assert rng.done
        rng = ScriptedRNG(calls)
        o = TrainPipeline(bbox_clip_border=clip, photometric=False)(gimg(fname), anns[fname], rng)
        assert rng.done
        check_step(f'case{i}_final_', o['img'].numpy(), o['gt_bboxes'], o['gt_keypoints'], o['gt_bboxes_ignore'], chw=True)
        assert o['meta']['flip'] == bool(gc[f'case{i}_after_RandomFlip_flip'])
        rng = ScriptedRNG(calls)
        decoded.append(DecodeOnlyPipeline(bbox_clip_border=clip, photometric=False)(gimg(fname), anns[fname], rng))
        assert rng.done
    batch = collate_decoded(decoded)
    out = device_augment_batch(batch, channels_last=False)
    for i in range(n):
        m = batch['gt_mask'][i]
        check_step(f'case{i}_final_', out['images'][i].numpy(), batch['gt_boxes'][i][m].numpy(),
                   batch['gt_kps'][i][m].numpy(), batch['gt_boxes_ignore'][i].numpy(), chw=True)
    return n


def test_pipeline_golden_cases(shared):
    """Six reference cases with bbox_clip_border=False (crop inside, larger than the image with 128 padding, retried
    offsets, portrait, flip or not): every step, TrainPipeline and the device-side split (`check_golden_pipeline`)."""
    assert check_golden_pipeline(golden('pipeline_cases.npz'), shared/'golden'/'pipeline_labelv2_train.txt', clip=False) == 6


def test_pipeline_clip_golden_cases():
    """The clipped path that scrfd_500m, scrfd_500m_bnkps (the default), scrfd_1g and scrfd_34g train with, against
    the reference's RandomSquareCrop/Resize/RandomFlip with bbox_clip_border=True (README (e2)): the six cases above
    plus crops that cut faces with visible and invisible keypoints, landmarks outside the image inside a crop larger
    than it, and an ignore box past the border. Same checks as the unclipped cases, all exact."""
    gc, ann_file, _ = pipeline_clip_golden()
    assert check_golden_pipeline(gc, ann_file, clip=True) == int(gc['num_cases']) == 8


def test_pipeline_clip_golden_is_discriminative():
    """The clip golden sees clipping: the same cases run with bbox_clip_border=False differ from it in exactly the
    number of values the reference's own unclipped run changed (the .json's `values_changed_by_clipping`), so a
    pipeline that ignored the flag (or clipped to the image instead of the crop) fails the test above."""
    gc, ann_file, js = pipeline_clip_golden()
    if js is None: pytest.fail(f"{ann_file.parent}: pipeline_clip_cases.json (values changed by clipping) not found")
    anns = {r['filename']: r for r in parse_labelv2(ann_file)}
    changed = 0
    for case in js['cases']:
        i, fname = case['case'], case['image']
        img = gc['input_image_bgr_uint8__' + fname.split('/')[-1].rsplit('.', 1)[0]]
        o = TrainPipeline(bbox_clip_border=False, photometric=False)(img, anns[fname], ScriptedRNG(golden_rng_calls(gc[f'case{i}_random_calls'])))
        for key, ours in [('gt_bboxes', o['gt_bboxes']), ('gt_bboxes_ignore', o['gt_bboxes_ignore']), ('gt_keypointss', o['gt_keypoints'])]:
            n = int((ours != gc[f'case{i}_final_{key}']).sum())
            assert n == case['values_changed_by_clipping']['final'][key], (i, key, n)
            changed += n
    assert changed > 0


def test_fused_matches_naive_with_photometric(shared):
    "Fused train pipeline == literal port (same rng stream) on a real JPEG, photometric on, both clip settings."
    img = read_image(shared/'data'/'images'/'0_Parade_marchingband_1_20.jpg')
    ann = dict(bboxes=np.array([[100, 100, 200, 220], [500, 300, 540, 350], [700, 100, 760, 170]], np.float32),
               keypoints=np.tile(np.array([[150, 150, 1]], np.float32), (3, 5, 1)), bboxes_ignore=np.zeros((0, 4), np.float32))
    for clip in (False, True):
        for seed in range(8):
            a = TrainPipeline(bbox_clip_border=clip)(img, ann, np.random.default_rng(seed))
            b = naive_train_pipeline(img, ann, np.random.default_rng(seed), bbox_clip_border=clip)
            for k in ('gt_bboxes', 'gt_keypoints', 'gt_bboxes_ignore'): np.testing.assert_array_equal(a[k], b[k])
            np.testing.assert_allclose(a['img'].numpy(), b['img'], atol=2e-5, err_msg=f'seed {seed}')
