"""experiments/CLAIMS.md is what the committed output files say, and every row can be traced."""

import json
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

import claims  # noqa: E402


def test_claims_table_is_what_the_output_files_say():
    with open(claims.TABLE) as f:
        committed = f.read()
    assert committed == claims.table()  # run `python experiments/claims.py` after a new result


def test_every_row_has_a_command_whose_script_exists_and_a_verdict():
    verdicts = ("reproduced", "not reproduced at this scale", "partly", "not testable here", "measured")
    for row in claims.ROWS:
        setup, ours, verdict = row["static"] if "static" in row else row["measure"]()
        assert verdict.startswith(verdicts), (row["claim"], verdict)
        if "static" in row or row["command"] == "-":
            assert verdict.startswith("not testable here"), row["claim"]  # no command: only reasons
            continue
        for script in re.findall(r"(experiments/\w+\.py|evaluate\.py|train\.py)", row["command"]):
            assert os.path.exists(os.path.join(REPO, script)), script
        assert "branchzoo.publish" in row["command"] or re.search(r"\.py", row["command"])


def test_the_readme_links_the_table_from_its_first_screen():
    with open(os.path.join(REPO, "README.md")) as f:
        first_screen = "".join(f.readlines()[:40])
    assert "experiments/CLAIMS.md" in first_screen


def test_row_commands_are_the_ones_the_outputs_recorded():
    # An output that records its command must have been written by exactly the row's command.
    recorded = {}
    for folder in ("gated_k_sweep", "branch_svd", "mpnet_probes_cifar10"):
        with open(os.path.join(claims.OUT, folder, "report.json")) as f:
            r = json.load(f)
        recorded[folder] = r.get("command") or r["experiment"]["command"]
    for folder, model in (("tail_patterns_cifar10", "densenet18_cifar10"),
                          ("tail_patterns_cifar10_full", "densenet18_cifar10"),
                          ("tail_patterns_cifar10_full", "resnet34_cifar10")):
        with open(os.path.join(claims.OUT, folder, model, "report.json")) as f:
            recorded[f"{folder}/{model}"] = json.load(f)["experiment"]["command"]
    commands = [c for row in claims.ROWS for c in row.get("command", "-").split("; ")]
    for folder, command in recorded.items():
        assert command.replace("BRANCHZOO_DATA_DIR=<data> ", "") in commands, (folder, command)
