"""PEOPLE_1M / PEOPLE_10M: the seeded synthetic table of issue 14 (and of the Lomas anchor).

    .venv/bin/python bench/people.py [--rows 1000000] [--seed 7] [--out bench/data]

Columns: ``region`` (20 categories r01..r20, weights falling linearly from 2 to 1), ``sex``
(female/male), ``age`` (int 18..90), ``income`` (float 0..200,000, log-normal, rounded to
cents). The same generator and seed as ``../shared/anchors/lomas/gen_synth.py``, so the 1M
table is the one Lomas 0.4.1 was measured on (22 MB of CSV). Writes ``people_<rows>.csv`` and
``people_<rows>.yaml`` (Neblina metadata, ``max_ids: 1``, row privacy); skips the work when
they exist.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent
REGIONS = [f"r{i:02d}" for i in range(1, 21)]


def metadata_yaml(rows: int) -> str:
    return f"""# PEOPLE ({rows:,} rows), made by bench/people.py
description: Synthetic people (bench/people.py, seed 7)
max_ids: 1
rows: {rows}
row_privacy: true
censor_dims: false
columns:
  region:
    type: string
    categories: [{", ".join(REGIONS)}]
  sex:
    type: string
    categories: [female, male]
  age:
    type: int
    lower: 18
    upper: 90
  income:
    type: float
    lower: 0.0
    upper: 200000.0
"""


def frame(rows: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    weights = np.linspace(2, 1, 20) / np.linspace(2, 1, 20).sum()
    region = rng.choice(np.array(REGIONS), size=rows, p=weights)
    sex = rng.choice(np.array(["female", "male"]), size=rows)
    age = rng.integers(18, 91, size=rows)
    income = np.clip(
        rng.lognormal(mean=11.0, sigma=0.5, size=rows) * (1 + (age - 18) / 150), 0, 200000
    ).round(2)
    return pd.DataFrame({"region": region, "sex": sex, "age": age, "income": income})


def ensure(rows: int, seed: int = 7, out: Path = ROOT / "data") -> tuple[Path, Path]:
    """(CSV path, metadata path) of the table, written if missing."""
    out.mkdir(parents=True, exist_ok=True)
    csv, meta = out / f"people_{rows}.csv", out / f"people_{rows}.yaml"
    if not (csv.exists() and meta.exists()):
        frame(rows, seed).to_csv(csv, index=False)
        meta.write_text(metadata_yaml(rows))
    return csv, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "data")
    args = parser.parse_args()
    csv, meta = ensure(args.rows, args.seed, args.out)
    print(f"{csv} ({csv.stat().st_size / 1e6:.1f} MB), {meta}")


if __name__ == "__main__":
    main()
