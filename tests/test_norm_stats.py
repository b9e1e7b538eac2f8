import json
import math

import numpy as np
import pytest

from pirl.data import norm_stats as ns


def _hand_stats():
    # Column 0 = 0..4: mean 2, population var (4+1+0+1+4)/5 = 2 -> std sqrt(2); linear quantiles at
    # positions 0.01*4 = 0.04 and 0.99*4 = 3.96 -> q01 0.04, q99 3.96. Column 1 = 10 * column 0.
    x = np.stack([np.arange(5.0), 10 * np.arange(5.0)], axis=-1)
    return x, ns.compute(x)


def test_compute_hand_worked():
    _, s = _hand_stats()
    np.testing.assert_allclose(s.mean, [2.0, 20.0], rtol=1e-6)
    np.testing.assert_allclose(s.std, [math.sqrt(2), 10 * math.sqrt(2)], rtol=1e-6)
    np.testing.assert_allclose(s.q01, [0.04, 0.4], rtol=1e-6)
    np.testing.assert_allclose(s.q99, [3.96, 39.6], rtol=1e-6)
    assert s.mean.dtype == np.float32


def test_accumulator_matches_compute():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3, 100, 4)).astype(np.float32)
    acc = ns.StatsAccumulator()
    for chunk in data:
        acc.update(chunk)
    got, want = acc.result(), ns.compute(data.reshape(-1, 4))
    for name in ("mean", "std", "q01", "q99"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    with pytest.raises(ValueError, match="5 dims"):
        acc.update(np.zeros((2, 5)))


def test_normalize_hand_worked():
    _, s = _hand_stats()
    x = np.array([[4.0, 0.0]])
    # z-score: (4 - 2) / (sqrt2 + 1e-6), (0 - 20) / (10 sqrt2 + 1e-6)
    want = [[2 / (math.sqrt(2) + 1e-6), -20 / (10 * math.sqrt(2) + 1e-6)]]
    np.testing.assert_allclose(ns.normalize(x, s, "zscore"), want, rtol=1e-6)
    # quantile: (3.96 - 0.04) / (3.92 + 1e-6) * 2 - 1 ~= 1; (0.4 - 0.4) / ... * 2 - 1 = -1
    np.testing.assert_allclose(ns.normalize(np.array([[3.96, 0.4]]), s, "quantile"), [[1.0, -1.0]], atol=1e-5)
    # Fewer dims than the stats: the stats are sliced.
    np.testing.assert_allclose(ns.normalize(np.array([[4.0]]), s, "zscore"), [[2 / (math.sqrt(2) + 1e-6)]])


@pytest.mark.parametrize("kind", ["zscore", "quantile"])
def test_round_trip_with_padding(kind):
    x, s = _hand_stats()
    normed = ns.normalize(x, s, kind)
    padded = np.concatenate([normed, np.full((5, 3), 0.5, np.float32)], axis=-1)  # model pads to 5 dims
    back = ns.unnormalize(padded, s, kind)
    np.testing.assert_allclose(back[:, :2], x, rtol=1e-5, atol=1e-5)
    # Padded dims: z-score treats them as mean 0 / std 1 -> 0.5 * (1 + 1e-6); quantile passes through.
    expected_pad = 0.5 * (1 + 1e-6) if kind == "zscore" else 0.5
    np.testing.assert_allclose(back[:, 2:], expected_pad, rtol=1e-7)


def test_normalize_errors():
    _, s = _hand_stats()
    with pytest.raises(ValueError, match="3 dims with norm stats of 2"):
        ns.normalize(np.zeros((1, 3)), s, "zscore")
    with pytest.raises(ValueError, match="1 dims with norm stats of 2"):
        ns.unnormalize(np.zeros((1, 1)), s, "zscore")
    no_q = ns.NormStats(mean=[0.0], std=[1.0])
    with pytest.raises(ValueError, match="q01/q99"):
        ns.normalize(np.zeros((1, 1)), no_q, "quantile")
    with pytest.raises(ValueError, match="unknown normalization 'minmax'"):
        ns.normalize(np.zeros((1, 1)), no_q, "minmax")
    with pytest.raises(ValueError, match=r"std has shape \(3,\)"):
        ns.NormStats(mean=[0.0, 1.0], std=[1.0, 1.0, 1.0])


def test_json_round_trip_and_openpi_layout(tmp_path):
    _, s = _hand_stats()
    file = ns.save(tmp_path / "assets" / "physical-intelligence" / "libero", {"state": s, "actions": s})
    assert file.name == "norm_stats.json"
    raw = json.loads(file.read_text())
    assert set(raw["norm_stats"]) == {"state", "actions"}
    assert set(raw["norm_stats"]["state"]) == {"mean", "std", "q01", "q99"}
    back = ns.load(file.parent)
    for name in ("mean", "std", "q01", "q99"):
        np.testing.assert_array_equal(getattr(back["actions"], name), getattr(s, name))
    # openpi writes null quantiles for stats computed without them.
    text = json.dumps({"norm_stats": {"state": {"mean": [1, 2], "std": [3, 4], "q01": None, "q99": None}}})
    only_z = ns.from_json(text)
    assert only_z["state"].q01 is None and only_z["state"].dim == 2


def test_json_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"norm_stats\.json"):
        ns.load(tmp_path)
    with pytest.raises(ValueError, match="top-level 'norm_stats'"):
        ns.from_json("{}")
    with pytest.raises(ValueError, match=r"norm_stats\['actions'\] lacks std"):
        ns.from_json(json.dumps({"norm_stats": {"actions": {"mean": [0.0]}}}))
    with pytest.raises(ValueError, match=r"norm_stats\['state'\].*q01 has shape"):
        bad = {"mean": [0], "std": [1], "q01": [0, 1], "q99": [1]}
        ns.from_json(json.dumps({"norm_stats": {"state": bad}}))
