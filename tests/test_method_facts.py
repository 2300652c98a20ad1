"""A method's facts live in one place (issue #22): every method in ``MethodConfig``'s vocabulary
has registered facts (accounting, learning-rate range, knobs, size knob, fusability), a builder
and a row in docs/METHODS.md; the tables other modules read are views of the registry; and the
registration refuses incomplete or malformed facts, saying what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from search_spaces.accounting import ParamCount, count_params
from search_spaces.errors import ConfigError
from search_spaces.matching import KNOBS, ONE_RANK_METHODS
from search_spaces.method_config import LORA_METHODS, METHODS, MethodConfig
from search_spaces.method_facts import (
    COMPOSITE_KNOBS,
    CONFIG_FIELDS,
    METHOD_FACTS,
    MethodFacts,
    register_facts,
)
from search_spaces.registry import Registry
from search_spaces.shapes import TINY_BERT
from search_spaces.spaces import KNOBS_USED, LR_RANGES, default_lr
from trainables.fused import FUSABLE_METHODS
from trainables.methods import METHOD_REGISTRY, register_method

DOCS = Path(__file__).resolve().parent.parent / "docs" / "METHODS.md"
BUILDS_SECTION = "## What each method builds"
DEFAULTS_SECTION = "## MiniLM-L6 at the default options"
SOURCES = ("glue/sst2", "newsgroups/bydate")


def table_rows(text: str, section: str) -> list[list[str]]:
    """The cells of each body row of the table under ``section`` (up to the next ``## ``)."""
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in body.splitlines() if line.startswith("| ")]  # fmt: skip
    return [r for r in rows if r[0] != "method"]


def docs_rows(text: str, section: str = BUILDS_SECTION) -> list[str]:
    """The method names of the table under ``section`` (the first cell of each body row)."""
    return [row[0] for row in table_rows(text, section)]


def missing_facts(
    methods: tuple[str, ...], facts: Registry[MethodFacts], builders: list[str], rows: list[str]
) -> list[str]:
    """``method: what it lacks`` for each method of ``methods`` without facts, builder or docs
    row, and for each fact, builder or row of a method outside ``methods``."""
    problems = []
    for method in methods:
        for what, present in (("facts", method in facts), ("builder", method in builders),
                              ("docs row", method in rows)):  # fmt: skip
            if not present:
                problems.append(f"{method}: no {what}")
    for what, names in (("facts", facts.names()), ("builder", builders), ("docs row", rows)):
        problems += [
            f"{name}: {what} of an unknown method" for name in names if name not in methods
        ]
    return problems


def test_every_method_has_facts_a_builder_and_a_docs_row():
    rows = docs_rows(DOCS.read_text())
    assert missing_facts(METHODS, METHOD_FACTS, METHOD_REGISTRY.names(), rows) == []
    assert len(rows) == len(set(rows)), f"a method has two rows in {DOCS.name}: {rows}"


def test_the_docs_give_each_methods_library_and_paper_as_registered():
    rows = table_rows(DOCS.read_text(), DEFAULTS_SECTION)
    documented = {row[0]: (row[4], row[5]) for row in rows}
    registered = {
        m: (METHOD_REGISTRY.get(m).library, METHOD_REGISTRY.get(m).paper) for m in METHODS
    }
    assert documented == registered


def test_the_completeness_check_bites():
    facts: Registry[MethodFacts] = Registry("method")
    facts.register("lora", METHOD_FACTS.get("lora"))
    problems = missing_facts(("lora", "bitfit"), facts, ["lora", "bitfit"], ["lora", "prefix"])
    assert problems == [
        "bitfit: no facts", "bitfit: no docs row", "prefix: docs row of an unknown method",
    ]  # fmt: skip
    text = f"intro\n{BUILDS_SECTION}\n\n| method | a |\n|---|---|\n| lora | x |\n\n## Next\n| full | y |"
    assert docs_rows(text) == ["lora"]


@pytest.mark.parametrize("method", METHODS)
def test_each_fact_is_usable(method):
    facts = METHOD_FACTS.get(method)
    assert facts.name == method and METHOD_REGISTRY.get(method).facts is facts
    sources = SOURCES if method in ("fusion", "lora_fusion") else ()
    config = MethodConfig(method=method, sources=sources)
    own = facts.count(config, TINY_BERT)
    assert isinstance(own, ParamCount) and own.trainable_params > 0
    assert count_params(config, TINY_BERT).trainable_params > own.trainable_params  # + the head
    lo, hi = facts.lr_range
    assert 0 < lo < default_lr(method) < hi
    assert isinstance(facts.fusable, bool)
    if facts.size_knob is not None:
        assert facts.size_knob in (*facts.knobs, "sizes")


def test_the_tables_are_views_of_the_registry():
    for method in METHODS:
        facts = METHOD_FACTS.get(method)
        assert LR_RANGES[method] == facts.lr_range
        assert KNOBS_USED[method] == facts.knobs
        assert KNOBS[method] == facts.size_knob
    assert list(LR_RANGES) == list(KNOBS_USED) == list(KNOBS) == list(METHODS)
    assert sorted(COMPOSITE_KNOBS) == sorted(
        {k for k in KNOBS.values() if k is not None} - set(CONFIG_FIELDS)
    )


@pytest.mark.parametrize("method", [m for m in METHODS if "layer_ranks" in KNOBS_USED[m]])
def test_per_layer_ranks_is_what_the_accounting_accepts(method):
    sources = SOURCES if method in ("fusion", "lora_fusion") else ()
    mixed = (2, 4) * (TINY_BERT.num_layers // 2)
    config = MethodConfig(method=method, sources=sources, layer_ranks=mixed, rank=4)
    if METHOD_FACTS.get(method).per_layer_ranks:
        assert count_params(config, TINY_BERT).trainable_params > 0
    else:
        with pytest.raises(ConfigError, match="layer_ranks="):
            count_params(config, TINY_BERT)
    assert (method in ONE_RANK_METHODS) == (method in LORA_METHODS and method != "lora")


def test_fusability_agrees_with_the_fused_model():
    # the fused models, the pool and both --fuse commands read the registry; every fusable method
    # has padding rules (search_spaces/row_groups.py), tested as rows in tests/test_fused_rows.py
    from search_spaces.row_groups import PADDED

    fusable = tuple(m for m in METHODS if METHOD_FACTS.get(m).fusable)
    assert sorted(fusable) == sorted(FUSABLE_METHODS)
    assert set(fusable) == set(PADDED) == {"lora", "bitfit", "houlsby", "pfeiffer", "prefix",
                                           "fusion", "lora_fusion"}  # fmt: skip


LORA = METHOD_FACTS.get("lora")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"count": "rank * 2"}, "count='rank * 2' is not callable"),
        ({"lr_range": (3e-3, 1e-4)}, "must be 0 < low < high"),
        ({"lr_range": (0.0, 1e-3)}, "must be 0 < low < high"),
        ({"knobs": ("rank", "rnak")}, "knob 'rnak' is not a MethodConfig field"),
        ({"size_knob": "bottleneck"}, "size_knob='bottleneck' is not among its knobs"),
        ({"fused_padding": "rank"}, "fused_padding='rank' must be None or a tuple of its knobs"),
        ({"fused_padding": ("bottleneck",)}, "fused_padding=('bottleneck',) must be None or a"),
        ({"per_layer_ranks": 1}, "per_layer_ranks=1 must be True or False"),
        ({"knobs": ("rank",)}, "per_layer_ranks=True needs layer_ranks in its knobs"),
        ({"fused_padding": None}, "pools_by_default=True needs fused_padding"),
    ],
    ids=[
        "count",
        "range-order",
        "range-zero",
        "knob",
        "size-knob",
        "padding-type",
        "padding-knob",
        "ranks",
        "ranks-knob",
        "pools-unfusable",
    ],
)
def test_facts_are_validated_when_built(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        replace(LORA, **changes)


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        (replace(LORA, name="lorra"), "'lorra' is not in MethodConfig's METHODS"),
        (LORA, "'lora' is registered twice"),
    ],
    ids=["name", "twice"],
)
def test_register_facts_refuses_unknown_and_twice_registered_methods(facts, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        register_facts(facts)
    assert METHOD_FACTS.get("lora") is LORA and "lorra" not in METHOD_FACTS


def test_a_builder_without_facts_is_refused():
    spec = METHOD_REGISTRY.get("lora")
    with pytest.raises(ValueError, match="'lorra' has no facts: register them in"):
        register_method("lorra", paper=spec.paper, library=spec.library, builder=spec.builder,
                        summary=spec.summary)  # fmt: skip
    assert "lorra" not in METHOD_REGISTRY


def test_an_unknown_method_is_named_with_the_known_ones():
    with pytest.raises(ConfigError, match="method='lorra' is not one of: .*did you mean lora"):
        METHOD_FACTS.get("lorra")
