"""The trainer as a whole against the reference trainer's own optimisation (golden (h), README of ../shared/golden).

The golden is 30 iterations of the reference (mmdet 2.7 + mmcv 1.3.3, CPU, fp32) on 6 fixed batches from a saved
initial state, with warmup shortened to 10 iterations and a step decay after iteration 20. Everything here goes
through the trainer's own code: `make_schedule` (the lr), `setup_model` (model + the SGD constructor `train` uses),
`data.collate` (the batch) and `train_step` (the step the loop calls). Free-running trajectories of this network
drift apart from float summation order alone (the reference disagrees with itself by 2.5 % after 10 iterations
between 1 and 2 threads), so past iteration 1 the checks are teacher-forced from the stored states; tolerances are
the README's measured noise floor (its "suggested checks"), each stated where it is used.
"""
import copy, os
from dataclasses import replace
from pathlib import Path
import numpy as np
import pytest
import torch
from conftest import require_shared
from scrfd_nb.config import get_config
from scrfd_nb.data import collate
from scrfd_nb.runtime import setup_runtime
from scrfd_nb.train import RunConfig, make_schedule, setup_model, train_step, compute_losses, LOSS_KEYS

CFG = 'scrfd_500m_bnkps'


@pytest.fixture(scope='module')
def g():
    p = os.environ.get('SCRFD_TRAJECTORY')
    p = Path(p) if p else require_shared() / 'golden' / 'train_trajectory_500m_bnkps.npz'
    if not p.exists(): pytest.fail(f"{p}: trajectory golden not found")
    with np.load(p) as z: return {k: z[k] for k in z.files}


@pytest.fixture(scope='module')
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)   # as the reference ran
    yield
    torch.set_num_threads(n)


def golden_schedule(g):
    "Our schedule for the golden's setting: lr 0.01 at its batch of 2, warmup 10 iterations, x0.1 after 2 'epochs' of 10."
    tc = replace(get_config(CFG).train, lr=0.01, ref_batch=2, warmup_iters=10, lr_steps=(2,), epochs=3)
    return make_schedule(tc, world_size=1, batch_size=2, iters_per_epoch=10, log=lambda *a: None)


def batch(g, b):
    "Golden batch `b` through the trainer's collate (the stored network input, boxes, keypoints, ignore boxes)."
    samples = [dict(img=torch.from_numpy(g[f'batch{b}_img'][i]), gt_bboxes=g[f'batch{b}_img{i}_gt_bboxes'],
                    gt_keypoints=g[f'batch{b}_img{i}_gt_keypointss'], gt_bboxes_ignore=g[f'batch{b}_img{i}_gt_bboxes_ignore'])
               for i in range(2)]
    return collate(samples)


def state(g, tag):
    return {k: torch.from_numpy(np.array(g[f'{tag}__{k}'])) for k in g['state_dict_names']}


def trainer_model(g, tag):
    "The trainer's model and optimizer (`setup_model`, channels-last as `train` runs it), loaded with state `tag`."
    rt = setup_runtime('cpu', amp='off')
    model, opt = setup_model(RunConfig(), rt, get_config(CFG), golden_schedule(g), log=lambda *a: None)
    model.load_state_dict(state(g, tag)); model.train()
    return model, opt, rt


def assert_state(model, ref, atol, what):
    "Every state entry: parameters and BN running statistics within `atol`, num_batches_tracked exact."
    for k, v in model.state_dict().items():
        if k.endswith('num_batches_tracked'): assert int(v) == int(ref[k]), (what, k, int(v), int(ref[k]))
        else: np.testing.assert_allclose(v.numpy(), ref[k].numpy(), rtol=0, atol=atol, err_msg=f'{what}: {k}')


def grad_norm(model):
    return float(np.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters())))


def check_forward(g, tag, b, ref_prefix, idx=None):
    "Forward-only losses (train mode, as the reference's forward) from state `tag` on batch `b`: per level rtol 1e-5."
    model, _, _ = trainer_model(g, tag)
    bt = batch(g, b)
    losses = compute_losses(model, model(bt['images']), bt)
    for k in ('cls', 'bbox', 'kps'):
        ref = g[f'{ref_prefix}_loss_{k}_per_level']
        ref = ref[idx] if idx is not None else ref
        np.testing.assert_allclose(losses[f'loss_{k}_per_level'].detach().numpy(), ref, rtol=1e-5, atol=1e-8,
                                   err_msg=f'{tag} -> {k}')
    npos = g[f'{ref_prefix}_num_pos_per_level']
    np.testing.assert_array_equal(losses['num_pos_per_level'].numpy(), npos[idx] if idx is not None else npos)
    total = sum(losses[k] for k in LOSS_KEYS)
    ref_total = g[f'{ref_prefix}_loss_total']
    np.testing.assert_allclose(float(total.detach()), float(ref_total[idx] if idx is not None else ref_total), rtol=1e-5)
    total.backward()
    ref_gn = g[f'{ref_prefix}_grad_global_norm']
    np.testing.assert_allclose(grad_norm(model), float(ref_gn[idx] if idx is not None else ref_gn), rtol=GRAD_NORM_RTOL.get(tag, 1e-4))


# Teacher-forced global gradient norm: rtol 1e-4, 3x the README's replay noise (abs 7e-4 between two reference runs,
# 3e-5 of these norms of 20-40; ours 1 vs 2 threads: 1.8e-5 from sd_it01, 2e-6 from sd_it20, 1e-7 from sd_it30). From
# sd_it10, the chaotic state of the 10 -> 11 replay below, the same computation moves by 6.4e-4 between 1 and 2 threads
# (ours; the golden equals our 2-thread value to 7e-6): rtol 2e-3 there, 3x that.
GRAD_NORM_RTOL = {'sd_it10': 2e-3}


def test_lr_of_every_iteration_exact(g):
    s = golden_schedule(g)
    lrs = [s.lr(it, it // s.iters_per_epoch) for it in range(int(g['num_iters']))]
    assert lrs == g['traj_lr'].tolist()          # exactly: same formula, same float operations as mmcv's hook
    np.testing.assert_array_equal(np.arange(30) // 10, g['traj_epoch'])


def test_iteration_1_end_to_end(g, one_thread):
    model, opt, rt = trainer_model(g, 'sd_init')
    assert_state(model, state(g, 'sd_init'), 0, 'initial state')
    s = golden_schedule(g)
    bt = batch(g, int(g['traj_batch_index'][0]))
    # every loss term per level, on a copy (a train-mode forward moves the BN statistics)
    ref_model = copy.deepcopy(model)
    losses = compute_losses(ref_model, ref_model(bt['images']), bt)
    for k in ('cls', 'bbox', 'kps'):
        np.testing.assert_allclose(losses[f'loss_{k}_per_level'].detach().numpy(), g[f'traj_loss_{k}_per_level'][0],
                                   rtol=1e-5, atol=1e-8, err_msg=k)
    terms, ok = train_step(model, model, bt, opt, s.lr(0, 0), rt)
    assert ok
    for k in LOSS_KEYS:   # the step's own terms: the reference's log_vars (sum over levels)
        np.testing.assert_allclose(float(terms[k]), float(g[f'traj_log_vars_{k}'][0]), rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(float(terms['loss']), float(g['traj_loss_total'][0]), rtol=1e-5)
    # the gradient (still on the parameters after the step): global norm rtol 1e-4; per tensor relative L2 1e-2
    # (the reference's own 1- vs 2-thread runs differ by 4e-3 on the worst tensor, the stem BN weight)
    np.testing.assert_allclose(grad_norm(model), float(g['traj_grad_global_norm'][0]), rtol=1e-4)
    for (n, p), gn in zip(model.named_parameters(), g['traj_grad_norm_per_param'][0]):
        ref = g[f'grad_it01__{n}']
        err = float(np.linalg.norm(p.grad.numpy() - ref))
        assert err <= 1e-2 * float(np.linalg.norm(ref)) + 1e-6 * np.sqrt(ref.size), (n, err, float(np.linalg.norm(ref)))
        np.testing.assert_allclose(float(p.grad.double().norm()), gn, rtol=1e-2, atol=1e-6, err_msg=n)
    # the state after the step: weights, BN running statistics, num_batches_tracked (README: 1.2e-7 between runs)
    assert_state(model, state(g, 'sd_it01'), 1e-6, 'after iteration 1')


@pytest.mark.parametrize('tag,n', [('sd_it01', 2), ('sd_it10', 11), ('sd_it20', 21)])
def test_forward_losses_from_stored_states(g, one_thread, tag, n):
    check_forward(g, tag, int(g['traj_batch_index'][n - 1]), 'traj', idx=n - 1)


def test_forward_after_iteration_30(g, one_thread):
    check_forward(g, 'sd_it30', int(g['after30_batch_index']), 'after30')


def test_optimizer_is_the_references(g):
    "One param group, SGD lr/momentum 0.9/weight decay 5e-4 on every parameter (BN and biases too), no dampening/nesterov."
    model, opt, _ = trainer_model(g, 'sd_init')
    assert len(opt.param_groups) == 1 and type(opt) is torch.optim.SGD
    pg = opt.param_groups[0]
    assert (pg['momentum'], pg['weight_decay'], pg['dampening'], pg['nesterov']) == (0.9, 5e-4, 0, False)
    assert [id(p) for p in pg['params']] == [id(p) for p in model.parameters()]
    assert len(pg['params']) == len(g['param_names'])


# One-step replays from the stored state and momentum. Tolerances:
# - 20 -> 21: the README's suggested state atol 1e-5 / momentum atol 1e-3, 4x the reference's own replay noise (state
#   2.5e-6, momentum buffers 2.5e-4 between 1 and 2 threads; measured here 1.2e-7 / 1.3e-5, and another seed of this
#   golden 2.3e-4 on the momentum, which the earlier 1e-4 failed). A missing weight decay (5e-4 x the BN weights, ~1)
#   would sit inside that floor: test_optimizer_is_the_references checks weight_decay on every parameter instead;
# - 10 -> 11: this state sits where the gradient is chaotic: our own gradient moves by 1.0 % on backbone.stem.1.0
#   between 1 and 2 threads (median tensor 4e-5), and differs from the reference's by the same 1.0 %. The state
#   after the step is off by up to 2.9e-4 (stem BN bias) and the momentum by up to 0.029, so each tensor is held to
#   the README's absolute tolerance or to 2 % of its own update (measured worst 0.83 %, stem BN bias).
REPLAY_TOL = {10: dict(state=1e-5, momentum=1e-3, rel=2e-2), 20: dict(state=1e-5, momentum=1e-3, rel=0.0)}


def _close(a, ref, atol, rel_to, rel):
    "Per tensor: max |a - ref| <= atol, or ||a - ref|| <= rel * ||rel_to||."
    err = np.abs(a - ref)
    return err.max() <= atol or (rel > 0 and np.linalg.norm(a - ref) <= rel * np.linalg.norm(rel_to))


@pytest.mark.parametrize('before,after', [(10, 11), (20, 21)])
def test_one_step_replay(g, one_thread, before, after):
    "From the stored state and momentum of iteration `before`, one trainer step = the reference's state and momentum."
    tol = REPLAY_TOL[before]
    model, opt, rt = trainer_model(g, f'sd_it{before:02d}')
    for n, p in model.named_parameters():
        opt.state[p]['momentum_buffer'] = torch.from_numpy(np.array(g[f'momentum_it{before:02d}__{n}'])).clone()
    s = golden_schedule(g)
    it = after - 1                                        # 0-based iteration of the replayed step
    terms, ok = train_step(model, model, batch(g, int(g['traj_batch_index'][it])), opt, s.lr(it, it // 10), rt)
    assert ok
    np.testing.assert_allclose(float(terms['loss']), float(g['traj_loss_total'][it]), rtol=1e-5)
    bad = []
    for k, v in model.state_dict().items():       # weights, BN running statistics; num_batches_tracked exact
        ref, prev = g[f'sd_it{after:02d}__{k}'], g[f'sd_it{before:02d}__{k}']
        if k.endswith('num_batches_tracked'): assert int(v) == int(ref), k; continue
        if not _close(v.numpy(), ref, tol['state'], ref - prev, tol['rel']): bad.append(k)
    for n, p in model.named_parameters():
        ref = g[f'momentum_it{after:02d}__{n}']
        if not _close(opt.state[p]['momentum_buffer'].numpy(), ref, tol['momentum'], ref, tol['rel']): bad.append('momentum ' + n)
    assert not bad, bad[:8]
