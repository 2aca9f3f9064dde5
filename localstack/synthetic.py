"""The SYNTHETIC demo table: a generated population with categorical and numeric columns.

Rows are drawn from a fixed seed (default 200,000 rows), so every machine seeds the same
table. Its metadata is ``localstack/data/synthetic.yaml``.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

REGIONS = [f"R{i:02d}" for i in range(1, 21)]
SECTORS = [
    "agriculture",
    "industry",
    "construction",
    "trade",
    "transport",
    "finance",
    "public",
    "health",
]
EDUCATION = ["primary", "secondary", "vocational", "bachelor", "master"]


def generate(rows: int = 200_000, seed: int = 20261125) -> pd.DataFrame:
    """The synthetic population (deterministic for a given rows and seed)."""
    rng = np.random.default_rng(seed)
    region = rng.choice(REGIONS, size=rows, p=np.linspace(2, 1, len(REGIONS)) / 30)
    sector = rng.choice(SECTORS, size=rows)
    education = rng.choice(EDUCATION, size=rows, p=[0.15, 0.35, 0.25, 0.15, 0.10])
    sex = rng.choice(["female", "male"], size=rows)
    age = rng.integers(18, 91, size=rows)
    level = pd.Series(education).map({e: i for i, e in enumerate(EDUCATION)}).to_numpy()
    employed = rng.random(rows) < np.where(age < 65, 0.85, 0.15)
    hours = np.where(employed, np.clip(rng.normal(38, 8, size=rows), 0, 80), 0).round()
    income = np.where(
        employed,
        np.clip(rng.lognormal(10.6 + 0.12 * level, 0.45, size=rows), 0, 500_000),
        np.clip(rng.lognormal(9.6, 0.5, size=rows), 0, 500_000),
    ).round(2)
    return pd.DataFrame(
        {
            "region": region,
            "sector": sector,
            "education": education,
            "sex": sex,
            "age": age.astype("int64"),
            "hours": hours.astype("int64"),
            "income": income,
            "employed": employed,
        }
    )


def to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    """The frame as Parquet (fastparquet, no pyarrow needed)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, engine="fastparquet", index=False)
    return buffer.getvalue()
