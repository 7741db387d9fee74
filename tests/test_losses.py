"""Loss values: against an independent loop implementation of eq. 5 / eq. 12, and against
deel-torchlip under the documented parameter mapping."""

from __future__ import annotations

import pytest
import torch

from lipbench import losses

SCORES = torch.tensor([0.3, -1.2, 2.0, 0.1, -0.4, 0.9, -2.5, 1.1])
BINARY_LABELS = torch.tensor([1, 0, 1, 0, 0, 1, 0, 1])
LOGITS = torch.tensor(
    [[0.5, -0.2, 0.1], [-1.0, 0.7, 0.3], [0.2, 0.2, -0.9], [1.5, -0.5, 0.0], [-0.3, -0.1, 0.8], [0.0, 1.1, -0.6]]
)
CLASS_LABELS = torch.tensor([0, 1, 2, 0, 2, 1])


def loop_hkr_binary(scores, labels, alpha, margin):
    """Eq. 5 written out: E_{P-}[f] - E_{P+}[f] + alpha * E[(m - y f)+]."""
    positives = [float(s) for s, l in zip(scores, labels) if l == 1]
    negatives = [float(s) for s, l in zip(scores, labels) if l == 0]
    kr = sum(negatives) / len(negatives) - sum(positives) / len(positives)
    hinge = sum(max(0.0, margin - (1 if l == 1 else -1) * float(s)) for s, l in zip(scores, labels)) / len(scores)
    return kr + alpha * hinge


def loop_hkr_multiclass(logits, labels, alpha, margin):
    """Eq. 12 written out: sum over classes of the one-vs-all binary hKR term."""
    total = 0.0
    for k in range(logits.shape[1]):
        total += loop_hkr_binary(logits[:, k], (labels == k).long(), alpha, margin)
    return total


@pytest.mark.parametrize("alpha, margin", [(50.0, 1.0), (10.0, 2.12), (0.0, 1.0)])
def test_binary_hkr_matches_eq_5(alpha, margin):
    expected = loop_hkr_binary(SCORES, BINARY_LABELS, alpha, margin)
    assert float(losses.hkr_loss(SCORES, BINARY_LABELS, alpha, margin)) == pytest.approx(expected, rel=1e-6)
    assert float(losses.hkr_loss(SCORES[:, None], BINARY_LABELS, alpha, margin)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("alpha, margin", [(50.0, 1.0), (10.0, 2.12)])
def test_multiclass_hkr_matches_eq_12(alpha, margin):
    expected = loop_hkr_multiclass(LOGITS, CLASS_LABELS, alpha, margin)
    assert float(losses.hkr_multiclass_loss(LOGITS, CLASS_LABELS, alpha, margin)) == pytest.approx(expected, rel=1e-6)


def test_kr_is_the_difference_of_class_means():
    assert float(losses.kantorovich_rubinstein(SCORES, BINARY_LABELS)) == pytest.approx(
        float(SCORES[BINARY_LABELS == 1].mean() - SCORES[BINARY_LABELS == 0].mean())
    )
    assert float(losses.kr_loss(SCORES, BINARY_LABELS)) == pytest.approx(loop_hkr_binary(SCORES, BINARY_LABELS, 0, 1))


def test_multiclass_hinge_and_cross_entropy():
    expected = 0.0
    for row, label in zip(LOGITS, CLASS_LABELS):
        expected += sum(max(0.0, 1.0 - float(row[label] - row[j])) for j in range(3) if j != label)
    assert float(losses.multiclass_hinge_loss(LOGITS, CLASS_LABELS, 1.0)) == pytest.approx(expected / len(LOGITS))
    assert float(losses.multiclass_hinge_loss(LOGITS, CLASS_LABELS)) == pytest.approx(
        3 * float(torch.nn.functional.multi_margin_loss(LOGITS, CLASS_LABELS, margin=1.0))
    )
    assert float(losses.cross_entropy_loss(LOGITS, CLASS_LABELS, temperature=4.0)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(4 * LOGITS, CLASS_LABELS))
    )
    assert float(losses.cross_entropy_loss(SCORES, BINARY_LABELS)) == pytest.approx(
        float(torch.nn.functional.binary_cross_entropy_with_logits(SCORES, BINARY_LABELS.float()))
    )


@pytest.mark.parametrize("alpha, margin", [(50.0, 1.0), (5.0, 2.12)])
def test_binary_hkr_matches_deel_torchlip_under_the_mapping(alpha, margin):
    torchlip = pytest.importorskip("deel.torchlip")
    torch.manual_seed(0)
    scores, labels = torch.randn(64), torch.randint(0, 2, (64,))
    theirs = torchlip.HKRLoss(alpha=alpha / (1 + alpha), min_margin=2 * margin)(scores[:, None], labels[:, None].float())
    ours = losses.hkr_loss(scores, labels, alpha, margin) / (1 + alpha)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


@pytest.mark.parametrize("alpha, margin", [(50.0, 1.0), (5.0, 2.12)])
def test_multiclass_hkr_matches_deel_torchlip_under_the_mapping(alpha, margin):
    torchlip = pytest.importorskip("deel.torchlip")
    torch.manual_seed(1)
    classes = 10
    logits, labels = torch.randn(64, classes), torch.randint(0, classes, (64,))
    one_hot = torch.nn.functional.one_hot(labels, classes).float()
    theirs = torchlip.HKRMulticlassLoss(alpha=alpha / (1 + alpha), min_margin=2 * margin)(logits, one_hot)
    ours = losses.hkr_multiclass_loss(logits, labels, alpha, margin, positive_hinge_weight=classes - 1)
    assert float(ours / (classes * (1 + alpha))) == pytest.approx(float(theirs), rel=1e-5)


def test_absent_class_contributes_zero_to_the_kr_term():
    only_positive = torch.ones(4, dtype=torch.long)
    scores = torch.tensor([0.5, 1.0, 1.5, 2.0])
    assert float(losses.kr_loss(scores, only_positive)) == pytest.approx(-1.25)


def test_bad_labels_and_parameters_are_rejected():
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        losses.hkr_loss(SCORES, BINARY_LABELS * 2 - 1)  # signs are not silently remapped
    with pytest.raises(ValueError, match="class indices"):
        losses.hkr_multiclass_loss(LOGITS, CLASS_LABELS + 1)
    with pytest.raises(ValueError, match="unknown loss 'focal'; known losses: cross_entropy, hinge, hkr, kr"):
        losses.make_loss("focal", binary=False)
    with pytest.raises(ValueError, match="does not take temperature"):
        losses.make_loss("hkr", binary=False, temperature=2.0)
    with pytest.raises(ValueError, match="no multiclass form"):
        losses.make_loss("kr", binary=False)
    with pytest.raises(ValueError, match="must be a number"):
        losses.make_loss("hkr", binary=True, alpha="50")
    loss = losses.make_loss("hkr", binary=False, alpha=50.0, margin=1.0)
    assert float(loss(LOGITS, CLASS_LABELS)) == pytest.approx(loop_hkr_multiclass(LOGITS, CLASS_LABELS, 50.0, 1.0), rel=1e-6)


def _loss_calls():
    """Every loss function on the module's fixed scores/logits, as ``call(**extra)``."""
    return {
        "hkr binary": lambda **r: losses.hkr_loss(SCORES, BINARY_LABELS, 50.0, 0.3, **r),
        "kr": lambda **r: losses.kr_loss(SCORES, BINARY_LABELS, **r),
        "kantorovich_rubinstein": lambda **r: losses.kantorovich_rubinstein(SCORES[:, None], BINARY_LABELS, **r),
        "hinge binary": lambda **r: losses.hinge_loss(SCORES, BINARY_LABELS, 0.7, **r),
        "cross_entropy binary": lambda **r: losses.cross_entropy_loss(SCORES, BINARY_LABELS, 3.0, **r),
        "hkr multiclass": lambda **r: losses.hkr_multiclass_loss(LOGITS, CLASS_LABELS, 50.0, 0.3, **r),
        "hkr multiclass w=K-1": lambda **r: losses.hkr_multiclass_loss(LOGITS, CLASS_LABELS, 5.0, 1.0, 2.0, **r),
        "hinge multiclass": lambda **r: losses.multiclass_hinge_loss(LOGITS, CLASS_LABELS, 0.7, **r),
        "cross_entropy multiclass": lambda **r: losses.cross_entropy_loss(LOGITS, CLASS_LABELS, 3.0, **r),
    }


@pytest.mark.parametrize("name", list(_loss_calls()))
def test_the_reduce_path_with_one_process_gives_exactly_todays_values(name):
    call = _loss_calls()[name]
    assert torch.equal(call(reduce=lambda counts: counts), call())


@pytest.mark.parametrize("name", list(_loss_calls()))
def test_reduce_sums_only_detached_counts_and_normalises_with_them(name):
    """A reducer that doubles the counts stands for a second rank with an identical shard:
    the whole batch is this one twice, whose loss is this batch's, so each of the two
    equal pieces is half of it."""
    seen = []

    def two_identical_ranks(counts):
        seen.append(counts)
        return 2 * counts

    call = _loss_calls()[name]
    assert float(call(reduce=two_identical_ranks)) == pytest.approx(float(call()) / 2, rel=1e-6)
    assert len(seen) == 1 and not seen[0].requires_grad  # one collective per loss call, no graph through it


def test_make_loss_passes_reduce_and_keeps_its_checks():
    calls = []

    def reduce(counts):
        calls.append(counts.shape)
        return counts

    loss = losses.make_loss("hkr", binary=False, reduce=reduce, alpha=50.0, margin=1.0)
    plain = losses.make_loss("hkr", binary=False, alpha=50.0, margin=1.0)
    assert torch.equal(loss(LOGITS, CLASS_LABELS), plain(LOGITS, CLASS_LABELS))
    assert calls == [torch.Size([2, 3])]  # positive and negative counts of the 3 classes, in one call
    with pytest.raises(ValueError, match="does not take temperature"):
        losses.make_loss("hkr", binary=False, reduce=reduce, temperature=2.0)
