"""A researcher's OpenDP session: build pipelines locally, price them, run them.

Needs the client's ``opendp`` extra (``pip install "neblina-client[opendp]"``). Reads
NEBLINA_URL and NEBLINA_TOKEN from the environment (or .neblina/local.env, written by
``make up``):

    make up && .venv/bin/python examples/opendp_session.py; make down
"""

from __future__ import annotations

import warnings
from decimal import Decimal

import opendp.prelude as dp

from neblina_client import Client, Cost, InvalidRequestError

dp.enable_features("contrib")
# make_split_dataframe/make_select_column (the server's input form) say "use Polars": the
# server has no Polars, so these are the constructors to use.
warnings.filterwarnings("ignore", message="Call to deprecated function", module="opendp")


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


def plain(value: Decimal) -> str:
    return "0" if value == 0 else format(value.normalize(), "f")


def show(cost: Cost) -> str:
    return f"epsilon {plain(cost.epsilon)}, delta {plain(cost.delta)}"


def main() -> None:
    client = Client(dataset="PENGUIN")
    metadata = client.metadata()
    d_in = metadata["max_ids"]
    low, high = metadata["columns"]["bill_length_mm"]["lower"], 65.0

    section("1. The input space, from the metadata")
    # The server feeds the rows as CSV text; space() reads it as a dataframe of strings,
    # space(column) selects one column as a vector of strings.
    bills = (
        client.opendp.space("bill_length_mm")
        >> dp.t.then_cast_default(float)
        >> dp.t.then_impute_constant((low + high) / 2)
        >> dp.t.then_clamp((low, high))
    )
    print(f"  bill_length_mm: {bills.output_domain}")

    count = client.opendp.space("species") >> dp.t.then_count() >> dp.m.then_laplace(scale=2.0)
    mean = (
        bills
        >> dp.t.then_resize(size=metadata["rows"], constant=(low + high) / 2)
        >> dp.t.then_mean()
        >> dp.m.then_laplace(scale=0.5)
    )
    histogram = (
        client.opendp.space("species")
        >> dp.t.then_count_by_categories(categories=metadata["columns"]["species"]["categories"])
        >> dp.m.then_laplace(scale=2.0)
    )

    section("2. Develop on dummy data (free)")
    print(
        f"  mean on 300 dummy rows: {client.opendp.query(mean, dummy=True, dummy_rows=300).result}"
    )

    section("3. Price: the pipeline's own privacy map at d_in = max_ids (free)")
    for name, measurement in [("count", count), ("mean", mean), ("histogram", histogram)]:
        quoted = client.opendp.cost(measurement)
        local = measurement.map(d_in)
        print(f"  {name:<9} {show(quoted)}  (map({d_in}) here: {local!r})")

    section("4. Run: each release debited exactly what was quoted")
    before = client.budget().remaining
    spent = Cost.zero()
    for name, measurement in [("count", count), ("mean", mean), ("histogram", histogram)]:
        answer = client.opendp.query(measurement)
        spent = spent + answer.cost
        print(f"  {name:<9} {answer.result}  charged {show(answer.cost)}")
    after = client.budget().remaining
    print(f"  remaining before - spent == after: {before - spent == after}")

    section("5. Gaussian noise is zCDP: give the delta at which to read epsilon")
    gaussian = client.opendp.space("species") >> dp.t.then_count() >> dp.m.then_gaussian(3.0)
    try:
        client.opendp.cost(gaussian)
    except InvalidRequestError as error:
        print(f"  without fixed_delta: {error.status_code} {error.code}")
    answer = client.opendp.query(gaussian, fixed_delta=1e-6)
    print(f"  with fixed_delta=1e-6: {answer.result}  charged {show(answer.cost)}")

    section("6. Refused before anything is priced or read (and nothing is charged)")
    before = client.budget().remaining
    refused = {
        "off the allowlist": client.opendp.space("island")
        >> dp.t.then_count_by()
        >> dp.m.then_laplace_threshold(scale=2.0, threshold=20),
        "no mechanism": bills >> dp.t.then_sum(),
    }
    for name, pipeline in refused.items():
        try:
            client.opendp.query(pipeline)
        except InvalidRequestError as error:
            print(f"  {name}: {error}")
    print(f"  budget unchanged: {client.budget().remaining == before}")


if __name__ == "__main__":
    main()
