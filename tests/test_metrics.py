"""Tests for hfcn_bench.metrics: hand-computed examples, scikit-learn cross-checks, degenerate
inputs and the case-level bootstrap."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfcn_bench import metrics as M
from hfcn_bench.metrics import UndefinedMetricError

# scikit-learn's doc example: one benign sample (0.4) outranks one malignant one (0.35).
Y4 = np.array([0, 0, 1, 1])
P4 = np.array([0.1, 0.4, 0.35, 0.8])


# --------------------------------------------------------------------------------------------
# hand-computed values
# --------------------------------------------------------------------------------------------


def test_binary_metrics_hand_example():
    m = M.binary_metrics(Y4, P4, threshold=0.5)
    # Only 0.8 is called malignant: TP=1, FP=0, FN=1, TN=2.
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (2, 0, 1, 1)
    assert m["confusion_matrix"] == [[2, 0], [1, 1]]
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == m["sensitivity"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1.0)
    assert (m["support"], m["n_positive"], m["n_negative"]) == (4, 2, 2)
    assert m["zero_division"] == []


def test_threshold_is_inclusive():
    # prob == threshold counts as malignant, the convention of roc_curve's thresholds.
    m = M.binary_metrics([0, 1], [0.5, 0.5], threshold=0.5)
    assert (m["tp"], m["fp"]) == (1, 1)


def test_curves_hand_example():
    precision, recall, thr = M.pr_curve(Y4, P4)
    np.testing.assert_allclose(precision, [0.5, 2 / 3, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(recall, [1.0, 1.0, 0.5, 0.5, 0.0])
    np.testing.assert_array_equal(thr, [0.1, 0.35, 0.4, 0.8])
    fpr, tpr, thr = M.roc_curve(Y4, P4)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_array_equal(thr, [np.inf, 0.8, 0.4, 0.35, 0.1])
    assert M.roc_auc(Y4, P4) == pytest.approx(0.75)
    # AP = 0.5 * 1 (recall 0 -> 0.5 at precision 1) + 0.5 * 2/3 (-> 1.0 at precision 2/3).
    assert M.average_precision(Y4, P4) == pytest.approx(0.5 + 1 / 3)


@pytest.mark.parametrize(
    "y, p, auc",
    [
        ([0, 1], [0.5, 0.5], 0.5),
        ([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3], 0.5),
        # pairs: (0.5 vs 0.2) wins, (0.5 vs 0.5) ties -> (1 + 0.5) / 2
        ([0, 0, 1], [0.2, 0.5, 0.5], 0.75),
        ([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1], 1.0),
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),
    ],
)
def test_auc_ties_as_mann_whitney(y, p, auc):
    assert M.roc_auc(y, p) == pytest.approx(auc)


def test_sensitivity_at_specificity_hand_example():
    # ROC points (fpr, tpr): (0,0) (0,.5) (.5,.5) (.5,1) (1,1)
    assert M.sensitivity_at_specificity(Y4, P4, 0.9) == pytest.approx(0.5)
    assert M.sensitivity_at_specificity(Y4, P4, 0.5) == pytest.approx(1.0)
    assert M.sensitivity_at_specificity(Y4, P4, 0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        M.sensitivity_at_specificity(Y4, P4, 1.5)


def test_choose_threshold_rules():
    # Youden J per threshold (0.8, 0.4, 0.35, 0.1): .5, 0, .5, 0 -> first max, 0.8; the
    # returned threshold sits half-way to the next lower score.
    assert M.choose_threshold(Y4, P4, "youden") == pytest.approx(0.6)
    # F1 per threshold: 2/3, 1/2, 4/5, 2/3 -> 0.35, half-way to 0.1.
    t = M.choose_threshold(Y4, P4, "f1")
    assert t == pytest.approx(0.225)
    assert M.binary_metrics(Y4, P4, t)["f1"] == pytest.approx(0.8)
    assert M.choose_threshold(Y4, P4, "fixed", fixed=0.3) == 0.3
    with pytest.raises(ValueError):
        M.choose_threshold(Y4, P4, "argmax")


def test_choose_threshold_all_positive_optimum_returns_lowest_score():
    # Every sample malignant: F1 is best when everything is called malignant.
    assert M.choose_threshold([1, 1, 1], [0.2, 0.6, 0.9], "f1") == pytest.approx(0.2)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_chosen_threshold_attains_the_optimum(data):
    n = data.draw(st.integers(2, 30))
    y = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    p = np.array(data.draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))) / 6.0
    if y.min() == y.max():
        y[0] = 1 - y[0]
    t = M.choose_threshold(y, p, "f1")
    best_f1 = max(M.binary_metrics(y, p, u)["f1"] for u in np.unique(p))
    assert M.binary_metrics(y, p, t)["f1"] == pytest.approx(best_f1)
    t = M.choose_threshold(y, p, "youden")
    j = lambda m: m["sensitivity"] + m["specificity"] - 1  # noqa: E731
    best_j = max(j(M.binary_metrics(y, p, u)) for u in np.unique(p))
    assert j(M.binary_metrics(y, p, t)) == pytest.approx(best_j)


def test_majority_baseline_ddti_like():
    # ~82% malignant, as DDTI under the TI-RADS rule: "always malignant" gets F1 ~0.90.
    y_train = np.r_[np.ones(82), np.zeros(18)]
    y_test = np.r_[np.ones(41), np.zeros(9)]
    b = M.majority_baseline(y_train, y_test)
    assert b["majority_class"] == 1
    assert b["train_positive_rate"] == pytest.approx(0.82)
    assert b["accuracy"] == pytest.approx(0.82)
    assert b["recall"] == 1.0 and b["specificity"] == 0.0
    assert b["f1"] == pytest.approx(2 * 0.82 / 1.82)
    assert b["f1"] > 0.9
    assert b["auc"] == 0.5
    assert b["pr_auc"] == pytest.approx(0.82)


def test_majority_baseline_benign_majority_and_single_class_test():
    b = M.majority_baseline([0, 0, 1], [1, 1])
    assert b["majority_class"] == 0
    assert b["f1"] == 0.0 and b["precision"] == 0.0
    assert "precision" in b["zero_division"]
    assert b["auc"] is None  # a one-class test set has no AUC
    assert b["pr_auc"] == 1.0


def test_constant_score_baselines_computed():
    y = np.r_[np.ones(7), np.zeros(3)]
    assert M.roc_auc(y, np.full(10, 0.3)) == 0.5
    assert M.average_precision(y, np.full(10, 0.3)) == pytest.approx(0.7)


# --------------------------------------------------------------------------------------------
# degenerate inputs
# --------------------------------------------------------------------------------------------


def test_no_predicted_positives_gives_zero_precision_with_note():
    m = M.binary_metrics([0, 1, 1], [0.1, 0.2, 0.3], threshold=0.9)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["zero_division"] == ["precision"]
    assert m["specificity"] == 1.0


def test_single_class_labels():
    m = M.binary_metrics([0, 0], [0.1, 0.2])
    assert m["accuracy"] == 1.0
    assert set(m["zero_division"]) == {"precision", "recall", "f1"}
    m = M.binary_metrics([1, 1], [0.7, 0.2])
    assert m["specificity"] == 0.0 and "specificity" in m["zero_division"]
    for fn in (M.roc_auc, M.roc_curve, M.sensitivity_at_specificity):
        with pytest.raises(UndefinedMetricError):
            fn([1, 1], [0.7, 0.2])
        with pytest.raises(UndefinedMetricError):
            fn([0, 0], [0.7, 0.2])
    for fn in (M.average_precision, M.pr_curve):
        with pytest.raises(UndefinedMetricError):
            fn([0, 0], [0.7, 0.2])
    # Without benign samples every threshold has precision 1: AP is 1, not undefined.
    assert M.average_precision([1, 1], [0.7, 0.2]) == 1.0
    with pytest.raises(UndefinedMetricError):
        M.choose_threshold([1, 1], [0.7, 0.2], "youden")
    with pytest.raises(UndefinedMetricError):
        M.choose_threshold([0, 0], [0.7, 0.2], "f1")


def test_undefined_metric_error_is_a_value_error():
    assert issubclass(UndefinedMetricError, ValueError)


@pytest.mark.parametrize(
    "y, p",
    [
        ([0, 2], [0.1, 0.2]),  # not a binary label
        (["a", "b"], [0.1, 0.2]),
        ([0, 1, 1], [0.1, 0.2]),  # length mismatch
        ([0, 1], [0.1, np.nan]),
        ([[0, 1]], [[0.1, 0.2]]),  # 2-D
        ([], []),
    ],
)
def test_bad_inputs_raise(y, p):
    with pytest.raises(ValueError):
        M.binary_metrics(y, p)
    with pytest.raises(ValueError):
        M.roc_auc(y, p)


def test_boolean_labels_accepted():
    assert M.roc_auc(np.array([False, True]), [0.1, 0.9]) == 1.0


# --------------------------------------------------------------------------------------------
# scikit-learn cross-checks
# --------------------------------------------------------------------------------------------


def _random_scores(data):
    n = data.draw(st.integers(2, 60), label="n")
    y = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n), label="y"))
    # Scores on a coarse grid, so ties between and within classes are common.
    levels = data.draw(st.integers(2, 12), label="levels")
    p = np.array(data.draw(st.lists(st.integers(0, levels), min_size=n, max_size=n), label="p"))
    return y, p / levels


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_against_sklearn_ranking(data):
    skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is only a test cross-check")
    y, p = _random_scores(data)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    assert M.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert M.average_precision(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    fpr, tpr, thr = M.roc_curve(y, p)
    s_fpr, s_tpr, s_thr = skm.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, s_fpr)
    np.testing.assert_allclose(tpr, s_tpr)
    np.testing.assert_array_equal(thr, s_thr)
    prec, rec, thr = M.pr_curve(y, p)
    s_prec, s_rec, s_thr = skm.precision_recall_curve(y, p)
    np.testing.assert_allclose(prec, s_prec)
    np.testing.assert_allclose(rec, s_rec)
    np.testing.assert_array_equal(thr, s_thr)
    # The rank statistic and the trapezoid under our own curve agree.
    assert M.roc_auc(y, p) == pytest.approx(np.trapezoid(tpr, fpr), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn_larger_random(seed):
    skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is only a test cross-check")
    rng = np.random.default_rng(seed)
    y = (rng.random(500) < 0.82).astype(int)
    # Rounded softmax-like scores: mostly distinct, some ties, DDTI-like imbalance.
    p = np.round(1 / (1 + np.exp(-rng.normal(1.5 * y - 0.5, 1.2))), 3)
    assert M.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert M.average_precision(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    t = M.choose_threshold(y, p, "youden")
    prec, rec, f1, _ = skm.precision_recall_fscore_support(y, (p >= t).astype(int), average="binary", zero_division=0)
    m = M.binary_metrics(y, p, t)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((prec, rec, f1))


@settings(max_examples=15, deadline=None)
@given(st.data(), st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 1.1]))
def test_against_sklearn_confusion(data, threshold):
    skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is only a test cross-check")
    y, p = _random_scores(data)
    pred = (p >= threshold).astype(int)
    m = M.binary_metrics(y, p, threshold)
    cm = skm.confusion_matrix(y, pred, labels=[0, 1])
    assert m["confusion_matrix"] == cm.tolist()
    assert [m["tn"], m["fp"], m["fn"], m["tp"]] == cm.ravel().tolist()
    prec, rec, f1, _ = skm.precision_recall_fscore_support(
        y, pred, labels=[0, 1], pos_label=1, average="binary", zero_division=0
    )
    assert m["precision"] == pytest.approx(prec)
    assert m["recall"] == pytest.approx(rec)
    assert m["f1"] == pytest.approx(f1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    spec = skm.recall_score(y, pred, pos_label=0, zero_division=0)
    assert m["specificity"] == pytest.approx(spec)


@settings(max_examples=25, deadline=None)
@given(st.data(), st.sampled_from([0.5, 0.8, 0.9, 0.95]))
def test_sensitivity_at_specificity_brute_force(data, spec):
    y, p = _random_scores(data)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    best = 0.0
    for t in np.r_[np.unique(p), np.inf]:
        m = M.binary_metrics(y, p, t)
        if m["specificity"] >= spec:
            best = max(best, m["sensitivity"])
    assert M.sensitivity_at_specificity(y, p, spec) == pytest.approx(best)


# --------------------------------------------------------------------------------------------
# per-case aggregation
# --------------------------------------------------------------------------------------------


def test_aggregate_by_case():
    ids = np.array(["c2", "c1", "c2", "c3", "c1"])
    prob = np.array([0.2, 0.9, 0.6, 0.1, 0.5])
    y = np.array([1, 0, 1, 0, 0])
    cases, p, yc = M.aggregate_by_case(ids, prob, y, how="mean")
    assert cases.tolist() == ["c1", "c2", "c3"]
    np.testing.assert_allclose(p, [0.7, 0.4, 0.1])
    assert yc.tolist() == [0, 1, 0]
    _, p, _ = M.aggregate_by_case(ids, prob, y, how="max")
    np.testing.assert_allclose(p, [0.9, 0.6, 0.1])
    with pytest.raises(ValueError):
        M.aggregate_by_case(ids, prob, y, how="median")


def test_aggregate_by_case_rejects_mixed_labels():
    with pytest.raises(ValueError, match="'b'"):
        M.aggregate_by_case(["a", "b", "b"], [0.1, 0.2, 0.3], [0, 0, 1])


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------


def _clustered(n_cases=20, rois_per_case=25, seed=0):
    """Cases whose ROIs share one label and (nearly) one score: strongly correlated samples."""
    rng = np.random.default_rng(seed)
    y_case = np.arange(n_cases) % 2
    p_case = np.clip(0.5 + 0.25 * (2 * y_case - 1) + rng.normal(0, 0.3, n_cases), 0, 1)
    case_ids = np.repeat(np.arange(n_cases), rois_per_case)
    prob = p_case[case_ids] + rng.normal(0, 1e-3, case_ids.size)
    return y_case[case_ids], prob, case_ids


def test_bootstrap_deterministic_and_contains_point():
    y, p, cases = _clustered()
    a = M.bootstrap_ci(y, p, cases, M.roc_auc, n_boot=300, seed=7)
    b = M.bootstrap_ci(y, p, cases, M.roc_auc, n_boot=300, seed=7)
    c = M.bootstrap_ci(y, p, cases, M.roc_auc, n_boot=300, seed=8)
    assert a == b
    assert a != c
    point, low, high = a
    assert point == M.roc_auc(y, p)
    assert low <= point <= high
    assert all(isinstance(v, float) for v in a)


def test_bootstrap_by_case_is_wider_than_by_roi():
    # 20 cases x 25 near-identical ROIs carry the evidence of ~20 samples, not 500; treating
    # ROIs as independent gives a far narrower (falsely confident) interval.
    y, p, cases = _clustered()
    acc = lambda yb, pb: M.binary_metrics(yb, pb, 0.5)["accuracy"]  # noqa: E731
    _, lo_c, hi_c = M.bootstrap_ci(y, p, cases, acc, n_boot=400, seed=0)
    _, lo_r, hi_r = M.bootstrap_ci(y, p, np.arange(y.size), acc, n_boot=400, seed=0)
    assert (hi_c - lo_c) > 3 * (hi_r - lo_r)


def test_bootstrap_draws_whole_cases():
    # Case k has k + 1 ROIs, all scored k / 100; each resample must hold every case's ROIs a
    # whole number of times.
    sizes = np.arange(1, 9)
    cases = np.repeat(np.arange(sizes.size), sizes)
    prob = cases / 100.0
    y = cases % 2
    seen = []

    def spy(yb, pb):
        seen.append(pb.copy())
        return float(yb.mean())

    M.bootstrap_ci(y, prob, cases, spy, n_boot=50, seed=3)
    # The full-data call for the point estimate also passes the check, so all calls are tested.
    assert len(seen) == 51
    lengths = set()
    for pb in seen:
        counts = np.bincount(np.rint(pb * 100).astype(int), minlength=sizes.size)
        assert np.all(counts % sizes == 0)
        assert (counts // sizes).sum() == sizes.size  # n_cases draws per resample
        lengths.add(pb.size)
    assert len(lengths) > 1  # resample sizes vary, as they must when cases differ in size


def test_bootstrap_skips_single_class_resamples():
    # 6 cases, 1 malignant: about a third of resamples draw no malignant case.
    y = np.array([1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.95])
    r = M.evaluate(y, p, np.arange(6), threshold=0.5, n_boot=200, seed=0)
    assert 50 < r["ci"]["auc"]["n_valid"] < 200
    assert r["ci"]["accuracy"]["n_valid"] == 200
    point, low, high = M.bootstrap_ci(y, p, np.arange(6), M.roc_auc, n_boot=200, seed=0)
    assert 0.0 <= low <= high <= 1.0
    with pytest.raises(UndefinedMetricError):
        M.bootstrap_ci([1, 1, 1], [0.1, 0.2, 0.3], [0, 1, 2], M.roc_auc, n_boot=10)


def test_bootstrap_argument_checks():
    with pytest.raises(ValueError):
        M.bootstrap_ci(Y4, P4, [0, 1, 2, 3], M.roc_auc, n_boot=0)
    with pytest.raises(ValueError):
        M.bootstrap_ci(Y4, P4, [0, 1, 2, 3], M.roc_auc, alpha=1.5)
    with pytest.raises(ValueError):
        M.bootstrap_ci(Y4, P4, [0, 1, 2], M.roc_auc)


def test_case_bootstrap_matches_a_hand_written_loop():
    """An independent check of the intervals: draw the same cases with the same generator in a
    plain loop, gather each drawn case's ROIs, score, take percentiles; evaluate() must agree
    to the last digit (AUC, accuracy and F1 do not depend on the order of the ROIs)."""
    y = np.array([1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0])
    p = np.array([0.9, 0.8, 0.3, 0.6, 0.55, 0.1, 0.7, 0.4, 0.45, 0.95, 0.65, 0.2])
    cases = np.array(["a", "a", "b", "c", "c", "d", "e", "e", "f", "g", "h", "h"])
    thr, n_boot, seed = 0.5, 400, 11
    report = M.evaluate(y, p, cases, thr, n_boot=n_boot, seed=seed)
    uniq = sorted(set(cases.tolist()))
    rows = {c: [i for i in range(len(y)) if cases[i] == c] for c in uniq}
    draws = np.random.default_rng(seed).integers(0, len(uniq), size=(n_boot, len(uniq)))
    vals = {"auc": [], "accuracy": [], "f1": []}
    for b in range(n_boot):
        idx = [i for d in draws[b] for i in rows[uniq[d]]]
        yb, pb = y[idx], p[idx]
        tp = sum(1 for a, q in zip(yb, pb) if a == 1 and q >= thr)
        fp = sum(1 for a, q in zip(yb, pb) if a == 0 and q >= thr)
        fn = sum(1 for a, q in zip(yb, pb) if a == 1 and q < thr)
        vals["accuracy"].append(sum(1 for a, q in zip(yb, pb) if (q >= thr) == (a == 1)) / len(yb))
        vals["f1"].append(2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0)
        pos, neg = [q for a, q in zip(yb, pb) if a == 1], [q for a, q in zip(yb, pb) if a == 0]
        if pos and neg:  # the AUC of a one-class resample is undefined: skipped, as documented
            vals["auc"].append(
                sum(1.0 if u > v else 0.5 if u == v else 0.0 for u in pos for v in neg) / (len(pos) * len(neg))
            )
    for name, v in vals.items():
        low, high = np.quantile(np.asarray(v), [0.025, 0.975])
        ci = report["ci"][name]
        assert (ci["low"], ci["high"], ci["n_valid"]) == (float(low), float(high), len(v)), name


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def _assert_plain(obj, where="report"):
    """Only JSON's own Python types: numpy scalars would slip through some encoders and not
    others."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert type(k) is str, where
            _assert_plain(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _assert_plain(v, f"{where}[{i}]")
    else:
        assert type(obj) in (str, int, float, bool, type(None)), (where, type(obj))


def test_evaluate_report():
    y, p, cases = _clustered(n_cases=30, rois_per_case=3, seed=1)
    r = M.evaluate(y, p, cases, threshold=0.5, n_boot=200, seed=0, y_train=np.r_[y, 1])
    _assert_plain(r)
    json.dumps(r, allow_nan=False)
    assert r["metrics"] == M.binary_metrics(y, p, 0.5)
    assert r["auc"] == M.roc_auc(y, p)
    assert r["pr_auc"] == M.average_precision(y, p)
    assert r["sens_at_spec"] == {
        "specificity": 0.9,
        "sensitivity": M.sensitivity_at_specificity(y, p, 0.9),
    }
    assert (r["n_samples"], r["n_cases"], r["n_boot"], r["resampling"]) == (90, 30, 200, "case")
    assert r["ci_level"] == pytest.approx(0.95)
    for name in ("accuracy", "f1", "auc"):
        ci = r["ci"][name]
        assert ci["low"] <= ci["point"] <= ci["high"]
    assert r["ci"]["auc"]["point"] == r["auc"]
    acc_ci = M.bootstrap_ci(y, p, cases, lambda yb, pb: M.binary_metrics(yb, pb, 0.5)["accuracy"], n_boot=200, seed=0)
    assert acc_ci == (r["ci"]["accuracy"]["point"], r["ci"]["accuracy"]["low"], r["ci"]["accuracy"]["high"])
    assert r["majority_baseline"]["majority_class"] == 1
    assert r == M.evaluate(y, p, cases, threshold=0.5, n_boot=200, seed=0, y_train=np.r_[y, 1])


def test_evaluate_needs_a_threshold():
    with pytest.raises(TypeError):
        M.evaluate(Y4, P4, [0, 1, 2, 3])  # no default: the threshold must come from val data


def test_evaluate_single_class_test_set():
    r = M.evaluate([1, 1, 1, 1], [0.9, 0.2, 0.7, 0.6], ["a", "a", "b", "c"], threshold=0.5, n_boot=50)
    _assert_plain(r)
    json.dumps(r, allow_nan=False)
    assert r["auc"] is None and r["ci"]["auc"] is None
    assert r["sens_at_spec"]["sensitivity"] is None
    assert r["pr_auc"] == 1.0
    assert r["metrics"]["recall"] == pytest.approx(0.75)
