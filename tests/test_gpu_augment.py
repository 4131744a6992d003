"""scrfd_nb.gpu_augment through the real dataset/loader path, and on an accelerator when there is one."""
import numpy as np, pytest, torch
from scrfd_nb.transforms import TrainPipeline, sample_photometric, photometric_normalize, PhotoParams
from scrfd_nb.gpu_augment import CropPipeline, collate_hwc, gpu_normalize_batch, photo_param_tensor, photometric_normalize_torch


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
