"""A researcher's session against a Neblina deployment.

Reads NEBLINA_URL and NEBLINA_TOKEN from the environment (or .neblina/local.env, written by
`make up`). Run it with `make demo`, which starts a local stack for it and stops it after.
"""

from __future__ import annotations

from decimal import Decimal

import pandas as pd

from neblina_client import Client, Cost

pd.set_option("display.width", 120)
pd.set_option("display.max_columns", 12)


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


def plain(value: Decimal) -> str:
    return "0" if value == 0 else format(value.normalize(), "f")


def show_cost(cost: Cost) -> str:
    return f"epsilon {plain(cost.epsilon)}, delta {plain(cost.delta)}"


def main() -> None:
    client = Client(dataset="PENGUIN")

    section("1. Datasets I may query")
    for info in client.datasets():
        print(f"  {info.name:<10} {info.rows:>7} rows  {info.description}")

    section("2. Public metadata of PENGUIN")
    metadata = client.metadata()
    print(f"  rows {metadata['rows']}, max_ids {metadata['max_ids']}")
    for name, column in metadata["columns"].items():
        detail = column.get("categories") or [column.get("lower"), column.get("upper")]
        print(f"  {name:<18} {column['type']:<7} {detail}")

    section("3. Dummy data (generated from metadata only, free)")
    print(client.dummy(rows=5, seed=1).to_string(index=False))

    count_sql = "SELECT COUNT(*) AS n FROM df"
    group_sql = (
        "SELECT species, COUNT(*) AS n, AVG(bill_length_mm) AS bill_length "
        "FROM PENGUIN GROUP BY species"
    )
    epsilon, delta = 0.5, 1e-5

    section("4. Develop on dummy data, then price the real query (both free)")
    dummy_run = client.sql.query(group_sql, epsilon, delta, dummy=True)
    print(dummy_run.result.to_string(index=False))
    estimate = client.sql.cost(group_sql, epsilon, delta)
    print(f"  cost of the GROUP BY at epsilon={epsilon} per aggregate: {show_cost(estimate)}")
    print("  (AVG is a SUM and a COUNT, so three noisy aggregates: 3 x epsilon)")

    before = client.budget()
    print(f"  budget before: remaining {show_cost(before.remaining)}")

    section("5. DP query: how many penguins?")
    first = client.sql.query(count_sql, epsilon, delta)
    print(first.result.to_string(index=False))
    print(f"  charged {show_cost(first.cost)}  (query_id {first.query_id})")

    section("6. DP query: per species, count and mean bill length")
    second = client.sql.query(group_sql, epsilon, delta)
    print(second.result.to_string(index=False))
    print(f"  charged {show_cost(second.cost)}  (query_id {second.query_id})")

    section("7. A longer query, detached: SYNTHETIC (200,000 rows), its progress while it runs")
    synthetic = Client(dataset="SYNTHETIC")
    slow_sql = "SELECT region, COUNT(*) AS n, AVG(income) AS income FROM df GROUP BY region"
    synthetic_before = synthetic.budget().remaining
    job = synthetic.sql.query(slow_sql, epsilon, delta, wait=False)  # answered at once (202)
    status = job.status()
    print(f"  submitted {job.query_id}: {status.state}, phase {status.phase}")
    print(f"  debited at submission: {show_cost(status.cost)}", flush=True)
    third = job.wait(progress=True)  # a tqdm bar on stderr: the phase and the fraction done
    print(third.result.head(5).to_string(index=False))
    debited = synthetic_before - synthetic.budget().remaining
    print(f"  SYNTHETIC budget debited once, exactly the cost: {debited == third.cost}")
    print(f'  (reattach from anywhere: client.job("{job.query_id}", dataset="SYNTHETIC"))')
    synthetic.close()

    section("8. Remaining budget")
    after = client.budget()
    spent_here = first.cost + second.cost
    print(f"  initial   {show_cost(after.initial)}")
    print(f"  spent     {show_cost(after.spent)}")
    print(f"  remaining {show_cost(after.remaining)}")
    expected = before.remaining - spent_here
    exact = after.remaining == expected
    print(f"  remaining before - sum of printed costs = {show_cost(expected)}: exact match {exact}")
    if not exact:
        raise SystemExit("budget arithmetic does not match")

    section("9. History (the archive of my releases)")
    for record in client.history():
        print(
            f"  {record.created_at:%H:%M:%S}  {record.state:<8} {show_cost(record.cost):<44} "
            f"{record.request.get('query', '')[:60]}"
        )

    section("10. Replay: the same query_id again is free and returns the archived answer")
    replay = client.sql.query(group_sql, epsilon, delta, query_id=second.query_id)
    unchanged = client.budget().remaining == after.remaining
    print(
        f"  replayed {replay.replayed}, same answer {replay.result.equals(second.result)}, "
        f"budget unchanged {unchanged}"
    )


if __name__ == "__main__":
    main()
