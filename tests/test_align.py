"""Aligned crops (scrfd_nb.align) against insightface's face_align.norm_crop on the real photos, the Umeyama estimate
against scikit-image's and a hand-made similarity, and save_crops."""
import warnings
import cv2
import numpy as np
import pytest
from conftest import require_shared, require_package, INSIGHTFACE_HINT
from scrfd_nb.detect import detect
from scrfd_nb.align import ARCFACE_DST, arcface_template, umeyama, estimate_norm, align_faces, save_crops

PHOTOS = ['astronaut.png', 'solvay_conference_1927.jpg', '0_Parade_marchingband_1_20.jpg', '19_Couple_Couple_19_743.jpg']


@pytest.fixture(scope='module')
def detections():
    d = require_shared()
    from scrfd_nb import load_model
    model = load_model(d/'data'/'models'/'det_500m.onnx')
    out = {}
    for name in PHOTOS:
        img = cv2.imread(str(d/'data'/'images'/name))
        out[name] = (img, detect(model, img)[2])
    return out


@pytest.mark.filterwarnings('ignore:`estimate` is deprecated')   # scikit-image 0.26, inside insightface's estimate_norm
@pytest.mark.parametrize('name', PHOTOS)
def test_crops_match_insightface(detections, name):
    face_align = require_package('insightface.utils.face_align', INSIGHTFACE_HINT)
    img, kps = detections[name]
    assert len(kps) > 0
    crops = align_faces(img, kps)
    ref = np.stack([face_align.norm_crop(img, k) for k in kps])
    assert crops.shape == ref.shape == (len(kps), 112, 112, 3) and crops.dtype == np.uint8
    diff = np.abs(crops.astype(int) - ref).max()
    print(f"{name}: {len(kps)} faces, max diff {diff}")
    assert diff <= 1
    for k in kps:
        M, R = estimate_norm(k), face_align.estimate_norm(k)
        np.testing.assert_allclose(M, R, rtol=1e-6, atol=1e-6)


def test_umeyama_equals_skimage_float64():
    tf = require_package('skimage.transform', 'pip install scikit-image')
    rng = np.random.default_rng(1)
    for _ in range(20):
        src = rng.uniform(0, 500, (5, 2))
        dst = arcface_template(112).astype(np.float64) + rng.normal(0, 3, (5, 2))
        t = tf.SimilarityTransform()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            t.estimate(src, dst)
        np.testing.assert_allclose(umeyama(src, dst), t.params, rtol=0, atol=1e-9)


def test_umeyama_hand_made():
    # a similarity built by hand: scale 0.6, rotation -35 degrees, translation (40, 7)
    rng = np.random.default_rng(2)
    src = rng.uniform(-50, 50, (5, 2))
    c, s = np.cos(np.deg2rad(-35)), np.sin(np.deg2rad(-35))
    M = np.array([[0.6 * c, -0.6 * s, 40.], [0.6 * s, 0.6 * c, 7.]])
    np.testing.assert_allclose(umeyama(src, src @ M[:, :2].T + M[:, 2])[:2], M, atol=1e-12)
    # the template itself maps to itself; a mirrored copy is not reflected (det > 0)
    t = arcface_template()
    np.testing.assert_allclose(umeyama(t, t), np.eye(3), atol=1e-6)
    R = umeyama(t * [-1, 1], t)[:2, :2]
    assert np.linalg.det(R) > 0


def test_template_sizes():
    np.testing.assert_allclose(arcface_template(112), ARCFACE_DST)
    np.testing.assert_allclose(arcface_template(224), ARCFACE_DST * 2, rtol=1e-6)
    np.testing.assert_allclose(arcface_template(256), ARCFACE_DST * 2 + [16, 0], rtol=1e-6)   # 128-px variant: +8 px per 128
    with pytest.raises(ValueError, match='multiple of 112 or 128'): arcface_template(100)


def test_align_synthetic_exact():
    "Keypoints placed at the template scaled by 2 about the origin: the crop is the image halved (pixel centres at 2x + 0.5)."
    img = np.zeros((300, 300, 3), np.uint8)
    img[:, :, 1] = np.arange(300)[None, :] % 256
    crop = align_faces(img, arcface_template(112) * 2)[0]
    ref = cv2.warpAffine(img, np.array([[0.5, 0, 0], [0, 0.5, 0]]), (112, 112), borderValue=0.0)
    assert np.abs(crop.astype(int) - ref).max() <= 1
    assert align_faces(img, np.zeros((0, 5, 2))).shape == (0, 112, 112, 3)
    with pytest.raises(ValueError, match=r'\(5, 2\) or \(N, 5, 2\)'): align_faces(img, np.zeros((2, 4, 2)))


def test_save_crops(detections, tmp_path):
    img, kps = detections['solvay_conference_1927.jpg']
    paths = save_crops(img, kps, tmp_path/'c', 'solvay')
    assert [p.name for p in paths[:2]] == ['solvay_0.png', 'solvay_1.png'] and len(paths) == len(kps) == 29
    np.testing.assert_array_equal(cv2.imread(str(paths[3])), align_faces(img, kps[3])[0])


def test_rectify_quad_recovers_a_slanted_card():
    "A card drawn at a slant comes back upright: its texture again, coloured quarters in place, edges to 1/4 px."
    from scrfd_nb.align import rectify_quad
    from scrfd_nb.synthetic import CardGeom, card_texture, draw_card, make_background
    rng = np.random.default_rng(0)
    tex = card_texture(rng, 128, 81)
    q = np.zeros((81, 128, 3), np.uint8); q[:40, :64] = (0, 0, 255); q[:40, 64:] = (0, 255, 0); q[40:, 64:] = (255, 0, 0); q[40:, :64] = 255
    for g in [CardGeom(160, 120, 150, 0.25, (0.5, -0.35), 2.0), CardGeom(150, 110, 120, -0.4, (-0.6, 0.3), 1.6)]:
        scene = make_background(rng, 320, 240); draw_card(scene, g.corners(), tex)
        err = np.abs(rectify_quad(scene, g.corners(), (128, 81)).astype(int) - tex)[2:-2, 2:-2]
        assert err.mean() < 6 and np.median(err) <= 2
        s2 = make_background(rng, 320, 240); draw_card(s2, g.corners(), q)
        c2 = rectify_quad(s2, g.corners(), (128, 81)).astype(int)
        assert np.abs(c2[3:37, 3:61] - (0, 0, 255)).max() <= 3 and np.abs(c2[3:37, 67:125] - (0, 255, 0)).max() <= 3
        assert np.abs(c2[43:78, 67:125] - (255, 0, 0)).max() <= 3 and np.abs(c2[43:78, 3:61] - 255).max() <= 3
        np.testing.assert_allclose(c2[5:35, 10:118, 2].sum(1) / 255, 54, atol=0.25)
        np.testing.assert_allclose(c2[10:71, 10:54, 1].sum(0) / 255, 31, atol=0.25)
        shifted = rectify_quad(s2, g.corners() + 0.5, (128, 81)).astype(int)
        assert np.abs(shifted[5:35, 10:118, 2].sum(1) / 255 - 54).mean() > 0.4     # the check sees half a pixel
    c = CardGeom(100, 80, 120).corners()
    assert rectify_quad(scene, c).shape == (round(120 / 85.6 * 53.98), 120, 3)
    assert rectify_quad(scene[..., 0], c, (30, 20)).shape == (20, 30)
    with pytest.raises(ValueError, match=r'\(4, 2\)'): rectify_quad(scene, c[:3])
