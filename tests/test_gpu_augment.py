"""scrfd_nb.gpu_augment against the reference's recorded outputs and the step-by-step ports (tests/pipeline_refs.py),
through the real dataset/loader path, and on an accelerator when there is one. The golden and port checks moved here
from nbs/13_gpu_augment.ipynb with the ports; the earlier uint8/float32 split (CropPipeline + collate_hwc +
gpu_normalize_batch, no longer a training path) is checked here because bench/ still measures it."""
import numpy as np, pytest, torch
from scrfd_nb.core import golden, shared_file, MEAN, STD
from scrfd_nb.transforms import TrainPipeline, ScriptedRNG, sample_photometric, photometric_normalize, PhotoParams, read_image
from scrfd_nb.gpu_augment import (photo_param_tensor, device_photometric, device_photometric_normalize,
                                  DecodeOnlyPipeline, collate_decoded, device_augment_batch)
from conftest import require_shared
from pipeline_refs import (golden_rng_calls, golden_photometric_input, photometric_distortion,
                           CropPipeline, collate_hwc, gpu_normalize_batch)


def test_golden_photometric_cases_through_device_kernels(shared):
    "The 7 recorded draws per photo, replayed through sample_photometric, as one batch per photo through device_photometric."
    gp = golden('photometric_cases.npz')
    assert float(gp['img0_case6_out_min']) < 0 and float(gp['img0_case5_out_max']) > 255   # no clipping either way
    for j in range(2):
        im = golden_photometric_input(j)
        np.testing.assert_allclose(im[::4, ::4], gp[f'input{j}_bgr_float32_sub4'], atol=1e-4, rtol=0)   # (sha1 depends on OpenCV)
        cases = sorted({k.split('_')[1] for k in gp if k.startswith(f'img{j}_case')})
        draws = []
        for c in cases:
            rng = ScriptedRNG(golden_rng_calls(gp[f'img{j}_{c}_random_calls']))
            draws.append(sample_photometric(rng)); assert rng.done
        x = torch.from_numpy(im)[None].expand(len(cases), -1, -1, -1)
        out = device_photometric(x, photo_param_tensor(draws)).permute(0, 2, 3, 1).numpy()   # back to HWC BGR
        for i, c in enumerate(cases):
            k, o = f'img{j}_{c}_', out[i]
            np.testing.assert_allclose(o[::4, ::4], gp[k + 'out_sub4'], atol=1e-3, rtol=0, err_msg=k)
            np.testing.assert_allclose(o.sum(dtype=np.float64), gp[k + 'out_sum'], atol=1e-6 * abs(float(gp[k + 'out_sum'])), rtol=0, err_msg=k)
            np.testing.assert_allclose((o.astype(np.float64) ** 2).sum(), gp[k + 'out_sumsq'], atol=1e-6 * float(gp[k + 'out_sumsq']), rtol=0, err_msg=k)
            np.testing.assert_allclose(o.min(), gp[k + 'out_min'], atol=1e-3, rtol=0, err_msg=k)
            np.testing.assert_allclose(o.max(), gp[k + 'out_max'], atol=1e-3, rtol=0, err_msg=k)


def test_device_photometric_equals_cpu_path_and_port(shared):
    """A batch of crops of the golden photos, own draw each (dark crops made negative, hue wrap, one draw off): equal to
    transforms.photometric_normalize and to the step-by-step port + the literal mmcv normalisation, within 2e-5."""
    rng = np.random.default_rng(1)
    ims = [golden_photometric_input(j) for j in range(2)]
    B = 12
    crops = np.stack([ims[i % 2][(i * 37) % 320:(i * 37) % 320 + 96, (i * 53) % 320:(i * 53) % 320 + 96] * (0.3 if i % 3 == 0 else 1)
                      for i in range(B)]).astype(np.float32)
    draws = [sample_photometric(rng) for _ in range(B)]
    draws[0] = PhotoParams(delta=-32.0, mode=0, hue=-17.9, saturation=0.6)      # dark crop made negative, hue wrap
    draws[1] = PhotoParams(delta=31.0, mode=1, contrast=1.4, hue=17.9, perm=(2, 0, 1))
    draws[2] = None                                                              # distortion off for this sample
    ref = np.stack([photometric_normalize(c.copy(), d) for c, d in zip(crops, draws)])          # (B, H, W, 3) RGB
    ours = device_photometric_normalize(torch.from_numpy(crops), photo_param_tensor(draws))
    assert ours.shape == (B, 3, 96, 96) and ours.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(ours.permute(0, 2, 3, 1).numpy() - ref).max() < 2e-5
    lit = np.stack([(photometric_distortion(c, d if d is not None else PhotoParams())[..., ::-1] - np.float32(MEAN)) / np.float32(STD)
                    if d is not None else (c[..., ::-1] - np.float32(MEAN)) / np.float32(STD) for c, d in zip(crops, draws)])
    assert np.abs(ours.permute(0, 2, 3, 1).numpy() - lit).max() < 2e-5


def test_hue_wrap_and_negative_pixels_equal_port():
    """Hues just below 360 and above 0 shifted by +-17.9 wrap as the reference's masked assignments; negative pixels go
    through OpenCV's HSV formulas unchanged (not the identity): the device kernel equals the step-by-step port."""
    px = np.array([[[10, 0, 250], [0, 10, 250], [200, 200, 200], [5, 3, 1]]], np.float32)   # BGR
    for d in (PhotoParams(hue=17.9), PhotoParams(hue=-17.9), PhotoParams(delta=-32.0), PhotoParams(delta=-32.0, hue=5.0, saturation=1.3)):
        want = photometric_distortion(px, d)
        got = device_photometric(torch.from_numpy(px)[None], photo_param_tensor([d]))[0].permute(1, 2, 0).numpy()
        assert np.abs(got - want).max() < 1e-3, (d, got, want)
    neg = photometric_distortion(px, PhotoParams(delta=-32.0))
    assert not np.allclose(neg[0, 3], px[0, 3] - 32)


@pytest.fixture(scope='module')
def crop_split_case():
    "A real photo with two faces, 12 seeds (crops, flips and all photometric branches occur), through TrainPipeline."
    require_shared()
    img_u8 = read_image(shared_file('data', 'images', '0_Parade_marchingband_1_20.jpg'))
    ann = dict(bboxes=np.array([[300, 200, 400, 330], [600, 250, 680, 350]], np.float32),
               keypoints=np.zeros((2, 5, 3), np.float32), bboxes_ignore=np.zeros((0, 4), np.float32))
    size, seeds = 160, range(12)
    ref = [TrainPipeline(size=size)(img_u8, ann, np.random.default_rng(s)) for s in seeds]
    return img_u8, ann, size, seeds, ref, torch.stack([r['img'] for r in ref])


def test_crop_split_equals_train_pipeline(crop_split_case):
    "The earlier split (workers: CropPipeline, float32; device: gpu_normalize_batch) == TrainPipeline sample for sample."
    img_u8, ann, size, seeds, ref, refimg = crop_split_case
    got = collate_hwc([CropPipeline(size=size)(img_u8, ann, np.random.default_rng(s)) for s in seeds])
    assert got['images'].shape == (len(seeds), size, size, 3)
    y = gpu_normalize_batch(got)['images']
    assert (y - refimg).abs().max() < 2e-5
    np.testing.assert_array_equal(got['gt_boxes'][0, :len(ref[0]['gt_bboxes'])].numpy(), ref[0]['gt_bboxes'])
    assert [m['crop'] for m in got['metas']] == [r['meta']['crop'] for r in ref]


def test_crop_split_uint8_within_resize_rounding(crop_split_case):
    "Its uint8 transfer variant: same decisions, images within the rounding of the uint8 resize."
    img_u8, ann, size, seeds, ref, refimg = crop_split_case
    u8 = collate_hwc([CropPipeline(size=size, out_dtype='uint8')(img_u8, ann, np.random.default_rng(s)) for s in seeds])
    assert u8['images'].dtype == torch.uint8
    du = (gpu_normalize_batch(u8)['images'] - refimg).abs()
    q = float(du.flatten().kthvalue(int(du.numel() * 0.999)).values)
    assert float(du.mean()) < 0.25 / 128 and q < 3 / 128, (float(du.mean()), q)


def test_split_dataset_equals_cpu_pipeline(tmp_path):
    "WiderFaceDataset with CropPipeline + collate_hwc + gpu_normalize_batch == the same dataset with TrainPipeline + collate."
    from scrfd_nb.synthetic import make_synthetic_widerface
    from scrfd_nb.data import WiderFaceDataset, collate
    root = make_synthetic_widerface(tmp_path/'syn', preset='tiny', num_train=6, num_val=0)
    full = WiderFaceDataset(root/'train', pipeline=TrainPipeline(size=128))
    split = WiderFaceDataset(root/'train', pipeline=CropPipeline(size=128))
    np.random.seed(3); a = collate([full[i] for i in range(len(full))], pad_to=24)
    np.random.seed(3); b = gpu_normalize_batch(collate_hwc([split[i] for i in range(len(split))], pad_to=24))
    assert b['images'].shape == a['images'].shape
    torch.testing.assert_close(b['images'], a['images'], atol=2e-5, rtol=0)
    for k in ('gt_boxes', 'gt_kps', 'gt_mask'): torch.testing.assert_close(b[k], a[k], atol=0, rtol=0)
    assert [m['crop'] for m in b['metas']] == [m['crop'] for m in a['metas']]


def test_decode_only_loader_equals_cpu_pipeline(tmp_path):
    "build_loader with 2 workers: DecodeOnlyPipeline + collate_decoded (shared memory) + device_augment_batch == TrainPipeline."
    from scrfd_nb.synthetic import make_synthetic_widerface
    from scrfd_nb.data import WiderFaceDataset, build_loader
    root = make_synthetic_widerface(tmp_path/'syn', preset='tiny', num_train=12, num_val=0)
    ds_full = WiderFaceDataset(root/'train', pipeline=TrainPipeline(size=96))
    ds_dec = WiderFaceDataset(root/'train', pipeline=DecodeOnlyPipeline(size=96))
    kw = dict(workers=2, seed=5, pad_to=24, pin_memory=False)
    full = list(build_loader(ds_full, 4, **kw))
    dec = list(build_loader(ds_dec, 4, collate_fn=lambda b: collate_decoded(b, pad_to=24), **kw))
    assert len(full) == len(dec) == 3
    sizes = torch.cat([d['sizes'] for d in dec])
    assert len(set(map(tuple, sizes.tolist()))) > 1          # images of different sizes, packed without padding
    assert sum(d['images'].numel() for d in dec) == int(sizes.prod(1).sum()) * 3
    crops = torch.cat([d['crops'] for d in dec])
    assert ((crops[:, 2] - crops[:, 0]) > sizes.amin(1)).any()   # and crops that pass the image border
    for a, d in zip(full, dec):
        assert d['images'].dtype == torch.uint8
        b = device_augment_batch(d)
        torch.testing.assert_close(b['images'], a['images'], atol=2e-4, rtol=0)
        for k in ('gt_boxes', 'gt_kps', 'gt_mask'): torch.testing.assert_close(b[k], a[k], atol=0, rtol=0)
        assert [m['crop'] for m in b['metas']] == [m['crop'] for m in a['metas']]


def _accelerator():
    acc = getattr(torch, 'accelerator', None)
    return torch.device(acc.current_accelerator().type) if acc is not None and acc.is_available() else None


@pytest.mark.skipif(_accelerator() is None, reason='no accelerator')
def test_on_accelerator_equals_cpu():
    "Same kernels on the accelerator as on the CPU (FMA contraction may move the last bits), incl. negative pixels and hue wrap."
    dev, rng = _accelerator(), np.random.default_rng(0)
    x = (rng.random((16, 48, 48, 3)) * 255).astype(np.float32); x[::2] *= 0.15
    draws = [sample_photometric(rng) for _ in range(14)] + [PhotoParams(delta=-32.0, hue=-17.9, saturation=1.5),
                                                            PhotoParams(delta=30.0, hue=17.9, mode=1, contrast=1.5)]
    ref = np.stack([photometric_normalize(xi.copy(), d) for xi, d in zip(x, draws)])
    got = device_photometric_normalize(torch.from_numpy(x).to(dev), photo_param_tensor(draws))
    assert got.device.type == dev.type and got.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).cpu().numpy(), ref, atol=1e-4, rtol=0)


@pytest.mark.skipif(_accelerator() is None, reason='no accelerator')
def test_device_augment_on_accelerator_equals_cpu():
    "device_augment_batch on the accelerator == on the CPU (crop canvas, interpolate, flip, photometric, normalise)."
    dev, rng = _accelerator(), np.random.default_rng(1)
    imgs = [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in [(120, 90), (64, 150), (100, 100)]]
    ann = dict(bboxes=np.array([[20, 20, 50, 55]], np.float32), keypoints=np.zeros((1, 5, 3), np.float32),
               bboxes_ignore=np.zeros((0, 4), np.float32))
    batch = collate_decoded([DecodeOnlyPipeline(size=64)(im, ann, np.random.default_rng(s)) for s, im in enumerate(imgs)])
    ref = device_augment_batch(batch)['images']
    got = device_augment_batch(batch, dev)['images']
    assert got.device.type == dev.type
    torch.testing.assert_close(got.cpu(), ref, atol=1e-4, rtol=0)
