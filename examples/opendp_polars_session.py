"""A researcher's OpenDP Polars session: dp.Context queries on the remote dataset.

Needs the client's ``polars`` extra (``pip install "neblina-client[polars]"``). Reads
NEBLINA_URL and NEBLINA_TOKEN from the environment (or .neblina/local.env, written by
``make up``):

    make up && .venv/bin/python examples/opendp_polars_session.py; make down
"""

from __future__ import annotations

import warnings

import opendp.prelude as dp
import polars as pl

from neblina_client import Client, InvalidRequestError

warnings.filterwarnings("ignore", category=DeprecationWarning)


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


def main() -> None:
    client = Client(dataset="PENGUIN")
    context = client.opendp.context(privacy_loss=1.0, split_evenly_over=4)
    bill = pl.col("bill_length_mm").fill_null(45.0)

    section("1. A group-by with public keys: accuracy first (local, free)")
    by_sex = context.query().group_by("sex").agg(dp.len(), bill.dp.mean((30.0, 65.0)))
    print(by_sex.summarize(alpha=0.05))
    print("price:", by_sex.cost())

    section("2. On dummy rows (free), then for real (debited once)")
    print(by_sex.release(dummy=True).result)
    released = by_sex.release()
    print(released.result)
    print(released.accuracy)
    print("charged:", released.cost)

    section("3. A median and a filtered count")
    median = context.query().select(bill.dp.median([35.0, 40.0, 45.0, 50.0, 55.0]))
    print(median.release().result)
    recent = context.query().filter(pl.col("study_year") >= 2008).select(dp.len())
    print(recent.release().result)

    section("4. What the server refuses (400, nothing debited)")
    try:  # a column without public categories cannot be a group key
        context.query().group_by("body_mass_g").agg(dp.len()).cost()
    except InvalidRequestError as error:
        print("refused:", error)
    print("budget left:", client.budget().remaining)


if __name__ == "__main__":
    main()
