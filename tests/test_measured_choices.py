"""Choices made by timing (issue 24): one rule, ``measure.timing.decide``, on hand-made per-round samples."""

from __future__ import annotations

from rfdeploy.measure.timing import ACCURACY, SIMPLICITY, SPEED, decide

# a quiet round-to-round spread of about +-2% around 40 ms: an interquartile range near 1 ms
NOISE = [-0.8, 0.3, -0.2, 0.9, -0.5, 0.1, 0.6, -0.9, 0.4, -0.1]


def rounds(centre_ms: float) -> list[float]:
    return [centre_ms + delta for delta in NOISE]


def test_a_difference_inside_the_spread_of_the_rounds_is_not_decided_by_speed():
    # issue 24's int8 op sets under load: 40.9 against 41.2 ms, a 0.7% margin
    decision = decide({"conv-matmul": rounds(40.9), "all": rounds(41.2)}, ["conv-matmul", "all"])
    assert decision.decided_by == SIMPLICITY and decision.kept == "conv-matmul"
    assert decision.median_ms["conv-matmul"] < decision.median_ms["all"]


def test_a_difference_beyond_the_spread_is_decided_by_speed():
    decision = decide({"conv-matmul": rounds(41.2), "all": rounds(36.7)}, ["conv-matmul", "all"])
    assert (decision.kept, decision.decided_by) == ("all", SPEED)
    assert decision.rounds == len(NOISE) and decision.spread_ms["all"] > 0


def test_a_tie_on_speed_is_decided_by_accuracy():
    # the same times, "all" 0.8 dB more accurate: kept although it is neither faster nor the simpler graph
    decision = decide({"conv-matmul": rounds(40.9), "all": rounds(41.2)}, ["conv-matmul", "all"],
                      {"conv-matmul": 20.1, "all": 20.9})
    assert (decision.kept, decision.decided_by) == ("all", ACCURACY)


def test_a_tie_on_speed_and_accuracy_is_decided_by_the_simpler_graph():
    decision = decide({"multi": rounds(10.0), "single": rounds(10.1)}, ["single", "multi"],
                      {"single": 30.0, "multi": 30.05})
    assert (decision.kept, decision.decided_by) == ("single", SIMPLICITY)


def test_a_clearly_faster_candidate_that_is_much_less_accurate_is_not_kept():
    decision = decide({"single": rounds(10.0), "multi": rounds(20.0)}, ["single", "multi"],
                      {"single": 20.0, "multi": 32.0})
    assert (decision.kept, decision.decided_by) == ("multi", ACCURACY) and "12.0 dB" in decision.why
    within_margin = decide({"single": rounds(10.0), "multi": rounds(20.0)}, ["single", "multi"],
                           {"single": 30.0, "multi": 32.0})
    assert (within_margin.kept, within_margin.decided_by) == ("single", SPEED)


def test_the_record_names_the_rule_with_its_figures():
    record = decide({"a": rounds(5.0), "b": rounds(9.0)}, ["a", "b"]).to_json()
    assert record["decided_by"] == SPEED and record["kept"] == "a"
    assert set(record["median_ms"]) == set(record["spread_ms"]) == {"a", "b"}
