"""OpenDP on ``row_privacy: false`` datasets: each person's rows are bounded to ``max_ids``.

The price uses ``d_in = max_ids``; the rows fed to the pipeline must make that true. One
person owning 100 rows must move a Laplace count by at most ``max_ids`` in expectation,
not by 100 (issue 9 §2; docs/threat-model.md).

The statistical check: a Laplace count at scale 1 releases discrete Laplace noise, whose
moment generating function is ``M(λ) = (1−α)² / ((1−αe^λ)(1−αe^−λ))`` with ``α = e^−1``.
By Chernoff, the mean of N releases strays more than ``t`` from its expectation with
probability at most ``2·exp(−N·sup_λ(λt − ln M(λ)))``; with N = 400 and t = 0.5 that is
computed below (about 1e-10) and asserted, for both datasets together, below 1e-6.
"""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest
import yaml
from opendp_pipelines import body

from chalicelib import metadata as M
from chalicelib.datasets import LoadedDataset, coerce_types
from chalicelib.engines.opendp_engine import ENGINE, PersonLines, csv_lines
from chalicelib.models import Dataset, utcnow
from neblina_client._opendp import input_space

pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated function:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
RAW = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
META = M.validate(
    {
        **RAW,
        "row_privacy": False,
        "columns": {
            "who": {"type": "int", "lower": 0, "upper": 1000, "private_id": True},
            **RAW["columns"],
        },
    }
)
PENGUINS = pd.read_csv(ROOT / "localstack/data/penguins.csv")
RELEASES, STRAY = 400, 0.5


def frame(owner_rows: int) -> pd.DataFrame:
    """344 persons with one row each, plus person 999 owning ``owner_rows`` rows."""
    base = PENGUINS.assign(who=range(len(PENGUINS)))
    owner = PENGUINS.head(1).assign(who=999)
    rows = pd.concat([base, *([owner] * owner_rows)], ignore_index=True)
    return coerce_types(rows, META)


def chernoff_bound(releases: int, stray: float, scale: float = 1.0) -> float:
    """P(|mean of ``releases`` discrete Laplace draws| > ``stray``), bounded above."""
    alpha = math.exp(-1.0 / scale)
    best = 0.0
    for step in range(1, 1000):
        lam = step / 1000 * (1.0 / scale)  # λ < 1/scale keeps αe^λ < 1
        mgf = (1 - alpha) ** 2 / ((1 - alpha * math.exp(lam)) * (1 - alpha * math.exp(-lam)))
        best = max(best, lam * stray - math.log(mgf))
    return 2 * math.exp(-releases * best)


def test_one_person_with_100_rows_moves_a_count_by_at_most_max_ids() -> None:
    count = input_space(list(META["columns"]), "species") >> dp.t.then_count()
    request = ENGINE.parse(body(count >> dp.m.then_laplace(1.0)))
    dataset = Dataset("PERSONS", "unused", META, utcnow())
    assert ENGINE.cost(dataset, request).epsilon == Decimal(1)  # d_in = max_ids = 1
    assert 2 * chernoff_bound(RELEASES, STRAY) < 1e-6
    means = []
    for owner_rows in (100, 0):
        data = LoadedDataset("PERSONS", "v1", META, frame(owner_rows))
        released = [ENGINE.execute(data, request)["value"] for _ in range(RELEASES)]
        means.append(sum(released) / RELEASES)
    with_owner, without = means
    # bounded, person 999 adds max_ids = 1 row, not 100 (today: a mean near 444)
    assert abs(with_owner - 345) <= STRAY and abs(without - 344) <= STRAY
    assert with_owner - without <= META["max_ids"] + 2 * STRAY


def test_the_rows_kept_per_person_are_a_fresh_uniform_choice_in_row_order() -> None:
    """max_ids 2: person 999 keeps 2 of their 100 rows, everyone else keeps all of theirs.

    Over 2,000 releases every one of the 100 rows is chosen at least once unless the
    choice is not uniform and fresh: a given row is missed with probability
    (98/100)^2000 < 1e-17, so any of them with probability below 1e-15.
    """
    rows = frame(100).assign(bill_length_mm=[float(i) for i in range(444)])
    lines = PersonLines(rows, "who")
    every = csv_lines(rows)
    assert lines.sample(100, np.random.default_rng()) == "".join(every)  # nobody over 100
    seen: set[str] = set()
    rng = np.random.default_rng()
    for _ in range(2000):
        kept = lines.sample(2, rng).splitlines(keepends=True)
        assert kept[:344] == every[:344]  # one-row persons: all kept, in row order
        owned = kept[344:]
        assert len(owned) == 2 and owned == [line for line in every[344:] if line in owned]
        seen.update(owned)
    assert seen == set(every[344:])
