"""OpenDP pipelines on PENGUIN for the OpenDP tests, built as a researcher builds them.

Every pipeline starts from the client's ``input_space`` (what ``client.opendp.space()``
returns), so the tests also check that the client's input form is the server's.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import opendp.prelude as dp
import pandas as pd
import yaml

from chalicelib import metadata as M
from chalicelib.datasets import LoadedDataset, coerce_types
from chalicelib.models import Dataset, utcnow
from neblina_client._opendp import input_space, pipeline_nodes

warnings.filterwarnings("ignore", category=DeprecationWarning, module="opendp")
dp.enable_features("contrib")

ROOT = Path(__file__).resolve().parents[2]
META = M.validate(yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text()))
COLUMNS = list(META["columns"])
FRAME = coerce_types(pd.read_csv(ROOT / "localstack/data/penguins.csv"), META)
TRUE_COUNT = len(FRAME)  # 344, known here because the test holds the data
DATASET = Dataset("PENGUIN", "unused", META, utcnow())


def loaded(frame: pd.DataFrame = FRAME) -> LoadedDataset:
    return LoadedDataset("PENGUIN", "v1", META, frame)


def space(column: str | None = None) -> Any:
    return input_space(COLUMNS, column)


def bill_length() -> Any:
    """bill_length_mm as floats in [30, 65], missing values imputed."""
    return (
        space("bill_length_mm")
        >> dp.t.then_cast_default(float)
        >> dp.t.then_impute_constant(45.0)
        >> dp.t.then_clamp((30.0, 65.0))
    )


def laplace_count(scale: float = 2.0) -> Any:
    return space("species") >> dp.t.then_count() >> dp.m.then_laplace(scale)


def laplace_sum(scale: float = 100.0) -> Any:
    return bill_length() >> dp.t.then_sum() >> dp.m.then_laplace(scale)


def laplace_mean(scale: float = 0.5) -> Any:
    return (
        bill_length() >> dp.t.then_resize(344, 45.0) >> dp.t.then_mean() >> dp.m.then_laplace(scale)
    )


def gaussian_count(scale: float = 3.0) -> Any:
    return space("species") >> dp.t.then_count() >> dp.m.then_gaussian(scale)


def species_histogram(scale: float = 1.0) -> Any:
    return (
        space("species")
        >> dp.t.then_count_by_categories(categories=["Adelie", "Chinstrap", "Gentoo"])
        >> dp.m.then_laplace(scale)
    )


def body(measurement: Any, **extra: Any) -> dict[str, Any]:
    """A request body as the client sends it (node form)."""
    return {"engine": "opendp", "pipeline": pipeline_nodes(measurement), **extra}
