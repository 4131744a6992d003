"""backends.OnnxDetector (the fast CPU path, issue 15 point 1): the same faces as detect(model, image) on real photos, keypoint
and group-norm official weights, two input sizes; a snapshot that does not follow later weight changes."""
import cv2
import numpy as np
import pytest
import torch
from scrfd_nb.detect import detect
from scrfd_nb.model import load_model
from scrfd_nb.backends import OnnxDetector


@pytest.mark.parametrize('model_file', ['det_2.5g.onnx', 'scrfd_500m.onnx'])
def test_same_faces_as_model_detect(model_file, shared):
    model = load_model(shared/'data'/'models'/model_file)
    fast = OnnxDetector(model, threads=1)
    for name, size in [('0_Parade_marchingband_1_20.jpg', 640), ('19_Couple_Couple_19_743.jpg', 320)]:
        img = cv2.imread(str(shared/'data'/'images'/name))
        b, s, k = detect(model, img, input_size=size)
        fb, fs, fk = fast.detect(img, input_size=size)
        assert len(fb) == len(b) > 0
        np.testing.assert_allclose(fb, b, atol=1e-3)
        np.testing.assert_allclose(fs, s, atol=1e-5)
        assert (k is None) == (fk is None)
        if k is not None: np.testing.assert_allclose(fk, k, atol=1e-3)


def test_snapshot(shared):
    model = load_model(shared/'data'/'models'/'det_500m.onnx')
    img = cv2.imread(str(shared/'data'/'images'/'solvay_conference_1927.jpg'))
    fast = OnnxDetector(model)
    before = fast.detect(img)[0]
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters(): p.mul_(1 + 0.3 * torch.randn_like(p))
    after = detect(model, img)[0]
    assert len(after) != len(before) or not np.allclose(after, before, atol=1)   # the model has changed
    np.testing.assert_array_equal(fast.detect(img)[0], before)       # its snapshot still does
