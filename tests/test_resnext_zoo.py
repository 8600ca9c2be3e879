"""Zoo entries of the GatedConnect ResNeXt family: configurations, two-phase recipes, cards."""

import fnmatch
import math
import os

import pytest

import branchzoo
from branchzoo.layers import GatedConnect

NAMES = branchzoo.list_models("resnext*")
SMALL_WIDTHS = {"stage_widths": [8, 8, 8], "stem_width": 8, "width": 2}  # same layer names, quick to build


def test_the_family_is_registered():
    expected = {f"resnext_{kind}_{data}" for kind in ("gated", "gated_k1", "full", "random")
                for data in ("cifar10", "cifar100")}
    expected |= {"resnext29_8x64d_gated_cifar10", "resnext29_8x64d_gated_cifar100",
                 "resnext_gated_tiny_cifar10", "resnext_full_tiny_cifar10"}
    assert set(NAMES) == expected


@pytest.mark.parametrize("name", NAMES)
def test_recipe_phases_freeze_exactly_the_gates(name):
    card = branchzoo.model_card(name)
    recipe, config = card["recipe"], card["config"]
    phases = recipe["phases"]
    assert [p["name"] for p in phases] == ["joint", "finetune"]
    assert sum(p["epochs"] for p in phases) == recipe["epochs"]
    assert recipe["task"] == "classification" and recipe["dataset"] == card["dataset"]
    model = branchzoo.build(name, **SMALL_WIDTHS)
    gates = sorted(l.name for l in model.layers if isinstance(l, GatedConnect))
    if config["connectivity"] == "learned":
        attrs = phases[1]["layer_attrs"]
        assert attrs == {"*_gate": {"frozen": True}}
        matched = sorted(l.name for l in model.layers if fnmatch.fnmatch(l.name, "*_gate"))
        assert matched == gates and len(gates) == 3 * (config["depth"] - 2) // 9 - 1
        assert "layer_attrs" not in phases[0]
    else:
        assert all("layer_attrs" not in p for p in phases)
    num_classes = {"cifar10": 10, "cifar100": 100}[card["dataset"]]
    assert config["num_classes"] == num_classes and model.output.shape == (None, num_classes)


def test_siblings_share_architecture_and_budget():
    for data in ("cifar10", "cifar100"):
        cards = {k: branchzoo.model_card(f"resnext_{k}_{data}") for k in ("gated", "gated_k1", "full", "random")}
        strip = ("connectivity", "fan_in", "seed")
        base = {k: v for k, v in cards["gated"]["config"].items() if k not in strip}
        for card in cards.values():
            assert {k: v for k, v in card["config"].items() if k not in strip} == base
            assert [(p["epochs"], p["lr"]) for p in card["recipe"]["phases"]] == \
                [(p["epochs"], p["lr"]) for p in cards["gated"]["recipe"]["phases"]]
        assert base["depth"] == 29 and base["width"] == 8 and base["cardinality"] == 8
        assert (cards["gated"]["config"]["fan_in"], cards["gated_k1"]["config"]["fan_in"],
                cards["random"]["config"]["fan_in"]) == (4, 1, 4)
    tiny = [branchzoo.model_card(f"resnext_{k}_tiny_cifar10") for k in ("gated", "full")]
    assert tiny[0]["recipe"]["phases"][0]["epochs"] == tiny[1]["recipe"]["phases"][0]["epochs"]
    assert tiny[0]["config"]["depth"] == 20 and tiny[0]["config"]["fan_in"] == 4


@pytest.mark.parametrize("name", [n for n in NAMES if "tiny" not in n])
def test_unpublished_entries_name_a_cifar10_entry_that_can_have_weights(name):
    card = branchzoo.model_card(name)
    assert card["weights"] is None
    alternative = branchzoo.zoo.get_entry(name)["pretrained_alternative"]
    other = branchzoo.model_card(alternative)
    assert other["dataset"] == "cifar10" and "tiny" in alternative and other["builder"] == card["builder"]
    assert name in card["recipe"]["command"]


@pytest.mark.parametrize("name", ["resnext_gated_tiny_cifar10", "resnext_full_tiny_cifar10",
                                  "resnext_gated_cifar100", "resnext_full_cifar100"])
def test_parameter_count_matches_card(name):
    model = branchzoo.build(name)
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    assert branchzoo.model_card(name)["parameters"] == {"trainable": trainable, "total": model.count_params()}


# ---- the published CIFAR-10 pair ---------------------------------------------------------------

REAL_DATA = os.environ.get("BRANCHZOO_DATA_DIR")
PUBLISHED = [n for n in NAMES if branchzoo.model_card(n)["weights"]]


def test_the_cpu_sized_pair_is_published_and_compared():
    assert set(PUBLISHED) >= {"resnext_gated_tiny_cifar10", "resnext_full_tiny_cifar10"}
    comparison = branchzoo.model_card("resnext_gated_tiny_cifar10")["comparison"]
    full = branchzoo.model_card("resnext_full_tiny_cifar10")["metrics"]
    assert comparison["baseline"] == "resnext_full_tiny_cifar10" and comparison["same_budget"]
    assert comparison["baseline_value"] == full["top1"]


@pytest.mark.slow  # 10,000 CIFAR-10 test images through each model, 15-20 s each
@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_DATA and os.path.exists(os.path.join(REAL_DATA, "cifar10-jpeg.tar.gz"))),
                    reason="needs BRANCHZOO_DATA_DIR holding cifar10-jpeg.tar.gz")
@pytest.mark.parametrize("name", PUBLISHED)
def test_published_weights_give_the_card_top1_on_real_cifar10(name):
    import numpy as np

    from branchzoo import data

    card = branchzoo.model_card(name)
    model = branchzoo.load(name)  # fetched from beside the entry, sha256-checked; inference: top-K gates
    correct = total = 0
    for x, y in data.load_dataset("cifar10", "test", batch_size=500, data_dir=REAL_DATA):
        correct += int(np.sum(np.argmax(model.predict_on_batch(x), -1) == y.numpy()))
        total += len(y)
    assert total == 10_000
    assert abs(correct / total - card["metrics"]["top1"]) <= 1e-4 + 1e-12, (correct, card["metrics"]["top1"])
