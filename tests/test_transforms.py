"""scrfd_nb.transforms against the reference's recorded outputs, through the step-by-step ports of tests/pipeline_refs.py.

Moved out of nbs/12_transforms.ipynb with the ports (training never runs them, so the library does not carry them):
the 14 photometric golden cases through the step-by-step port and through the fused `photometric_normalize`, the six
`pipeline_cases.npz` cases after every step of the literal port and at the end of `TrainPipeline`, and the fused
pipeline against the literal port on a real JPEG with photometric distortion on."""
import numpy as np
import pytest
from scrfd_nb.core import golden
from scrfd_nb.data import parse_labelv2
from scrfd_nb.transforms import ScriptedRNG, TrainPipeline, photometric_normalize, read_image, sample_photometric
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


def test_pipeline_golden_cases(shared):
    """Six reference cases (crop inside, larger than the image with 128 padding, retried offsets, portrait, flip or not):
    the literal port after every step, TrainPipeline at the end (boxes and keypoints exactly, image sums to rtol 1e-6)."""
    gc = golden('pipeline_cases.npz')
    anns = {r['filename']: r for r in parse_labelv2(shared/'golden'/'pipeline_labelv2_train.txt')}
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
    for i in range(6):
        fname = str(gc[f'case{i}_image_filename'])
        calls = golden_rng_calls(gc[f'case{i}_random_calls'])
        rng = ScriptedRNG(calls)
        def trace(step, im, b, k, bi):
            if step == 'PhotoMetricDistortion': return
            check_step(f'case{i}_after_{step}_' if step != 'final' else f'case{i}_final_', im, b, k, bi, chw=step == 'final')
        naive_train_pipeline(gimg(fname), anns[fname], rng, bbox_clip_border=False, photometric=False, trace=trace)
        assert rng.done
        rng = ScriptedRNG(calls)
        o = TrainPipeline(bbox_clip_border=False, photometric=False)(gimg(fname), anns[fname], rng)
        assert rng.done
        check_step(f'case{i}_final_', o['img'].numpy(), o['gt_bboxes'], o['gt_keypoints'], o['gt_bboxes_ignore'], chw=True)
        assert o['meta']['flip'] == bool(gc[f'case{i}_after_RandomFlip_flip'])


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
