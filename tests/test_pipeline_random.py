"""How OFTEN each random decision of the train pipeline happens (issue 12 point 5).

The pipeline goldens script every draw; these tests run the real `TrainPipeline` with seeded numpy Generators over
thousands of samples and compare the frequencies with the reference's rules (SCRFD_SPEC.md §4.2, golden README (e),
(g) and "Reference behaviour" 9), computed here independently of our code:
* RandomSquareCrop: every scale draw uniform over the 10 crop_choice values; per draw up to 250 offsets
  (numpy randint, high exclusive), accepted iff some face centre is strictly inside, else a fresh scale (forever in
  the reference; ours falls back to a centred crop after 64 scales). The acceptance probability p_s of one offset is
  counted EXACTLY by enumerating all integer offsets, which gives the expected first-offset rejection rate, scale-redraw
  rate, distribution of the accepted scale and mean number of offset draws.
* RandomFlip: p = 0.5; boxes x1' = W - x2, keypoints reordered [1, 0, 2, 4, 3] then x' = W - x.
* PhotoMetricDistortion: six independent fair coins (brightness, mode, contrast, saturation, hue, channel swap),
  U(-32, 32), U(0.5, 1.5), U(0.5, 1.5), U(-18, 18), permutation uniform over the 6 orders.
Tolerances: binomial counts within 4.5 sd (two-sided p ~ 7e-6), chi-square and KS at p >= 1e-4; everything is
seeded, so the tests are deterministic; the measured statistics are in the comments.
"""
import numpy as np
import pytest
from scipy import stats
from scrfd_nb.transforms import TrainPipeline, crop_resize_image

CROP = (0.3, 0.45, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0)  # spec §4.2
Z, P_MIN = 4.5, 1e-4


class RecRNG:
    "A numpy Generator that logs every call (name, args, value) made through it."
    def __init__(self, seed): self.g, self.log = np.random.default_rng(seed), []
    def __getattr__(self, name):
        f = getattr(self.g, name)
        def call(*a, **k):
            v = f(*a, **k); self.log.append((name, a, v)); return v
        return call


def binom_ok(k, n, p, z=Z):
    "(ok, z-score) for k successes in n trials with probability p."
    zs = (k - n * p) / np.sqrt(n * p * (1 - p))
    return abs(zs) <= z, zs


def chi2_p(observed, expected):
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    m = expected > 0
    assert observed[~m].sum() == 0, (observed, expected)
    return stats.chisquare(observed[m], expected[m] * observed.sum() / expected[m].sum()).pvalue


# ---------------------------------------------------------------------------------------------------- crop (reference rule)
def _offsets(n, c):
    "Offsets the reference can draw for image side n and crop side c: [lo, hi)."
    return (0, 1) if n == c else ((0, n - c) if n > c else (n - c, 0))


def accept_prob(w, h, boxes, cw):
    "Exact probability that one uniformly drawn offset keeps some face centre strictly inside the cw-square."
    b = np.asarray(boxes, np.float32)
    c = ((b[:, :2] + b[:, 2:]) / np.float32(2)).astype(np.float64)  # centres in float32, as the reference
    (l0, l1), (t0, t1) = _offsets(w, cw), _offsets(h, cw)
    g = np.zeros((l1 - l0, t1 - t0), bool)
    for cx, cy in c:  # left < cx < left + cw  <=>  floor(cx - cw) + 1 <= left <= ceil(cx) - 1
        a, e = max(int(np.floor(cx - cw)) + 1, l0), min(int(np.ceil(cx)) - 1, l1 - 1)
        d, f = max(int(np.floor(cy - cw)) + 1, t0), min(int(np.ceil(cy)) - 1, t1 - 1)
        if a <= e and d <= f: g[a - l0:e - l0 + 1, d - t0:f - t0 + 1] = True
    return g.mean()


def expected_crop(w, h, boxes):
    "Reference rates for one image: first offset rejected, first scale exhausted (250 misses), accepted scale, draws."
    p = np.array([accept_prob(w, h, boxes, int(s * min(w, h))) for s in CROP])
    fail = (1 - p) ** 250
    ok = 1 - fail
    tries_per_round = ok / np.where(p > 0, p, 1) + np.where(p > 0, 0, 250)  # E[min(Geom(p), 250)]
    return dict(first_reject=1 - p.mean(), redraw=fail.mean(), accepted=ok / ok.sum(),
                tries=tries_per_round.mean() / ok.mean())  # Wald: rounds ~ Geom(mean ok)


def _faces(rs, k, w, h, wmin, wmax, cx, cy):
    fw = rs.uniform(wmin, wmax, k); fh = fw * rs.uniform(1, 1.3, k)
    return np.stack([cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2], 1).astype(np.float32)


def wider_like_images(n=10):
    "1024x683 crowds: 15-40 faces of 20-60 px in the middle 60 % of the height."
    rs, out = np.random.RandomState(7), []
    for _ in range(n):
        k = rs.randint(15, 41)
        out.append((1024, 683, _faces(rs, k, 1024, 683, 20, 60, rs.uniform(0, 1024, k), rs.uniform(137, 546, k))))
    return out


def small_face_images(n=12):
    "1-3 faces of 6-14 px; every other image has them within 12 px of a corner (there small crops rarely hit them)."
    rs, out = np.random.RandomState(8), []
    for i in range(n):
        w, h = [(800, 600), (600, 900), (1024, 683)][i % 3]
        k = rs.randint(1, 4)
        cx, cy = rs.uniform(0, w, k), rs.uniform(0, h, k)
        if i % 2 == 0:
            cx[:] = rs.uniform(0, 12) if rs.rand() < .5 else w - rs.uniform(0, 12)
            cy[:] = rs.uniform(0, 12) if rs.rand() < .5 else h - rs.uniform(0, 12)
            cx[1:] += rs.uniform(-15, 15, k - 1); cy[1:] += rs.uniform(-15, 15, k - 1)
        out.append((w, h, _faces(rs, k, w, h, 6, 14, cx, cy)))
    return out


def run_crops(images, n_per_image, seed):
    "Our pipeline's geometry (no pixels) on each image n times: per sample (first choice, #choices, accepted scale, #offsets)."
    pipe = TrainPipeline(size=64, photometric=False)
    rows, choices = [], []
    for j, (w, h, boxes) in enumerate(images):
        ann = dict(bboxes=boxes, keypoints=np.zeros((len(boxes), 5, 3), np.float32), bboxes_ignore=np.zeros((0, 4)))
        img = np.zeros((h, w, 3), np.uint8)
        for i in range(n_per_image):
            rng = RecRNG([seed, j, i])
            *_, meta = pipe.geometry(img, ann, rng, crop=lambda *a: None)
            scales, tries = [], 0
            for name, a, v in rng.log:
                if name == 'choice': scales.append(float(v)); cw = int(v * min(w, h))
                elif name == 'integers': tries += 1 / ((w != cw) + (h != cw))  # one call per drawn side per offset
            assert not meta['crop_fallback']
            side = meta['crop'][2] - meta['crop'][0]
            assert side == int(scales[-1] * min(w, h))
            rows.append((j, scales[0], len(scales), scales[-1], round(tries)))
            choices += scales
    return rows, choices


def check_crop_rates(images, n, seed):
    rows, choices = run_crops(images, n, seed)
    E = [expected_crop(*im) for im in images]
    N = len(rows)
    res = {}
    # every scale draw (first ones and redraws) is uniform over crop_choice
    cnt = np.array([sum(c == s for c in choices) for s in CROP])
    res['choice_p'] = chi2_p(cnt, np.ones(10))
    # first offset rejected / first scale exhausted: sums of per-image binomials (mean and variance exact)
    for key, obs in (('first_reject', [r[4] > 1 for r in rows]), ('redraw', [r[2] > 1 for r in rows])):
        q = np.repeat([e[key] for e in E], n)
        mu, sd = q.sum(), np.sqrt((q * (1 - q)).sum())
        res[key] = (int(sum(obs)), mu, (sum(obs) - mu) / sd if sd > 0 else float(sum(obs) - mu))
    # accepted scale: expected counts sum_i n * pi_i (a sum of multinomials: Pearson's statistic is conservative)
    acc = np.array([sum(r[3] == s for r in rows) for s in CROP])
    res['accepted'] = acc
    res['accepted_exp'] = n * np.sum([e['accepted'] for e in E], 0)
    res['accepted_p'] = chi2_p(acc, res['accepted_exp'])
    tries = np.array([r[4] for r in rows], float)
    mu = n * np.sum([e['tries'] for e in E]) / N
    res['tries'] = (tries.mean(), mu, (tries.mean() - mu) / (tries.std(ddof=1) / np.sqrt(N)))
    return res, N


def _assert_crop(res):
    assert res['choice_p'] >= P_MIN, res
    for key in ('first_reject', 'redraw'):
        k, mu, z = res[key]
        assert abs(z) <= Z, (key, k, mu, z)
    assert res['accepted_p'] >= P_MIN, (res['accepted'], res['accepted_exp'].round(1), res['accepted_p'])
    assert abs(res['tries'][2]) <= Z, res['tries']


def test_square_crop_rates_wider_like():
    "3000 samples on 10 crowd images: scale draws uniform, ~1.5 % first offsets rejected, no scale redraw."
    res, N = check_crop_rates(wider_like_images(), 300, seed=1)
    print(N, res)
    _assert_crop(res)
    assert res['redraw'][0] == 0 and res['redraw'][1] < 1e-3  # exact expectation ~ 0 (every scale hits a face)


def test_square_crop_rates_small_faces():
    "3600 samples on 12 small-face images: ~25 % of samples need a fresh scale; small scales are under-represented."
    res, N = check_crop_rates(small_face_images(), 300, seed=2)
    print(N, res)
    _assert_crop(res)
    assert res['redraw'][1] > 0.15 * N and res['accepted_exp'][0] < 0.5 * res['accepted_exp'][-1]  # the test has power


def test_accept_prob_by_hand():
    "The exact acceptance count on cases small enough to count by hand."
    # 100x50 image, crop 20: lefts 0..79, tops 0..29; centre (10, 10): left in 0..9, top in 0..9 -> 100 / 2400
    assert accept_prob(100, 50, [[8, 8, 12, 12]], 20) == pytest.approx(100 / 2400)
    # centre exactly on an integer is excluded at both ends: left < 10 < left + 20 -> left in 0..9 (10 values)
    assert accept_prob(100, 50, [[9, 9, 11, 11]], 20) == pytest.approx(100 / 2400)
    # crop larger than the image (cw=60 > h=50): tops -10..-1, all of them contain y=10; lefts 0..39: 0..9 -> 10/40
    assert accept_prob(100, 50, [[8, 8, 12, 12]], 60) == pytest.approx(10 / 40)
    # the right-most column is never inside a crop smaller than the image (randint excludes its high end)
    assert accept_prob(100, 50, [[99, 20, 100, 21]], 20) == 0


def test_crop_fallback_only_when_no_centre_reachable():
    "Reference loops forever when no crop can keep a face centre; ours gives up after 64 x 250 offsets with a centred crop."
    pipe = TrainPipeline(size=32, photometric=False)
    for boxes in (np.array([[-50, -50, -40, -40]], np.float32), np.zeros((0, 4), np.float32)):  # centre outside / none
        rng = RecRNG(0)
        ann = dict(bboxes=boxes, keypoints=np.zeros((len(boxes), 5, 3), np.float32), bboxes_ignore=np.zeros((0, 4)))
        *_, meta = pipe.geometry(np.zeros((60, 80, 3), np.uint8), ann, rng, crop=lambda *a: None)
        assert meta['crop_fallback'] and meta['crop'] == (10, 0, 70, 60)
        assert sum(n == 'choice' for n, *_ in rng.log) == (64 if len(boxes) else 0)
        assert accept_prob(80, 60, boxes, 18) == 0 if len(boxes) else True


# ---------------------------------------------------------------------------------------------------- flip + keypoints
def _face_image():
    "A 200x150 picture with 3 frontal faces (left eye left of right eye, as the labelv2 order is in image terms)."
    rs = np.random.RandomState(3)
    img = rs.randint(0, 256, (150, 200, 3)).astype(np.uint8)
    boxes = np.array([[20, 30, 60, 80], [90, 40, 130, 95], [140, 70, 185, 125]], np.float32)
    k = []
    for x1, y1, x2, y2 in boxes:
        w, h = x2 - x1, y2 - y1
        pts = [(.3, .35), (.7, .35), (.5, .55), (.35, .75), (.65, .75)]
        k.append([[x1 + a * w, y1 + b * h, 1] for a, b in pts])
    return img, dict(bboxes=boxes, keypoints=np.array(k, np.float32), bboxes_ignore=np.zeros((0, 4), np.float32))


def test_flip_rate_and_keypoints_follow_flip():
    "4000 samples: flip rate 0.5; boxes and keypoints mirrored with left/right swapped; the image follows the flip."
    img, ann = _face_image()
    S, N = 48, 4000
    pipe = TrainPipeline(size=S, photometric=False, bbox_clip_border=False)
    flips = 0
    for i in range(N):
        o = pipe(img, ann, np.random.default_rng([5, i]))
        l, t, r, _ = o['meta']['crop']; s = S / (r - l); flip = o['meta']['flip']
        flips += flip
        c = (ann['bboxes'][:, :2] + ann['bboxes'][:, 2:]) / 2
        keep = (c[:, 0] > l) & (c[:, 0] < r) & (c[:, 1] > t) & (c[:, 1] < t + r - l)
        b = (ann['bboxes'][keep] - [l, t, l, t]) * s
        k = ann['keypoints'][keep].copy(); k[..., 0] = (k[..., 0] - l) * s; k[..., 1] = (k[..., 1] - t) * s
        if flip:  # written from the spec: x1' = W - x2, x2' = W - x1; keypoints [1,0,2,4,3], x' = W - x
            b = np.stack([S - b[:, 2], b[:, 1], S - b[:, 0], b[:, 3]], 1)
            k = k[:, [1, 0, 2, 4, 3]]; k[..., 0] = S - k[..., 0]
        np.testing.assert_allclose(o['gt_bboxes'], b, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(o['gt_keypoints'], k, rtol=1e-5, atol=1e-3)
        kp = o['gt_keypoints']  # semantics survive the flip: left eye / mouth corner still left of the right ones
        assert np.all(kp[:, 0, 0] < kp[:, 1, 0]) and np.all(kp[:, 3, 0] < kp[:, 4, 0])
        if i < 100:  # the pixels follow the same decision
            x = (crop_resize_image(img, o['meta']['crop'], (S, S))[..., ::-1] - 127.5) / 128
            if flip: x = x[:, ::-1]
            np.testing.assert_allclose(o['img'].permute(1, 2, 0).numpy(), x, atol=1e-4)
    ok, z = binom_ok(flips, N, 0.5)
    print('flips', flips, N, z)
    assert ok, (flips, N, z)


# ---------------------------------------------------------------------------------------------------- photometric
def test_photometric_branch_rates_and_ranges():
    "6400 draws through the pipeline: each coin 1/2, the 64 coin patterns equally likely, uniform parameters, permutations."
    img = np.random.RandomState(4).randint(0, 256, (24, 32, 3)).astype(np.uint8)
    ann = dict(bboxes=np.array([[4, 4, 28, 20]], np.float32), keypoints=np.zeros((1, 5, 3), np.float32),
               bboxes_ignore=np.zeros((0, 4), np.float32))
    pipe, N = TrainPipeline(size=8), 6400
    P = [pipe(img, ann, np.random.default_rng([6, i]))['meta']['photometric'] for i in range(N)]
    on = {k: np.array([p[k] is not None for p in P]) for k in ('delta', 'contrast', 'saturation', 'hue', 'perm')}
    mode = np.array([p['mode'] for p in P])
    assert set(mode) == {0, 1}
    for k, v in list(on.items()) + [('mode', mode == 1)]:
        ok, z = binom_ok(v.sum(), N, 0.5)
        print('coin', k, v.sum(), N, round(z, 2))
        assert ok, (k, v.sum(), z)
    for m in (0, 1):  # contrast coin independent of where contrast goes
        ok, z = binom_ok(on['contrast'][mode == m].sum(), (mode == m).sum(), 0.5)
        print('contrast | mode', m, round(z, 2))
        assert ok, ('contrast | mode', m, z)
    pattern = sum(v.astype(int) << i for i, v in enumerate([*on.values(), mode == 1]))
    p_joint = chi2_p(np.bincount(pattern, minlength=64), np.ones(64))
    print('64 coin patterns: chi2 p', p_joint)
    assert p_joint >= P_MIN, p_joint
    for k, lo, hi in (('delta', -32, 32), ('contrast', .5, 1.5), ('saturation', .5, 1.5), ('hue', -18, 18)):
        x = np.array([p[k] for p in P if p[k] is not None])
        assert lo <= x.min() and x.max() < hi, (k, x.min(), x.max())
        assert x.min() < lo + 0.01 * (hi - lo) and x.max() > hi - 0.01 * (hi - lo), k  # the whole range is used
        ks = stats.kstest(x, stats.uniform(lo, hi - lo).cdf).pvalue
        print('range', k, x.min(), x.max(), 'KS p', ks)
        assert ks >= P_MIN, (k, ks)
    perms = [tuple(p['perm']) for p in P if p['perm'] is not None]
    orders = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    assert set(perms) <= set(orders)
    p_perm = chi2_p([perms.count(o) for o in orders], np.ones(6))
    print('permutations', [perms.count(o) for o in orders], 'chi2 p', p_perm)
    assert p_perm >= P_MIN, p_perm


def test_hue_shift_wraps_in_pipeline_images():
    "Samples whose only photometric step is hue: every pixel's hue moves by exactly the drawn shift modulo 360 (both signs)."
    import colorsys
    rs = np.random.RandomState(9)
    hsv = np.stack([rs.uniform(0, 1, 256), rs.uniform(0.5, 1, 256), rs.uniform(0.4, 1, 256)], 1)
    rgb = np.array([colorsys.hsv_to_rgb(*p) for p in hsv]) * 255
    img = rgb.reshape(16, 16, 3)[..., ::-1].round().astype(np.uint8)        # BGR, hues all round the circle
    src = np.array([colorsys.rgb_to_hsv(*p) for p in img[..., ::-1].reshape(-1, 3) / 255.0])
    ann = dict(bboxes=np.array([[2, 2, 14, 14]], np.float32), keypoints=np.zeros((1, 5, 3), np.float32),
               bboxes_ignore=np.zeros((0, 4), np.float32))
    pipe = TrainPipeline(size=16, crop_choice=(1.0,), flip_ratio=0)  # full-image crop, no resize, no flip
    seen, worst = {1: 0, -1: 0}, 0.0
    for i in range(1500):
        o = pipe(img, ann, np.random.default_rng([10, i]))
        p = o['meta']['photometric']
        if p['hue'] is None or any(p[k] is not None for k in ('delta', 'contrast', 'saturation', 'perm')): continue
        seen[int(np.sign(p['hue']))] += 1
        out = (o['img'].permute(1, 2, 0).numpy().reshape(-1, 3) * 128 + 127.5) / 255.0   # RGB
        got = np.array([colorsys.rgb_to_hsv(*q) for q in out])
        dh = ((got[:, 0] - src[:, 0]) * 360 - p['hue'] + 180) % 360 - 180
        worst = max(worst, np.abs(dh).max())
        assert np.abs(dh).max() < 0.05, (p["hue"], np.abs(dh).max())
        np.testing.assert_allclose(got[:, 1:], src[:, 1:], atol=1e-4)
    print("hue samples", seen, "worst hue error (deg)", worst)
    assert min(seen.values()) >= 10, seen  # expected 1500 / 32 / 2 ~ 23 of each sign
