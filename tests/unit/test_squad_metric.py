"""SQuAD EM/F1 against hand-computed cases and the official normalization; v1.1 cross-checked with torchmetrics."""
from __future__ import annotations

import pytest

from tlscale.eval.squad import exact_match, f1, normalize_answer, squad_scores


@pytest.mark.parametrize("raw,normalized", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an   apple, a pear ", "apple pear"),
    ("Theatre of the absurd", "theatre of absurd"),  # 'the' only as a whole word
    ("U.S.A.", "usa"),
    ("", ""),
    ("A", ""),
])
def test_normalization_matches_the_official_script(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_hand_computed_scores():
    assert exact_match("the Denver Broncos", "Denver Broncos!") == 1.0
    # prediction 'denver broncos team' vs gold 'broncos': P 1/3, R 1, F1 0.5
    assert f1("Denver Broncos team", "the Broncos") == pytest.approx(0.5)
    assert f1("1990", "in 1990 and 1991") == pytest.approx(0.4)  # P 1, R 1/4
    assert f1("", "Broncos") == 0.0 and f1("", "", "v1") == 0.0  # v1: empty/empty has no common token
    assert f1("", "", "v2") == 1.0 and f1("Broncos", "", "v2") == 0.0


def test_best_over_several_golds_and_percentages():
    golds = {"q1": ["Denver Broncos", "Broncos"], "q2": ["Santa Clara, California", "Levi's Stadium"],
             "q3": ["February 7"]}
    predictions = {"q1": "the broncos", "q2": "Levi's Stadium in Santa Clara", "q3": "7 February 2016"}
    scores = squad_scores(predictions, golds)
    # q1 EM 1 F1 1; q2 EM 0, F1 vs "levis stadium": P 2/5 R 1 -> 4/7, vs "santa clara california": P 2/5 R 2/3 -> 0.5
    # q3 EM 0, F1: P 2/3 R 1 -> 0.8
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 4 / 7 + 0.8) / 3)


def test_v2_has_and_no_answer_splits():
    golds = {"a": ["Paris"], "b": [], "c": [""], "d": ["Rome"]}
    predictions = {"a": "Paris", "b": "", "c": "London", "d": ""}
    scores = squad_scores(predictions, golds, version="v2")
    assert scores["HasAns_total"] == 2 and scores["NoAns_total"] == 2
    assert scores["HasAns_exact"] == 50.0 and scores["NoAns_exact"] == 50.0
    assert scores["exact_match"] == 50.0 and scores["f1"] == 50.0


def test_missing_predictions_are_an_error():
    with pytest.raises(ValueError, match="1 questions have no prediction"):
        squad_scores({}, {"q": ["x"]})


def test_v1_agrees_with_torchmetrics():
    from torchmetrics.functional.text import squad

    cases = [("the broncos", ["Denver Broncos", "Broncos"]), ("Levi's Stadium in Santa Clara", ["Levi's Stadium"]),
             ("7 February 2016", ["February 7"]), ("", ["something"]), ("an apple a day", ["Apple day!"]),
             ("Théâtre du Châtelet", ["théâtre du châtelet"])]
    predictions = {str(i): p for i, (p, _) in enumerate(cases)}
    golds = {str(i): g for i, (_, g) in enumerate(cases)}
    ours = squad_scores(predictions, golds)
    theirs = squad([{"prediction_text": p, "id": str(i)} for i, (p, _) in enumerate(cases)],
                   [{"answers": {"answer_start": [0] * len(g), "text": g}, "id": str(i)} for i, (_, g) in enumerate(cases)])
    assert ours["exact_match"] == pytest.approx(float(theirs["exact_match"]), abs=1e-4)
    assert ours["f1"] == pytest.approx(float(theirs["f1"]), abs=1e-4)
