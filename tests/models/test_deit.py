"""DeiT: the distillation token and its two heads, the distillation losses against
a slow per-image version, the teacher (no graph, eval mode, same batch), fit
integration, loading a teacher from a run, parameter counts and clear errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minivit
from minivit import functional as F
from minivit import io, models, optim
from minivit.data import ArrayDataset
from minivit.models.cnn import ResNetCNN
from minivit.models.deit import (DeiT, DistillationCriterion, DistillationLoss, VisionTransformerDistilled,
                                 load_teacher)
from minivit.models.vit import VisionTransformer
from minivit.train import TrainConfig, fit


def tiny(**kw):
    cfg = dict(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=2, num_heads=2,
               mlp_ratio=2.0)
    cfg.update(kw)
    return VisionTransformerDistilled(**cfg)


def tiny_teacher(num_classes=3):
    return ResNetCNN(layers=(1, 1), widths=(4, 8), stem_width=4, in_chans=1, num_classes=num_classes)


def ce(logits, labels):
    return F.cross_entropy(logits, labels)


# ------------------------------------------------------------------ configs
def test_registry_and_param_counts():
    assert {"deit_fmnist", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"} <= set(models.list_models())
    assert DeiT is VisionTransformerDistilled
    # deit_fmnist = vit_fmnist + dist_token (64) + one more pos_embed row (64) + head_dist (64*10 + 10)
    assert models.create("deit_fmnist").num_params() == 205_962 + 64 + 64 + 650 == 206_740
    assert models.create("deit_tiny_patch16_224").num_params() == 5_717_416             # PAPERS.md 4(c)
    assert models.create("deit_tiny_distilled_patch16_224").num_params() == 5_910_800   # PAPERS.md 4(c)
    assert type(models.create("deit_tiny_patch16_224")) is VisionTransformer            # as timm: no dist token


def test_state_dict_names_and_shapes_follow_timm():
    sd = models.create("deit_tiny_distilled_patch16_224", depth=1).state_dict()
    assert sd["pos_embed"].shape == (1, 198, 192)            # cls, dist, 196 patches
    assert sd["cls_token"].shape == sd["dist_token"].shape == (1, 1, 192)
    assert sd["head.weight"].shape == sd["head_dist.weight"].shape == (1000, 192)
    assert sd["head_dist.bias"].shape == (1000,)
    assert "blocks.0.attn.qkv.weight" in sd and "norm.weight" in sd


def test_init_follows_the_official_deit():
    minivit.manual_seed(0)
    m = models.create("deit_tiny_distilled_patch16_224", depth=1)
    for p in (m.cls_token, m.dist_token, m.pos_embed, m.head_dist.weight):
        assert abs(p.data.std() - 0.02) < 0.004, p.shape
    assert not np.allclose(m.cls_token.data, m.dist_token.data)
    np.testing.assert_array_equal(m.head_dist.bias.data, 0)
    assert m.no_weight_decay() == {"pos_embed", "cls_token", "dist_token"}


# ------------------------------------------------------------------ forward
def test_train_mode_returns_both_heads_eval_mode_their_average():
    m = models.create("deit_fmnist")
    x = minivit.tensor(np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32))
    z_s, z_d = m(x)                                       # training mode
    assert z_s.shape == z_d.shape == (3, 10) and z_s.dtype == np.float32
    m.eval()
    avg = m(x)
    assert avg.shape == (3, 10)
    h_s, h_d = m.forward_heads(x)
    np.testing.assert_allclose(avg.data, (h_s.data + h_d.data) / 2, rtol=1e-6, atol=1e-7)
    # an average of the logits, not of the probabilities
    p = (np.exp(h_s.data) / np.exp(h_s.data).sum(1, keepdims=True)
         + np.exp(h_d.data) / np.exp(h_d.data).sum(1, keepdims=True)) / 2
    assert not np.allclose(avg.data, p)
    # no dropout in this config: the training-mode heads are the eval-mode heads
    np.testing.assert_allclose(z_s.data, h_s.data, rtol=1e-5, atol=1e-6)
    logits, attns = m(x, return_attention=True)
    assert len(attns) == 6 and attns[0].shape == (3, 4, 51, 51)          # 49 patches + cls + dist
    np.testing.assert_allclose(logits.data, avg.data, rtol=1e-5, atol=1e-6)
    m.train().set_distilled_training(False)
    np.testing.assert_allclose(m(x).data, avg.data, rtol=1e-5, atol=1e-6)


def slow_deit_forward(m, x):
    """The DeiT equations written out from ViT's parts, one image at a time:
    z_0 = [x_cls; x_dist; x_p E] + E_pos, blocks, LN, Z_s = head(z^0), Z_d = head_dist(z^1)."""
    P = m.patch_embed.patch_size
    E = m.patch_embed.proj.weight.data.reshape(m.embed_dim, -1)          # (D, C*P*P)
    b = m.patch_embed.proj.bias.data
    out_s, out_d = [], []
    for img in x:                                                         # (C, H, W)
        C, H, W = img.shape
        patches = [img[:, i:i + P, j:j + P].reshape(-1) for i in range(0, H, P) for j in range(0, W, P)]
        tokens = np.stack([E @ p + b for p in patches])                   # (N, D) row-major patches
        z = np.concatenate([m.cls_token.data[0], m.dist_token.data[0], tokens]) + m.pos_embed.data[0]
        z = minivit.tensor(z[None])
        for blk in m.blocks:
            z = blk(z)
        z = m.norm(z).data[0]
        out_s.append(m.head.weight.data @ z[0] + m.head.bias.data)
        out_d.append(m.head_dist.weight.data @ z[1] + m.head_dist.bias.data)
    return np.stack(out_s), np.stack(out_d)


def test_distillation_token_sequence_equals_the_equations():
    m = tiny().to(np.float64).eval()
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8))
    z_s, z_d = m.forward_heads(minivit.tensor(x))
    s_ref, d_ref = slow_deit_forward(m, x)
    np.testing.assert_allclose(z_s.data, s_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(z_d.data, d_ref, rtol=1e-10, atol=1e-12)


def test_gradcheck_tiny_deit_both_heads():
    m = tiny().to(np.float64)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8))

    def both(a):
        z_s, z_d = m(a)
        return F.cat([z_s, z_d], dim=1)
    minivit.gradcheck(both, [minivit.tensor(x, requires_grad=True)], params=list(m.parameters()),
                      max_checks=6, atol=1e-6, rtol=1e-4)


def test_other_image_sizes_resize_the_patch_rows_only():
    m = tiny().eval()
    out = m(minivit.tensor(np.random.randn(2, 1, 16, 16).astype(np.float32)))
    assert out.shape == (2, 3)


# ------------------------------------------------------------------ the losses
def slow_distillation_loss(z_s, z_d, z_t, y, kind, alpha, tau, smoothing=0.0):
    """losses.py written per image and per class with Python loops."""
    B, K = z_s.shape

    def log_softmax(v):
        m = max(v)
        return [a - m - np.log(sum(np.exp(b - m) for b in v)) for a in v]
    base = 0.0
    for n in range(B):
        lp = log_softmax(z_s[n])
        base += -sum(((1 - smoothing) * (c == y[n]) + smoothing / K) * lp[c] for c in range(K))
    base /= B
    if kind == "none":
        return base
    kd = 0.0
    for n in range(B):
        if kind == "soft":
            ls = log_softmax(z_d[n] / tau)
            lt = log_softmax(z_t[n] / tau)
            kd += sum(np.exp(lt[c]) * (lt[c] - ls[c]) for c in range(K))        # KL(teacher || student)
        else:
            y_t = int(np.argmax(z_t[n]))
            kd += -log_softmax(z_d[n])[y_t]
    kd = kd * tau * tau / (B * K) if kind == "soft" else kd / B
    return (1 - alpha) * base + alpha * kd


class FixedTeacher:
    """A 'model' that returns given logits and remembers what it was called with."""

    def __init__(self, logits, num_classes=None):
        self.logits, self.seen, self.num_classes = logits, [], num_classes or logits.shape[1]

    def __call__(self, x):
        self.seen.append((np.array(x.data), minivit.is_grad_enabled()))
        return minivit.tensor(self.logits)

    def eval(self):
        return self

    def requires_grad_(self, flag=True):
        return self


@settings(max_examples=20)
@given(kind=st.sampled_from(["soft", "hard", "none"]), alpha=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
       tau=st.sampled_from([0.5, 1.0, 3.0]), smoothing=st.sampled_from([0.0, 0.1]),
       B=st.integers(1, 5), K=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_distillation_loss_equals_the_slow_version(kind, alpha, tau, smoothing, B, K, seed):
    r = np.random.default_rng(seed)
    z_s, z_d, z_t = (r.standard_normal((B, K)) * 3 for _ in range(3))
    y = r.integers(0, K, B)
    x = r.standard_normal((B, 1, 4, 4))
    teacher = FixedTeacher(z_t)
    loss = DistillationLoss(lambda lg, lb: F.cross_entropy(lg, lb, label_smoothing=smoothing), teacher,
                            kind=kind, alpha=alpha, tau=tau)
    got = loss(x, (minivit.tensor(z_s), minivit.tensor(z_d)), y)
    want = slow_distillation_loss(z_s, z_d, z_t, y, kind, alpha, tau, smoothing)
    np.testing.assert_allclose(float(got.data), want, rtol=1e-10, atol=1e-12)
    if kind != "none":
        seen_x, grad_enabled = teacher.seen[-1]
        np.testing.assert_array_equal(seen_x, x)                # the same batch the student saw
        assert grad_enabled is False                            # the teacher ran under no_grad
    else:
        assert teacher.seen == []


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_gradcheck_distillation_loss(kind):
    r = np.random.default_rng(3)
    z_t = r.standard_normal((4, 5))
    loss = DistillationLoss(ce, FixedTeacher(z_t), kind=kind, alpha=0.4, tau=2.0)
    y = r.integers(0, 5, 4)
    x = np.zeros((4, 1, 2, 2))
    minivit.gradcheck(lambda a, b: loss(x, (a, b), y),
                      [minivit.tensor(r.standard_normal((4, 5)), requires_grad=True),
                       minivit.tensor(r.standard_normal((4, 5)), requires_grad=True)])


def test_soft_loss_is_zero_when_the_student_copies_the_teacher():
    z = np.random.default_rng(0).standard_normal((3, 4))
    kd = DistillationLoss(ce, FixedTeacher(z), kind="soft", alpha=1.0, tau=2.0)
    assert abs(float(kd(np.zeros((3, 1, 1, 1)), (minivit.tensor(z), minivit.tensor(z)), np.zeros(3, int)).data)) < 1e-12


# ------------------------------------------------------------------ the criterion for fit
def test_criterion_teacher_is_frozen_in_eval_mode_and_gets_no_gradient():
    student = tiny()
    teacher = tiny_teacher()
    teacher.train()
    crit = DistillationCriterion(teacher, kind="hard")
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    bn = teacher.bn1
    before = (bn.running_mean.copy(), int(bn.num_batches_tracked))
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    loss, logits = crit(student, (x, y), TrainConfig(label_smoothing=0.1))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    np.testing.assert_array_equal(bn.running_mean, before[0])           # eval mode: statistics untouched
    assert int(bn.num_batches_tracked) == before[1]
    z_s, z_d = student(minivit.tensor(x))
    np.testing.assert_allclose(logits.data, (z_s.data + z_d.data) / 2, rtol=1e-5, atol=1e-6)
    # the loss is DistillationLoss with the run's label smoothing on the class head
    want = DistillationLoss(lambda a, b: F.cross_entropy(a, b, label_smoothing=0.1), teacher, "hard")(
        x, (z_s, z_d), y)
    np.testing.assert_allclose(float(loss.data), float(want.data), rtol=1e-5)
    assert "hard" in repr(crit)


def test_criterion_with_mixed_soft_labels():
    student, teacher = tiny(), tiny_teacher()
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    y = np.full((4, 3), 1 / 3, np.float32)                               # mixup/cutmix labels
    loss, _ = DistillationCriterion(teacher, kind="soft", tau=2.0)(student, (x, y), TrainConfig())
    assert np.isfinite(float(loss.data))


def test_kind_none_trains_the_class_head_only():
    student = tiny()
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    loss, _ = DistillationCriterion(None, kind="none")(student, (x, np.array([0, 1, 2, 0])), TrainConfig())
    loss.backward()
    assert student.head.weight.grad is not None and student.head_dist.weight.grad is None


def test_loss_falls_on_a_fixed_batch_with_distillation():
    minivit.manual_seed(0)
    student, teacher = tiny(num_classes=4), tiny_teacher(num_classes=4)
    crit = DistillationCriterion(teacher, kind="hard")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, 16)
    opt = optim.AdamW(student.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        loss, _ = crit(student, (x, y), TrainConfig(label_smoothing=0.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    assert losses[-1] < 0.5 * losses[0]
    student.eval()
    y_t = teacher(minivit.tensor(x)).data.argmax(1)
    z_s, z_d = student.forward_heads(minivit.tensor(x))
    assert (z_d.data.argmax(1) == y_t).mean() > 0.9           # the distillation head learned the teacher
    assert (z_s.data.argmax(1) == y).mean() > 0.9             # the class head learned the labels


def small_sets(n=32, size=8, k=3, seed=0):
    r = np.random.default_rng(seed)
    mk = lambda: ArrayDataset(r.random((n, 1, size, size), dtype=np.float32), r.integers(0, k, n))  # noqa: E731
    return mk(), mk()


def test_fit_with_distillation_criterion_and_a_teacher_run(tmp_path):
    train, test = small_sets()
    cfg = TrainConfig(model="cnn_fmnist", epochs=1, batch_size=16, model_kwargs=dict(
        layers=(1, 1), widths=(4, 8), stem_width=4, num_classes=3))
    fit(cfg, train_set=train, test_set=test, out_dir=tmp_path / "teacher", progress=False, log=lambda *a: None)
    teacher = load_teacher(tmp_path / "teacher", num_classes=3)            # the run folder
    assert isinstance(teacher, ResNetCNN) and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher2 = load_teacher(tmp_path / "teacher" / "checkpoint.npz")      # or the checkpoint file
    for a, b in zip(teacher.state_dict().values(), teacher2.state_dict().values()):
        np.testing.assert_array_equal(a, b)
    for kind in ("hard", "soft"):
        res = fit(TrainConfig(epochs=2, batch_size=16), model=tiny(), train_set=train, test_set=test,
                  criterion=DistillationCriterion(teacher, kind=kind), progress=False, log=lambda *a: None)
        assert len(res["history"]) == 2 and 0 <= res["final"]["acc"] <= 1
        assert np.isfinite(res["history"][-1]["train_loss"])


# ------------------------------------------------------------------ bad input
def test_load_teacher_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher .*does not exist"):
        load_teacher(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError, match="folder without checkpoint.npz"):
        load_teacher(tmp_path)
    bad = tmp_path / "notes.txt"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="teacher: .*not a minivit checkpoint"):
        load_teacher(bad)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a minivit checkpoint"):
        load_teacher(plain)
    t = tiny_teacher(num_classes=3)
    io.save(t, tmp_path / "anon.npz")                                    # no config recorded
    with pytest.raises(ValueError, match="does not record its model"):
        load_teacher(tmp_path / "anon.npz")
    cfg = {"model": "cnn_fmnist", "model_kwargs": {"layers": [1, 1], "widths": [4, 8], "stem_width": 4,
                                                 "num_classes": 3}}
    io.save(t, tmp_path / "t3.npz", config=cfg)
    assert load_teacher(tmp_path / "t3.npz", num_classes=3).num_classes == 3
    with pytest.raises(ValueError, match="predicts 3 classes but the student predicts 10"):
        load_teacher(tmp_path / "t3.npz", num_classes=10)
    io.save(t, tmp_path / "wrong.npz", config={"model": "cnn_fmnist"})  # weights of another shape
    with pytest.raises(ValueError, match="does not fit model 'cnn_fmnist'"):
        load_teacher(tmp_path / "wrong.npz")


def test_bad_loss_arguments_raise_clearly():
    t = tiny_teacher()
    with pytest.raises(ValueError, match="kind must be one of 'hard', 'soft', 'none', got 'medium'"):
        DistillationCriterion(t, kind="medium")
    with pytest.raises(ValueError, match=r"alpha .* in \[0, 1\], got 1.5"):
        DistillationLoss(ce, t, alpha=1.5)
    with pytest.raises(ValueError, match="tau .* > 0, got 0"):
        DistillationLoss(ce, t, tau=0)
    with pytest.raises(ValueError, match="needs a teacher, got teacher=None"):
        DistillationCriterion(None, kind="soft")


def test_teacher_and_student_class_counts_must_match():
    student = tiny(num_classes=3)
    teacher = tiny_teacher(num_classes=10)
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="teacher predicts 10 classes but the student .* predicts 3"):
        DistillationCriterion(teacher)(student, (x, np.array([0, 1])), TrainConfig())
    with pytest.raises(ValueError, match=r"teacher's logits have shape \(2, 10\) .* \(2, 3\)"):
        DistillationLoss(ce, teacher, "soft")(x, student(minivit.tensor(x)), np.array([0, 1]))


def test_distillation_needs_a_distilled_student():
    vit = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=1, num_heads=2)
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="needs the student's two outputs"):
        DistillationCriterion(tiny_teacher())(vit, (x, np.array([0, 1])), TrainConfig())
    # without a teacher a plain ViT trains as usual
    loss, _ = DistillationCriterion(None, kind="none")(vit, (x, np.array([0, 1])), TrainConfig())
    assert np.isfinite(float(loss.data))


def test_teacher_in_training_mode_returning_two_heads_is_an_error():
    teacher = tiny()                                  # a distilled model as teacher, left in training mode
    with pytest.raises(TypeError, match="teacher.eval"):
        DistillationLoss(ce, teacher, "hard")(np.zeros((2, 1, 8, 8), np.float32),
                                              tiny()(minivit.tensor(np.zeros((2, 1, 8, 8), np.float32))),
                                              np.array([0, 1]))


def test_bad_model_configurations_raise_clearly():
    with pytest.raises(ValueError, match="patch_size=5 does not divide img_size=28"):
        models.create("deit_fmnist", patch_size=5)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        models.create("deit_fmnist", num_heads=5)
    with pytest.raises(ValueError, match="expects .*1 input channel"):
        models.create("deit_fmnist")(minivit.tensor(np.zeros((2, 3, 28, 28), np.float32)))
