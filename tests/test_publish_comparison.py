"""A card's comparison with its baseline entry (`python -m branchzoo.publish --comparisons`)."""

import json
import os

import pytest

import branchzoo
from branchzoo import publish, zoo


def card(name, top1, epochs=8, dataset="cifar10", baseline=None, headline=None):
    recipe = {"epochs": epochs}
    if headline:
        recipe["headline_metric"] = headline
    metrics = None if top1 is None else {
        "dataset": dataset, "split": "test", "top1": top1, "loss": 2.0 - top1,
        "training_budget": {"epochs": epochs}}
    return {"name": name, "recipe": recipe, "metrics": metrics, "baseline": baseline}


def test_higher_top1_is_better_and_the_difference_is_exact():
    result = publish.compare_with_baseline(card("a", 0.6125, baseline="b"), card("b", 0.5875))
    assert result["baseline"] == "b" and result["metric"] == "top1"
    assert (result["value"], result["baseline_value"]) == (0.6125, 0.5875)
    assert result["difference"] == 0.025  # 0.6125 - 0.5875, by hand
    assert result["verdict"] == "top1 better than the baseline's"
    assert result["same_budget"] is True


def test_lower_top1_and_an_unequal_budget_are_reported():
    result = publish.compare_with_baseline(card("a", 0.50, epochs=8), card("b", 0.52, epochs=6))
    assert result["verdict"] == "top1 worse than the baseline's"
    assert result["difference"] == -0.02
    assert result["same_budget"] is False and result["epochs"] == {"model": 8, "baseline": 6}


def test_a_loss_headline_is_better_when_lower():
    # loss = 2 - top1 in these cards: 1.4 against 1.5
    result = publish.compare_with_baseline(card("a", 0.6, headline="loss"), card("b", 0.5, headline="loss"))
    assert result["verdict"] == "loss better than the baseline's"
    assert result["difference"] == pytest.approx(-0.1)


@pytest.mark.parametrize("other", [card("b", None), card("b", 0.5, dataset="mnist")])
def test_no_comparison_without_metrics_on_the_same_dataset(other):
    assert publish.compare_with_baseline(card("a", 0.6), other) is None


@pytest.fixture
def two_entry_zoo(tmp_path, monkeypatch):
    """A zoo folder holding copies of the gated / Fixed-Full pair with made-up metrics."""
    for name, top1 in (("resnext_gated_tiny_cifar10", 0.61), ("resnext_full_tiny_cifar10", 0.64)):
        with open(os.path.join(zoo.zoo_dir(), f"{name}.json")) as f:
            entry = json.load(f)
        entry["metrics"] = {"dataset": "cifar10", "split": "test", "top1": top1,
                            "training_budget": {"epochs": 8}}
        entry.pop("comparison", None)
        with open(tmp_path / f"{name}.json", "w") as f:
            json.dump(entry, f)
    monkeypatch.setenv("BRANCHZOO_ZOO_DIR", str(tmp_path))
    zoo.clear_cache()
    yield tmp_path
    zoo.clear_cache()


def test_comparisons_are_written_into_the_card_that_names_a_baseline(two_entry_zoo):
    assert publish.main(["--comparisons"]) == 0
    gated = branchzoo.model_card("resnext_gated_tiny_cifar10")
    assert gated["baseline"] == "resnext_full_tiny_cifar10"
    assert gated["comparison"]["verdict"] == "top1 worse than the baseline's"
    assert gated["comparison"]["difference"] == -0.03
    assert branchzoo.model_card("resnext_full_tiny_cifar10")["comparison"] is None


def test_publishing_either_side_refreshes_the_comparison(two_entry_zoo):
    assert publish.publish_comparisons(involving="resnext_full_tiny_cifar10")  # the baseline's publish
    assert branchzoo.model_card("resnext_gated_tiny_cifar10")["comparison"]["baseline_value"] == 0.64
    assert publish.publish_comparisons(involving="mpnet_tiny_digits") == []  # not in the pair


def test_every_baseline_is_an_entry_on_the_same_dataset_and_comparisons_are_current():
    for name in zoo.list_models():
        entry = branchzoo.model_card(name)
        if not entry["baseline"]:
            assert entry["comparison"] is None, name  # a comparison needs a baseline
            continue
        baseline = branchzoo.model_card(entry["baseline"])
        assert baseline["dataset"] == entry["dataset"], name
        if entry["comparison"]:  # what the cards' metrics give now: no stale comparison
            assert entry["comparison"] == publish.compare_with_baseline(entry, baseline), name
