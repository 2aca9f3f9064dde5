"""The OpenDP engine: hostile JSON refused, exact prices from the privacy map, CSV input."""

from __future__ import annotations

import copy
import inspect
import json
import math
from decimal import Decimal
from typing import Any

import opendp.prelude as dp
import pandas as pd
import pytest
from opendp.mod import GLOBAL_FEATURES
from opendp_pipelines import (
    COLUMNS,
    DATASET,
    META,
    TRUE_COUNT,
    bill_length,
    body,
    gaussian_count,
    laplace_count,
    laplace_mean,
    laplace_sum,
    loaded,
    space,
    species_histogram,
)

from chalicelib.engines import COMMON_FIELDS, FACTORIES, get_engine
from chalicelib.engines import opendp_engine as oe
from chalicelib.errors import EngineRefused, InvalidQuery, InvalidRequest
from chalicelib.models import Dataset, PrivacyCost, exact_decimal, utcnow
from neblina_client._opendp import expand, pipeline_nodes

ENGINE = oe.ENGINE
pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated function:DeprecationWarning")


def cost_of(measurement: Any, dataset: Dataset = DATASET, **extra: Any) -> PrivacyCost:
    return ENGINE.cost(dataset, ENGINE.parse(body(measurement, **extra)))


def refused(pipeline: object) -> str:
    """The message of the 400 a pipeline gets at parse time."""
    with pytest.raises(InvalidQuery) as raised:
        ENGINE.parse({"engine": "opendp", "pipeline": pipeline})
    return raised.value.message


# --- prices ----------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [laplace_count, laplace_sum, laplace_mean, species_histogram])
def test_pure_dp_pipelines_cost_exactly_their_privacy_map(make: Any) -> None:
    measurement = make()
    epsilon = measurement.map(META["max_ids"])
    assert cost_of(measurement) == PrivacyCost(epsilon=exact_decimal(epsilon), delta=0)


def test_d_in_is_max_ids_from_the_metadata() -> None:
    measurement = laplace_mean()
    two_each = Dataset("TWO", "unused", {**META, "max_ids": 2}, utcnow())
    cost = cost_of(measurement, two_each)
    assert cost.epsilon == exact_decimal(measurement.map(2))
    assert cost.epsilon > cost_of(measurement).epsilon


def test_gaussian_needs_fixed_delta_and_is_charged_at_it() -> None:
    measurement = gaussian_count()
    with pytest.raises(InvalidRequest, match="fixed_delta is required"):
        cost_of(measurement)
    cost = cost_of(measurement, fixed_delta=1e-6)
    curve = dp.c.make_zCDP_to_approxDP(measurement)
    epsilon, delta = dp.c.make_fix_delta(curve, 1e-6).map(1)
    assert delta == 1e-6
    assert cost == PrivacyCost(epsilon=exact_decimal(epsilon), delta=Decimal("0.000001"))
    assert cost.epsilon == exact_decimal(curve.map(1).epsilon(delta=1e-6))


def test_smoothed_max_divergence_needs_fixed_delta_too() -> None:
    measurement = dp.c.make_zCDP_to_approxDP(gaussian_count())
    with pytest.raises(InvalidRequest, match="fixed_delta"):
        cost_of(measurement)
    assert cost_of(measurement, fixed_delta="0.000001") == cost_of(
        gaussian_count(), fixed_delta=1e-6
    )


def test_approximate_dp_is_charged_as_its_map_says() -> None:
    mean = bill_length() >> dp.t.then_resize(344, 45.0) >> dp.t.then_mean()
    measurement = mean >> dp.m.then_canonical_noise(d_in=mean.map(1), d_out=(1.0, 1e-6))
    assert cost_of(measurement) == PrivacyCost(epsilon=1, delta=exact_decimal(1e-6))
    approximated = dp.c.make_approximate(laplace_count())
    assert cost_of(approximated) == PrivacyCost(epsilon="0.5", delta=0)


def test_fixed_delta_is_refused_where_it_means_nothing() -> None:
    with pytest.raises(InvalidRequest, match="fixed_delta applies only"):
        cost_of(laplace_count(), fixed_delta=1e-6)
    for bad in (0, 1, -1e-6, "x", True):
        with pytest.raises(InvalidRequest):
            ENGINE.parse(body(gaussian_count(), fixed_delta=bad))


def test_an_unsupported_output_measure_is_a_400_naming_it() -> None:
    measurement = dp.c.make_approximate(gaussian_count())  # approximate zCDP
    with pytest.raises(InvalidQuery, match=r"Approximate\(ZeroConcentratedDivergence\)"):
        cost_of(measurement, fixed_delta=1e-6)


def test_composition_costs_the_sum() -> None:
    measurement = dp.c.make_composition([laplace_count(), laplace_mean()])
    expected = exact_decimal(laplace_count().map(1)) + exact_decimal(laplace_mean().map(1))
    assert cost_of(measurement).epsilon == exact_decimal(measurement.map(1))
    assert abs(cost_of(measurement).epsilon - expected) < Decimal("1e-12")


# --- what the pipeline must be --------------------------------------------------------------
def test_a_transformation_alone_is_refused() -> None:
    with pytest.raises(InvalidQuery, match="Transformation, not a Measurement"):
        cost_of(bill_length() >> dp.t.then_sum())


def test_a_pipeline_on_another_input_domain_is_refused() -> None:
    vector = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance())
    measurement = vector >> dp.t.then_clamp((0.0, 1.0)) >> dp.t.then_sum() >> dp.m.then_laplace(1.0)
    with pytest.raises(InvalidQuery, match=r"the server feeds AtomDomain\(T=String\)"):
        cost_of(measurement)


@pytest.mark.parametrize(
    ("separator", "columns"),
    [(";", COLUMNS), (",", list(reversed(COLUMNS))), (",", COLUMNS[:-1])],
)
def test_split_dataframe_must_read_the_servers_csv(separator: str, columns: list[str]) -> None:
    frame = dp.t.make_split_dataframe(separator, columns)
    measurement = frame >> dp.t.make_select_column("species", str) >> dp.t.then_count()
    with pytest.raises(InvalidQuery, match="col_names="):
        cost_of(measurement >> dp.m.then_laplace(1.0))


# --- hostile JSON ----------------------------------------------------------------------------
def serialized() -> dict[str, Any]:
    """A valid pipeline in dp.serialize's tree form, as Python objects."""
    tree: dict[str, Any] = json.loads(dp.serialize(laplace_count()))
    return tree


def laplace_node(tree: dict[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = tree["__kwargs__"]["measurement1"]
    assert node["__function__"] == "make_laplace"
    return node


def mutate(change: Any) -> dict[str, Any]:
    tree = serialized()
    change(tree)
    return tree


HOSTILE = {
    "another module": (
        lambda t: laplace_node(t).update(__module__="os", __function__="system"),
        "module 'os' is not one of OpenDP's constructor modules",
    ),
    "opendp.mod itself": (
        lambda t: laplace_node(t).update(__module__="mod", __function__="enable_features"),
        "module 'mod' is not one of OpenDP's constructor modules",
    ),
    "a relative module": (
        lambda t: laplace_node(t).update(__module__="..os"),
        "module '..os' is not",
    ),
    "a constructor off the allowlist": (
        lambda t: laplace_node(t).update(__function__="make_user_measurement"),
        "constructor measurements.make_user_measurement is not allowed",
    ),
    "an honest-but-curious combinator": (
        lambda t: t.update(__function__="make_population_amplification"),
        "constructor combinators.make_population_amplification is not allowed",
    ),
    "a polars plan": (
        lambda t: laplace_node(t)["__kwargs__"].update(scale={"__lazyframe__": "AAAA"}),
        "unexpected object with key(s) '__lazyframe__' in make_laplace.scale",
    ),
    "an unexpected key in a node": (
        lambda t: laplace_node(t).update(__pickle__="gASV"),
        "unexpected key '__pickle__' in a node",
    ),
    "an argument the constructor does not have": (
        lambda t: laplace_node(t)["__kwargs__"].update(callback="print"),
        "make_laplace has no argument 'callback'",
    ),
    "a plain object as an argument": (
        lambda t: laplace_node(t)["__kwargs__"].update(scale={"value": 2.0}),
        "unexpected object with key(s) 'value'",
    ),
    "a reference in the tree form": (
        lambda t: laplace_node(t)["__kwargs__"].update(scale={"__ref__": 0}),
        "unexpected object with key(s) '__ref__'",
    ),
    "another OpenDP minor version": (
        lambda t: laplace_node(t).update(__version__="0.13.0"),
        "serialized by OpenDP 0.13.0",
    ),
    "a node without a function": (
        lambda t: laplace_node(t).update(__function__=None),
        "needs a string __module__ and __function__",
    ),
    "a huge size": (
        lambda t: t.update(
            __function__="make_resize",
            __module__="transformations",
            __kwargs__={"size": 10**12, "constant": 1},
        ),
        "sizes add up to more than 10000000 rows",
    ),
    "a long string": (
        lambda t: laplace_node(t)["__kwargs__"].update(MO="x" * 5000),
        "make_laplace.MO is longer than",
    ),
    "deeply nested lists": (
        lambda t: laplace_node(t)["__kwargs__"].update(scale=[[[[[[[[[[[1]]]]]]]]]]]),
        "make_laplace.scale is nested too deeply",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_json_is_refused_naming_the_culprit_in_both_forms(case: str) -> None:
    change, message = HOSTILE[case]
    tree = mutate(change)
    assert message in refused(json.dumps(tree))
    if case != "a reference in the tree form":
        assert message in refused(compact(tree))


def compact(tree: dict[str, Any]) -> dict[str, Any]:
    """The node form of a (possibly tampered) tree, written without OpenDP."""
    nodes: list[dict[str, Any]] = []

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            if "__function__" in value:
                node = {k: v for k, v in value.items() if k != "__kwargs__"}
                if "__kwargs__" in value:
                    node["__kwargs__"] = {k: walk(v) for k, v in value["__kwargs__"].items()}
                nodes.append(node)
                return {"__ref__": len(nodes) - 1}
            return {k: walk(v) for k, v in value.items()}
        return value

    walk(tree)
    return {"nodes": nodes}


def test_json_constants_and_non_finite_numbers_are_refused() -> None:
    text = json.dumps(serialized()).replace('"scale": 2.0', '"scale": NaN')
    assert "NaN" in text
    assert "NaN is not a finite number" in refused(text)
    nodes = pipeline_nodes(laplace_count())
    for node in nodes["nodes"]:
        if node["__function__"] == "make_laplace":
            node["__kwargs__"]["scale"] = math.inf
    assert "make_laplace.scale is not a finite number" in refused(nodes)


@pytest.mark.parametrize(
    ("reference", "message"),
    [(-1, "must refer to an earlier node"), (10**6, "earlier node"), (True, "earlier node")],
)
def test_references_must_point_to_earlier_nodes(reference: object, message: str) -> None:
    nodes = pipeline_nodes(laplace_count())
    last = nodes["nodes"][-1]
    last["__kwargs__"]["measurement1"] = {"__ref__": reference}
    assert message in refused(nodes)
    cyclic = pipeline_nodes(laplace_count())
    cyclic["nodes"][-1]["__kwargs__"]["measurement1"] = {"__ref__": len(cyclic["nodes"]) - 1}
    assert "earlier node" in refused(cyclic)


def test_nodes_the_pipeline_does_not_use_are_refused() -> None:
    nodes = pipeline_nodes(laplace_count())
    nodes["nodes"].insert(0, {**nodes["nodes"][0]})
    for node in nodes["nodes"][1:]:  # shift every reference past the inserted node
        node["__kwargs__"] = json.loads(
            json.dumps(node["__kwargs__"]), object_hook=_shift_reference
        )
    assert "node 0 is not used by the last node" in refused(nodes)


def _shift_reference(value: dict[str, Any]) -> dict[str, Any]:
    return {"__ref__": value["__ref__"] + 1} if set(value) == {"__ref__"} else value


@pytest.mark.parametrize(
    "pipeline",
    [None, 42, ["x"], {"nodes": []}, {"nodes": [1]}, {"nodes": [], "root": 0}, "not json", "[]"],
)
def test_malformed_pipelines_are_refused(pipeline: object) -> None:
    refused(pipeline)


def test_size_limits() -> None:
    deep: dict[str, Any] = {"__function__": "symmetric_distance", "__module__": "metrics"}
    for _ in range(oe.MAX_DEPTH + 2):
        deep = {
            "__function__": "transformation_output_metric",
            "__module__": "core",
            "__kwargs__": {"this": deep},
            "__version__": "0.14.2",
        }
    assert "nested constructor calls" in refused(json.dumps(deep))
    many = [
        {
            "__function__": "atom_domain",
            "__module__": "domains",
            "__kwargs__": {"bounds": {"__tuple__": [i, i + 1]}, "T": "i32"},
            "__version__": "0.14.2",
        }
        for i in range(oe.MAX_NODES + 1)
    ]
    assert f"more than {oe.MAX_NODES}" in refused({"nodes": many})
    too_deep_text = "[" * 100_000 + "]" * 100_000
    assert "nested too deeply" in refused(too_deep_text)
    # calls within lists within calls, as deep as the limits allow: walked without
    # exhausting Python's stack (which would be a 500); one call deeper is a 400
    for calls in (oe.MAX_DEPTH, oe.MAX_DEPTH + 1):
        node: dict[str, Any] = {"__function__": "max_divergence", "__module__": "measures"}
        node["__version__"] = "0.14.2"
        for _ in range(calls):
            wrapped: Any = node
            for _ in range(oe.MAX_VALUE_DEPTH):
                wrapped = [wrapped]
            node = {
                "__function__": "make_composition",
                "__module__": "combinators",
                "__kwargs__": {"measurements": wrapped},
                "__version__": "0.14.2",
            }
        if calls == oe.MAX_DEPTH:
            assert len(oe.canonical_nodes(json.dumps(node))) == calls + 1
        else:
            assert "nested constructor calls" in refused(json.dumps(node))


def test_unknown_request_fields_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="unknown fields: epsilon"):
        ENGINE.parse(body(laplace_count(), epsilon=1))
    with pytest.raises(InvalidRequest, match="pipeline is required"):
        ENGINE.parse({"engine": "opendp"})


# --- transport: the same pipeline whatever the form --------------------------------------------
PIPELINES = [laplace_count, laplace_sum, laplace_mean, gaussian_count]


def test_the_client_writes_type_arguments_dp_serialize_cannot() -> None:
    measurement = species_histogram()  # count_by_categories keeps MO as a RuntimeType
    # i32 in a fresh process; i64 once SmartNoise's Gaussian has run in it (it sets OpenDP's
    # process-wide default int type; costs and releases do not change: test_opendp_process)
    with pytest.raises(Exception, match=r"does not handle L1Distance<i(32|64)>"):
        dp.serialize(measurement)
    request = ENGINE.parse(body(measurement))
    assert oe.build(request.nodes()).map(1) == measurement.map(1)


@pytest.mark.parametrize("make", PIPELINES)
def test_what_is_built_serializes_back_to_what_the_client_sent(make: Any) -> None:
    measurement = make()
    text = dp.serialize(measurement)
    request = ENGINE.parse({"engine": "opendp", "pipeline": text})
    built = oe.build(request.nodes())
    assert dp.serialize(built) == text  # byte for byte: the same calls, the same arguments
    reference = dp.deserialize(text)  # OpenDP's own deserializer agrees
    assert built.map(1) == reference.map(1) == measurement.map(1)


@pytest.mark.parametrize("make", PIPELINES)
def test_tree_and_node_forms_are_one_canonical_request(make: Any) -> None:
    measurement = make()
    from_tree = ENGINE.parse({"engine": "opendp", "pipeline": dp.serialize(measurement)})
    from_nodes = ENGINE.parse(body(measurement))
    assert from_tree == from_nodes
    assert expand(pipeline_nodes(measurement)) == json.loads(dp.serialize(measurement))


def test_the_node_form_is_small_where_dp_serialize_is_not() -> None:
    measurement = laplace_mean()
    tree, nodes = dp.serialize(measurement), json.dumps(pipeline_nodes(measurement))
    assert len(tree) > 500_000 and len(nodes) < 6_000
    assert len(ENGINE.parse(body(measurement)).nodes()) < 30


def test_the_canonical_request_is_what_is_archived() -> None:
    request = ENGINE.parse(body(gaussian_count(), fixed_delta="1e-6"))
    assert request.canonical() == {
        "pipeline": {"nodes": request.nodes()},
        "fixed_delta": "0.000001",
    }
    json.dumps(request.canonical())  # storable as is


# --- input form and releases -----------------------------------------------------------------
def test_every_row_is_one_line_of_the_csv_input() -> None:
    frame = pd.DataFrame(
        {
            "name": ["a,b", "line\nbreak", "cr\r", None, ""],
            "flag": pd.array([True, False, None, True, False], dtype="boolean"),
            "x": [1.5, float("nan"), 0.1, 2.0, -3.0],
            "n": pd.array([1, None, 3, 4, 5], dtype="Int64"),
        }
    )
    text = oe.csv_text(frame)
    columns = list(frame.columns)
    split = dp.t.make_split_dataframe(",", columns)

    def column(name: str) -> list[str]:
        return list((split >> dp.t.make_select_column(name, str))(text))

    assert (split >> dp.t.make_select_column("name", str) >> dp.t.then_count())(text) == 5
    assert column("name") == ["a b", "line break", "cr", "", ""]
    assert column("flag") == ["true", "false", "", "true", "false"]
    assert column("x") == ["1.5", "", "0.1", "2.0", "-3.0"]
    assert column("n") == ["1", "", "3", "4", "5"]
    missing_only = pd.DataFrame({"x": [None, None, None]})
    counted = dp.t.make_split_dataframe(",", ["x"]) >> dp.t.make_select_column("x", str)
    assert (counted >> dp.t.then_count())(oe.csv_text(missing_only)) == 3
    assert oe.csv_text(frame.iloc[:0]) == ""


def test_the_penguins_csv_has_every_row_and_column() -> None:
    text = oe.csv_text(loaded().frame)
    assert (space("species") >> dp.t.then_count())(text) == TRUE_COUNT
    years = (space("study_year") >> dp.t.then_cast_default(int))(text)
    assert sorted(set(years)) == [2007, 2008, 2009]


def test_a_count_release_is_a_number_near_the_truth() -> None:
    request = ENGINE.parse(body(laplace_count(scale=1.0)))
    result = ENGINE.execute(loaded(), request)
    assert result["type"] == "value" and isinstance(result["value"], int)
    # discrete Laplace, scale 1: P(|noise| >= 22) = 2 e^-22 / (1 + e^-1) < 1e-9
    assert abs(result["value"] - TRUE_COUNT) < 22


def test_vector_and_composed_releases_are_lists() -> None:
    histogram = ENGINE.execute(loaded(), ENGINE.parse(body(species_histogram())))
    assert histogram["type"] == "value" and len(histogram["value"]) == 4  # 3 species + other
    composed = dp.c.make_composition([laplace_count(), laplace_mean()])
    result = ENGINE.execute(loaded(), ENGINE.parse(body(composed)))
    count, mean = result["value"]
    assert isinstance(count, int) and isinstance(mean, float)
    json.dumps(result, allow_nan=False)


def test_release_json_refuses_what_json_cannot_hold() -> None:
    assert oe.release_json([1, 2.5, (3, True), float("nan")]) == [1, 2.5, [3, True], None]
    with pytest.raises(TypeError):
        oe.release_json({"a": 1})


def test_map_failures_are_422() -> None:
    mean = bill_length() >> dp.t.then_resize(344, 45.0) >> dp.t.then_mean()
    # calibrated for d_in = 1: the map refuses any larger d_in
    measurement = mean >> dp.m.then_canonical_noise(d_in=mean.map(1), d_out=(1.0, 1e-6))
    two_each = Dataset("TWO", "unused", {**META, "max_ids": 2}, utcnow())
    with pytest.raises(EngineRefused, match="privacy map failed at d_in=2"):
        cost_of(measurement, two_each)


# --- features --------------------------------------------------------------------------------
def test_the_engine_is_registered_and_enables_only_contrib() -> None:
    assert isinstance(get_engine("opendp"), type(ENGINE))
    assert "contrib" in GLOBAL_FEATURES
    assert "honest-but-curious" not in GLOBAL_FEATURES


def _asserted_features(function: Any) -> set[str]:
    source = inspect.getsource(function)
    found: set[str] = set()
    for line in source.splitlines():
        if "assert_features(" in line:
            found.update(
                part.strip(" \"'") for part in line.split("(", 1)[1].rstrip(")").split(",")
            )
    return found


def test_no_allowed_constructor_asserts_floating_point_or_honest_but_curious() -> None:
    for (module, name), function in oe.CONSTRUCTORS.items():
        features = _asserted_features(function)
        assert features <= {"contrib"}, f"{module}.{name} asserts {features}"


def test_every_honest_but_curious_constructor_is_off_the_allowlist() -> None:
    found = []
    for module_name, module in oe._MODULES.items():
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if "honest-but-curious" in _asserted_features(function):
                found.append((module_name, name))
                assert (module_name, name) not in oe.CONSTRUCTORS
    assert ("combinators", "make_population_amplification") in found  # the scan sees them


def test_dummy_and_private_runs_use_the_same_input_form() -> None:
    request = ENGINE.parse(body(species_histogram()))
    from chalicelib.dummy import make_dummy

    dummy = loaded(make_dummy(META, 50, 1))
    result = ENGINE.execute(dummy, request)
    assert len(result["value"]) == 4


def test_requests_are_frozen_values() -> None:
    request = ENGINE.parse(body(laplace_count()))
    nodes = request.nodes()
    nodes.clear()
    assert request.nodes() and copy.deepcopy(request) == request


def test_the_openapi_document_describes_every_engine() -> None:
    from chalicelib.openapi import document

    schemas = document("test")["components"]["schemas"]
    for name in ("CostRequest", "QueryRequest"):
        assert set(schemas[name]["discriminator"]["mapping"]) == set(FACTORIES)
    assert set(schemas["OpenDPQueryRequest"]["properties"]) == oe.FIELDS | COMMON_FIELDS
    assert set(schemas["OpenDPCostRequest"]["properties"]) == {
        "engine",
        "pipeline",
        "fixed_delta",
        "level",
    }
    assert schemas["Value"]["properties"]["type"]["const"] == "value"


def test_the_documented_allowlist_is_the_allowlist() -> None:
    import re

    from opendp_pipelines import ROOT

    text = (ROOT / "docs/opendp.md").read_text()
    table = text.split("## The allowlist")[1].split("Left out on purpose")[0]
    for module, names in oe.ALLOWED.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{module}` |"))
        assert re.findall(r"`(\w+)`", row.split("|")[2]) == list(names), module
