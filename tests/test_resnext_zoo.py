"""Zoo entries of the GatedConnect ResNeXt family: configurations, two-phase recipes, cards."""

import fnmatch
import os

import pytest

import branchzoo
from branchzoo.layers import GatedConnect

NAMES = branchzoo.list_models("resnext*")
SMALL_WIDTHS = {"stage_widths": [8, 8, 8], "stem_width": 8, "width": 2}  # same layer names, quick to build
TINY_ENTRIES = ["resnext_gated_tiny_cifar10", "resnext_full_tiny_cifar10", "resnext_random_tiny_cifar10"]


def test_the_family_is_registered():
    expected = {f"resnext_{kind}_{data}" for kind in ("gated", "gated_k1", "full", "random")
                for data in ("cifar10", "cifar100")}
    expected |= {"resnext29_8x64d_gated_cifar10", "resnext29_8x64d_gated_cifar100",
                 "resnext_gated_tiny_cifar10", "resnext_full_tiny_cifar10", "resnext_random_tiny_cifar10"}
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


def tiny_variables(connectivity):
    """The variables of the CPU-sized {20,4,8} entries (block outputs 16, 32, 64, stem 16) by hand.

    Their weights files hold exactly these: 6 modules of C = 8 blocks, one BN PER BLOCK after the
    last 1x1 conv (bn3 over C * filters channels), one shared projection where the width or the
    resolution changes (modules 3 and 5), a gate before modules 2..6 unless Fixed-Full.
    """
    bn = ("gamma", "beta", "moving_mean", "moving_variance")
    C, expected = 8, [("stem_conv/kernel", (3, 3, 3, 16))]
    expected += [(f"stem_bn/{v}", (16,)) for v in bn]
    c_in, i = 16, 0
    for s, out in enumerate((16, 32, 64)):
        w = 4 * 2 ** s
        for b in range(2):
            i += 1
            m = f"module{i}"
            if i > 1 and connectivity != "full":
                expected.append((f"{m}_gate/gates", (C, C)))
            projects = c_in != out or (s > 0 and b == 0)
            if projects:
                expected.append((f"{m}/shortcut_kernel", (c_in, out)))
            # one input (Fixed-Full, module 1) or C grouped inputs: c_in -> w per block either way
            expected.append((f"{m}/conv1/kernel", (1, 1, c_in, C * w)))
            expected += [(f"{m}/bn1/{v}", (C * w,)) for v in bn]
            expected.append((f"{m}/conv2/kernel", (3, 3, w, C * w)))
            expected += [(f"{m}/bn2/{v}", (C * w,)) for v in bn]
            expected.append((f"{m}/conv3/kernel", (1, 1, w, C * out)))
            expected += [(f"{m}/bn3/{v}", (C * out,)) for v in bn]
            if projects:
                expected += [(f"{m}/shortcut_bn/{v}", (out,)) for v in bn]
            c_in = out
    return expected + [("predictions/kernel", (64, 10)), ("predictions/bias", (10,))]


@pytest.mark.parametrize("name", TINY_ENTRIES)
def test_tiny_entries_keep_the_variables_of_their_weights(name):
    # models are trained (and weights published) with these variables: paths, order and shapes
    card = branchzoo.model_card(name)
    model = branchzoo.build(name)
    variables = [(v.path, tuple(v.shape)) for v in model.weights]
    assert variables == tiny_variables(card["config"]["connectivity"])
    # the per-block BN: 6 bn3 gammas of C * filters = 8 * (16, 16, 32, 32, 64, 64) channels
    assert [shape for path, shape in variables if path.endswith("bn3/gamma")] == [
        (128,), (128,), (256,), (256,), (512,), (512,)]
    # stem 5; 6 modules of 3 convs + 3 BNs (15); 2 projections (5 each); head 2; 5 gates
    assert len(variables) == (107 if card["config"]["connectivity"] == "full" else 112)


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
