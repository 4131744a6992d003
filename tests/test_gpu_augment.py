"""scrfd_nb.gpu_augment through the real dataset/loader path, and on an accelerator when there is one."""
import numpy as np, pytest, torch
from scrfd_nb.transforms import TrainPipeline, sample_photometric, photometric_normalize, PhotoParams
from scrfd_nb.gpu_augment import (CropPipeline, collate_hwc, gpu_normalize_batch, photo_param_tensor, photometric_normalize_torch,
                                  DecodeOnlyPipeline, collate_decoded, device_augment_batch)


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
    got = photometric_normalize_torch(torch.from_numpy(x).to(dev), photo_param_tensor(draws))
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
