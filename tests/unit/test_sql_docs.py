"""docs/sql.md's table of supported SQL is the engine's real behaviour, row by row."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_smartnoise_engine import DATASET, loaded, request

from chalicelib.engines.smartnoise_engine import ENGINE
from chalicelib.errors import InvalidQuery

ROOT = Path(__file__).resolve().parents[2]


def table_rows() -> list[tuple[str, str, str]]:
    """(construct, status, example query) for each row of the table in docs/sql.md."""
    rows = []
    for line in (ROOT / "docs/sql.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1] in ("supported", "refused"):
            example = re.fullmatch(r"`(.+)`", cells[2])
            assert example, f"docs/sql.md: the example of {cells[0]} must be one `query`"
            rows.append((cells[0], cells[1], example.group(1)))
    return rows


ROWS = table_rows()


def test_the_table_lists_both_supported_and_refused_constructs() -> None:
    statuses = [status for _, status, _ in ROWS]
    assert statuses.count("supported") >= 10 and statuses.count("refused") >= 8


@pytest.mark.parametrize(("construct", "status", "query"), ROWS, ids=[r[0] for r in ROWS])
def test_each_row_of_the_table_is_what_the_engine_does(
    construct: str, status: str, query: str
) -> None:
    """Supported: priced, then released on the penguins. Refused: a 400 before any read."""
    if status == "supported":
        cost = ENGINE.cost(DATASET, request(query))
        assert cost.epsilon > 0
        result = ENGINE.execute(loaded(), request(query))
        assert result["records"], construct
    else:
        with pytest.raises(InvalidQuery) as refused:
            ENGINE.cost(DATASET, request(query))
        assert refused.value.status_code == 400
        assert "not supported" in refused.value.message or "cannot run" in refused.value.message
