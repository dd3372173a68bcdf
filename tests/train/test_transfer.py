"""T3D supervision transfer: pair construction, the networks, the saved student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raylab.models import build_model
from raylab.models.t3d import DenseNet2D, densenet2d
from raylab.train.transfer import (
    OTHER_SCENE,
    POSITIVE,
    SAME_SCENE,
    CorrespondenceHead,
    FrameTeacher,
    TransferOptions,
    build_teacher,
    build_transfer_net,
    calibrate_teacher,
    load_teacher_weights,
    pair_indices,
    scene_of,
    student_state,
    teacher_indices,
    transfer_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def pairs(ids: list[str], seed: int = 3, hard: float = 0.5) -> list[tuple[str, str, int]]:
    """(student video, partner video, kind) of every pair :func:`pair_indices` makes."""
    student, partner, kind = pair_indices(ids, np.random.default_rng(seed), hard)
    return [(ids[s], ids[p], int(k)) for s, p, k in zip(student, partner, kind, strict=True)]


def test_pairs_half_positive_negatives_from_other_videos_without_labels():
    ids = ["a", "b", "a", "c", "d"]  # two clips of video a
    student, partner, kind = pair_indices(ids, np.random.default_rng(3))
    assert len(kind) == 2 * len(ids) and (kind == POSITIVE).sum() == len(ids)
    for s, p, k in zip(student, partner, kind, strict=True):
        if k == POSITIVE:
            assert s == p  # frames of the same clip
        else:
            assert ids[s] != ids[p]  # never the clip's own video
    # Every clip appears once as positive and once as negative.
    assert sorted(student.tolist()) == sorted(list(range(len(ids))) * 2)
    # The same generator state gives the same pairs, another generally others; a batch of
    # one video gives none.
    assert pairs(ids) == pairs(ids)
    assert any(pairs(ids, seed) != pairs(ids) for seed in range(5))
    assert pair_indices(["a", "a"], np.random.default_rng(0))[0].size == 0
    assert list(teacher_indices(32, 4)) == [0, 10, 21, 31]
    assert list(teacher_indices(16, 1)) == [0]


def test_hard_negatives_come_from_the_same_scene_when_the_batch_has_one():
    ids = [f"Grow/v_Grow_g{g:02d}_c{c:02d}" for g in (1, 2, 3) for c in (1, 2, 3)]
    ids.append("Grow/v_Grow_g04_c01")  # the only clip of its scene: no hard negative for it
    assert scene_of(ids[0]) == "g01" and scene_of("Shrink/v_Shrink_g01_c04") == "g01"
    assert scene_of("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0") is None

    def negatives(hard: float, seed: int) -> list[tuple[str, str, int]]:
        return [p for p in pairs(ids, seed, hard) if p[2] != POSITIVE]

    for seed in range(5):
        all_hard = negatives(1.0, seed)
        assert len(all_hard) == len(ids)
        for vid, tvid, kind in all_hard:
            assert vid != tvid
            assert kind == (SAME_SCENE if scene_of(vid) == scene_of(tvid) else OTHER_SCENE)
            assert kind == SAME_SCENE or vid.endswith("g04_c01")
    # A negative drawn from any other video is of the same scene 2 times in 9 here (never for
    # the g04 clip): about 20 x 9 x 2/9 = 40 over 20 batches; with half of them hard, 20 x 9 x
    # (1/2 + 1/2 x 2/9) = 110.
    for hard, expected in ((0.0, 40), (0.5, 110)):
        count = sum(k == SAME_SCENE for seed in range(20) for *_, k in negatives(hard, seed))
        assert abs(count - expected) < 30, (hard, count)
    # Ids without a scene: every negative is of another (unknown) scene.
    assert {k for *_, k in pairs(["a", "b", "c"], 0, 1.0)} == {POSITIVE, OTHER_SCENE}
    with pytest.raises(ValueError, match="hard_negatives"):
        pair_indices(["a", "b"], np.random.default_rng(0), 1.5)
    with pytest.raises(ValueError, match="hard_negatives"):
        TransferOptions(hard_negatives=1.5)


def test_teacher_and_head_shapes():
    teacher = FrameTeacher(densenet2d(121, width=0.0625))
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.net.training  # frozen: stays in eval mode
    feats = teacher(torch.randn(2, 4, 3, 32, 32))
    assert feats.shape == (2, teacher.out_features) == (2, 64)
    head = CorrespondenceHead(64, 48)
    assert [m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear)] == [512, 128, 2]
    assert head(torch.randn(5, 64), torch.randn(5, 48)).shape == (5, 2)


def test_teacher_loads_torchvision_layout_including_old_keys(tmp_path):
    ref = densenet2d(121, width=0.0625)
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_()
    # Old torchvision files name dense-layer modules "norm.1", "conv.2", ...
    old = {
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
        for k, v in ref.state_dict().items()
    }
    torch.save(old, tmp_path / "densenet.pt")
    net = build_teacher(TransferOptions(teacher_weights=str(tmp_path / "densenet.pt")), 0.0625).net
    assert isinstance(net, DenseNet2D)
    for k, v in ref.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    with pytest.raises(ValueError, match="do not fit"):
        load_teacher_weights(densenet2d(121, width=0.125), tmp_path / "densenet.pt")


@pytest.mark.parametrize("student", ["t3d121", "densenet3d121"])
def test_saved_student_loads_into_build_model(student, tmp_path):
    config = transfer_config(model=student, model_options={"width": 0.0625}, classes=("a", "b"))
    net = build_transfer_net(config, TransferOptions(), teacher_features=64)
    x = torch.randn(2, 3, 29, 29, 29)
    net.eval()
    assert net(x, torch.randn(2, 64)).shape == (2, 2)
    torch.save(student_state(net), tmp_path / "student.pt")
    state = torch.load(tmp_path / "student.pt", weights_only=True)
    assert not any(k.startswith("classifier.") for k in state)
    model = build_model(student, 5, width=0.0625).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) == {"classifier.weight", "classifier.bias"} and not unexpected
    # The loaded backbone gives the student's features exactly; forward is unchanged.
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), net.student.forward_features(x))
        logits = model.classifier(model.forward_features(x))
        assert torch.allclose(model(x), logits)


def test_random_teacher_is_calibrated_on_frames():
    torch.manual_seed(0)
    net = densenet2d(121, width=0.0625).eval()
    frames = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    x = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - 0.45) / 0.225
    with torch.no_grad():
        before = net.forward_features(x).abs().mean()
        calibrate_teacher(net, frames)
        after = net.forward_features(x).abs().mean()
    assert not net.training
    assert before > 100 and 0.01 < after < 10
