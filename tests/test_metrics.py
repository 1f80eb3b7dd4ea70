"""Metrics on examples small enough to compute by hand."""

import math

import numpy as np
import pytest

from ml_assets import metrics


def test_auc_by_hand():
    # pairs (default, non-default): (0.9,0.1) win, (0.9,0.4) win, (0.35,0.1) win, (0.35,0.4) loss
    assert metrics.auc([1, 0, 1, 0], [0.9, 0.1, 0.35, 0.4]) == pytest.approx(3 / 4)
    assert metrics.gini([1, 0, 1, 0], [0.9, 0.1, 0.35, 0.4]) == pytest.approx(0.5)


def test_auc_counts_ties_half():
    assert metrics.auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert metrics.auc([1, 1, 0], [0.7, 0.5, 0.5]) == pytest.approx((1 + 0.5) / 2)


def test_auc_needs_both_classes():
    assert metrics.auc([1, 1], [0.2, 0.3]) is None and metrics.ks([0, 0], [0.1, 0.2]) is None


def test_auc_matches_the_pairwise_definition_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300), 2)  # with ties
    pos, neg = p[y == 1], p[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) \
        / (len(pos) * len(neg))
    assert metrics.auc(y, p) == pytest.approx(pairwise, abs=1e-12)


def test_ks_by_hand():
    # thresholds from the top: after 0.9 tpr 1/2 fpr 0; after 0.4 tpr 1/2 fpr 1/2;
    # after 0.35 tpr 1 fpr 1/2 -> max gap 1/2
    assert metrics.ks([1, 0, 1, 0], [0.9, 0.1, 0.35, 0.4]) == pytest.approx(0.5)
    assert metrics.ks([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == pytest.approx(1.0)


def test_log_loss_and_brier_by_hand():
    assert metrics.log_loss([1, 0], [0.8, 0.2]) == pytest.approx(-math.log(0.8))
    assert metrics.brier([1, 0], [0.8, 0.4]) == pytest.approx((0.04 + 0.16) / 2)


def test_average_ranks_match_scipy():
    from scipy.stats import rankdata

    rng = np.random.default_rng(3)
    values = np.round(rng.random(500), 2)
    assert np.array_equal(metrics.average_ranks(values), rankdata(values))
