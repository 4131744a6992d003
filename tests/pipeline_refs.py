"""Reference ports of the train augmentation, for tests and benchmarks only (training never runs them).

The library has one train augmentation, `scrfd_nb.transforms.TrainPipeline` (the workers do everything, OpenCV,
the reference's float values) and its decode-only split (`scrfd_nb.gpu_augment`: `DecodeOnlyPipeline` in the
workers, `device_augment_batch` on the device). What is here checks them or measures them:

* `golden_rng_calls`, `golden_photometric_input`: read the golden files' recorded random calls and inputs;
* `photometric_distortion`, `naive_train_pipeline`: the reference's step-by-step PhotoMetricDistortion and train
  pipeline (float canvas, resize, flip, cvtColor photometric, normalise), the oracle of the fused code and the
  baseline of `bench/data_pipeline.py`;
* `CropPipeline`, `collate_hwc`, `gpu_normalize_batch` (with `crop_resize_u8`): the earlier split, where the workers
  also cropped, resized and flipped (in float32, or in uint8 to ship 4x fewer bytes) and the device only did the
  photometric step; kept as a benchmark row (`bench/data_pipeline.py`, `bench/gpu.py`) and checked here.

Tests import it as `pipeline_refs` (pytest puts tests/ on the path); bench scripts add tests/ to `sys.path`."""
from __future__ import annotations
import ast
from dataclasses import dataclass
import numpy as np
import cv2
import torch
from scrfd_nb.core import shared_file, MEAN, STD
from scrfd_nb.transforms import (TrainPipeline, PhotoParams, sample_photometric, sample_square_crop, crop_annotations,
                                 resize_annotations, flip_annotations, crop_resize_image, CROP_CHOICE, PAD_VALUE)
from scrfd_nb.gpu_augment import photo_param_tensor, device_photometric_normalize
from scrfd_nb.data import collate, batch_to


# ---------------------------------------------------------------- golden files
def golden_rng_calls(records) -> list:
    "Recorded reference random calls (`fn|args|value` / `fn|lo|hi|value`) → `ScriptedRNG` triples for our call names."
    out = []
    for r in records:
        parts = str(r).split('|')
        fn = parts[0]
        if fn == 'randint' and len(parts) == 3:  # photometric coin: randint|(2,)|1
            out.append(('integers', ast.literal_eval(parts[1]), int(parts[2])))
        elif fn == 'randint':  # crop offset: randint|lo|hi|v
            out.append(('integers', (int(parts[1]), int(parts[2])), int(parts[3])))
        elif fn == 'uniform': out.append(('uniform', ast.literal_eval(parts[1]), float(parts[2])))
        elif fn == 'permutation': out.append(('permutation', ast.literal_eval(parts[1]), ast.literal_eval(parts[2])))
        elif fn == 'choice' and 'horizontal' in parts[1]:  # RandomFlip → our rng.random() < 0.5
            out.append(('random', (), 0.0 if 'horizontal' in parts[3] else 0.999))
        elif fn == 'choice': out.append(('choice', (tuple(ast.literal_eval(parts[1])),), float(parts[3])))
        else: raise ValueError(f"unknown recorded call {r!r}")
    return out


def golden_photometric_input(j:int) -> np.ndarray:
    "Input image j of `photometric_cases.npz`: BGR float32 centre square resized to 640 (golden README (g))."
    name = ['0_Parade_marchingband_1_20.jpg', 'astronaut.png'][j]
    im = cv2.imread(str(shared_file('data', 'images', name))).astype(np.float32)
    h, w = im.shape[:2]; s = min(h, w); t, l = (h - s) // 2, (w - s) // 2
    return cv2.resize(im[t:t+s, l:l+s], (640, 640), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------- step-by-step ports of the reference
def photometric_distortion(img:np.ndarray, # (H, W, 3) float32 BGR, pixel units
                           p:PhotoParams) -> np.ndarray:
    "The reference's step-by-step PhotoMetricDistortion (mmdet 2.7), no clipping."
    img = np.array(img, np.float32)
    if p.delta is not None: img += np.float32(p.delta)
    if p.mode == 1 and p.contrast is not None: img *= np.float32(p.contrast)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    if p.saturation is not None: img[..., 1] *= np.float32(p.saturation)
    if p.hue is not None:
        img[..., 0] += np.float32(p.hue)
        img[..., 0][img[..., 0] > 360] -= 360
        img[..., 0][img[..., 0] < 0] += 360
    img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if p.mode == 0 and p.contrast is not None: img *= np.float32(p.contrast)
    if p.perm is not None: img = img[..., list(p.perm)]
    return img


def naive_train_pipeline(img:np.ndarray, ann:dict, rng, size:int=640, bbox_clip_border:bool=True,
                         photometric:bool=True, crop_choice=CROP_CHOICE, trace=None) -> dict:
    "Literal step-by-step port of the reference pipeline (float canvas, resize, flip, cvtColor photometric, normalise); `trace(step, img, b, k, bi)` sees every step."
    trace = trace or (lambda *a: None)
    imf = img.astype(np.float32)
    b, k, bi = (np.asarray(ann[n], np.float32) for n in ('bboxes', 'keypoints', 'bboxes_ignore'))
    trace('LoadAnnotations', imf, b, k, bi)
    h, w = imf.shape[:2]
    patch, fb = sample_square_crop(w, h, b, rng, crop_choice)
    b, k, bi = crop_annotations(b, k, bi, patch, bbox_clip_border)
    cw = patch[2] - patch[0]
    canvas = np.ones((cw, cw, 3), np.float32) * PAD_VALUE
    f = (max(0, patch[0]), max(0, patch[1]), min(w, patch[2]), min(h, patch[3]))
    t = (max(0, -patch[0]), max(0, -patch[1]))
    canvas[t[1]:t[1] + f[3] - f[1], t[0]:t[0] + f[2] - f[0]] = imf[f[1]:f[3], f[0]:f[2]]
    trace('RandomSquareCrop', canvas, b, k, bi)
    imf = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_LINEAR)
    b, k, bi, sf = resize_annotations(b, k, bi, (cw, cw), (size, size), bbox_clip_border)
    trace('Resize', imf, b, k, bi)
    flip = rng.random() < 0.5
    if flip:
        imf = np.flip(imf, axis=1)
        b, k, bi = flip_annotations(b, k, bi, size)
    trace('RandomFlip', imf, b, k, bi)
    if photometric:
        imf = photometric_distortion(imf, sample_photometric(rng))
        trace('PhotoMetricDistortion', imf, b, k, bi)
    x = imf.copy().astype(np.float32)
    cv2.cvtColor(x, cv2.COLOR_BGR2RGB, x)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    x = np.ascontiguousarray(x.transpose(2, 0, 1))
    trace('final', x, b, k, bi)
    return dict(img=x, gt_bboxes=b, gt_keypoints=k, gt_bboxes_ignore=bi,
                meta=dict(crop=patch, scale=float(sf[0]), flip=bool(flip), crop_fallback=fb))


# ---------------------------------------------------------------- the earlier split: workers crop, the device distorts
def crop_resize_u8(img:np.ndarray, # (H, W, 3) uint8 BGR
                   patch, out_wh=(640, 640), flip:bool=False, pad_value=PAD_VALUE) -> np.ndarray: # (oh, ow, 3) uint8
    "`crop_resize_image` in uint8 (OpenCV fixed-point bilinear): crop canvas (fill 128) → resize → optional mirror."
    return crop_resize_image(img, patch, out_wh, flip, pad_value, dtype=np.uint8)


@dataclass
class CropPipeline(TrainPipeline):
    "`TrainPipeline` minus photometric distortion and normalisation: `img` is (S, S, 3) BGR pixel units, `photo` the draw."
    out_dtype: str = 'float32'   # 'float32' (reference values) or 'uint8' (4x fewer bytes, resize rounded)

    def __post_init__(self):
        if self.out_dtype not in ('float32', 'uint8'): raise ValueError(f"out_dtype {self.out_dtype!r}: 'float32' or 'uint8'")

    def __call__(self, img:np.ndarray, ann:dict, rng) -> dict:
        "→ dict img (S,S,3) uint8/float32 BGR tensor, photo (9,) float32, gt_bboxes, gt_keypoints, gt_bboxes_ignore, meta."
        im, b, k, bi, meta = self.geometry(img, ann, rng, crop=crop_resize_u8 if self.out_dtype == 'uint8' else None)
        p = self.sample_photo(rng)      # same random calls, same order as TrainPipeline: identical crops and draws
        return dict(img=torch.from_numpy(im), photo=photo_param_tensor([p])[0], gt_bboxes=b, gt_keypoints=k,
                    gt_bboxes_ignore=bi, meta=meta | dict(photometric=None if p is None else p.to_dict()))


_NO_IMG = torch.zeros(1, 1, 1)

def collate_hwc(batch:list, # samples from a dataset whose pipeline is `CropPipeline`
                pad_to:int|None=None) -> dict:
    "Like `scrfd_nb.data.collate`, but `images` is (B, S, S, 3) uint8/float32 BGR pixel units and `photo` (B, 9) is added."
    batch = [b for b in batch if b is not None]
    out = collate([dict(b, img=_NO_IMG) for b in batch], pad_to=pad_to)
    out['images'] = torch.stack([torch.as_tensor(b['img']) for b in batch])
    out['photo'] = torch.stack([b['photo'] for b in batch])
    return out


def gpu_normalize_batch(batch:dict, # from `collate_hwc`
                        device=None, # move images, params and targets here first (non-blocking)
                        dtype:torch.dtype=torch.float32, channels_last:bool=True,
                        mean:float=MEAN, std:float=STD, fn=None, # fn: e.g. torch.compile(device_photometric_normalize)
                       ) -> dict:
    "Copy a `collate_hwc` batch to `device` and replace `images` by the distorted, normalised (B, 3, S, S) tensor."
    out = dict(batch) if device is None else batch_to(batch, device)
    fn = fn or device_photometric_normalize
    out['images'] = fn(out['images'], out['photo'], mean, std, dtype, channels_last)
    return out
