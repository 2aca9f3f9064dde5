"""Client plots (the [plot] extra): rendered with Agg to a PNG; the figure's artists checked."""

from __future__ import annotations

import builtins
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
import pytest
from fake_server import FakeServer

from neblina_client import ArchivedQuery, Budget, Cost, History, QueryResult
from neblina_client._decode import parse_stated_accuracy

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.container import BarContainer

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def cost(epsilon: str, delta: str = "0") -> Cost:
    return Cost(Decimal(epsilon), Decimal(delta))


def archived(query_id: str, epsilon: str, minutes: int, state: str = "done") -> ArchivedQuery:
    return ArchivedQuery(
        query_id=query_id, dataset="PENGUIN", engine="smartnoise_sql", state=state,
        request={}, cost=cost(epsilon), created_at=T0 + timedelta(minutes=minutes),
        finished_at=None, result=None, error=None,
    )  # fmt: skip


def budget() -> Budget:
    return Budget(
        initial=cost("10"), spent=cost("3.5"), remaining=cost("6.5"),
        cap_limit=cost("20"), cap_remaining=cost("12"),
    )  # fmt: skip


def render(axes: Any, tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    axes.figure.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plt.close(axes.figure)


def test_the_budget_plot_draws_spent_and_remaining_of_the_grant_and_the_cap(tmp_path: Path) -> None:
    axes = budget().plot()
    widths = [patch.get_width() for patch in axes.patches]
    lefts = [patch.get_x() for patch in axes.patches]
    assert widths == [3.5, 6.5] and lefts == [0.0, 3.5]
    assert [line.get_xdata()[0] for line in axes.get_lines()] == [20.0]
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert labels == ["dataset cap (20)", "spent (3.5)", "remaining (6.5)"]
    render(axes, tmp_path)


def test_the_history_plot_is_a_burn_down_of_standing_spends_against_grant_and_cap(
    server: FakeServer, tmp_path: Path
) -> None:
    records = History(
        [
            archived("q3", "1.5", 30),
            archived("q2", "4", 20, state="refunded"),  # given back: not spent
            archived("q1", "2", 10, state="failed"),  # the cost stands
        ]
    )
    axes = records.plot(budget=budget())
    spent, grant, cap = axes.get_lines()
    assert spent.get_ydata().tolist() == [0.0, 2.0, 3.5]
    assert grant.get_ydata()[0] == 10.0 and cap.get_ydata()[0] == 20.0
    render(axes, tmp_path)


def test_client_history_returns_a_plottable_list(server: FakeServer) -> None:
    server.reply(200, {"queries": [], "next_cursor": None})
    history = server.client().history()
    assert isinstance(history, History) and isinstance(history, list) and history == []


def test_a_group_by_release_plots_bars_per_key_with_its_intervals_as_error_bars(
    tmp_path: Path,
) -> None:
    table = pd.DataFrame({"species": ["Adelie", "Chinstrap", "Gentoo"], "n": [150.0, 70.0, 120.0]})
    accuracy = parse_stated_accuracy(  # the shape of docs/api.md, "Accuracy"
        {
            "level": 0.95,
            "reason": None,
            "columns": [
                {"column": "species", "accuracy": None, "reason": "a group key"},
                {"column": "n", "aggregate": "COUNT(*)", "scale": 1.5, "accuracy": 4.5},
            ],
        }
    )
    release = QueryResult(
        query_id="q", dataset="PENGUIN", engine="smartnoise_sql", cost=cost("1"),
        result=table, dummy=False, replayed=False, created_at=T0, accuracy=accuracy,
    )  # fmt: skip
    axes = release.plot()
    assert [patch.get_height() for patch in axes.patches] == [150.0, 70.0, 120.0]
    assert [label.get_text() for label in axes.get_xticklabels()] == [
        "Adelie", "Chinstrap", "Gentoo"
    ]  # fmt: skip
    (bars,) = [c for c in axes.containers if isinstance(c, BarContainer)]
    assert bars.errorbar is not None
    segments = bars.errorbar.lines[2][0].get_segments()
    assert [(s[0][1], s[1][1]) for s in segments] == [(145.5, 154.5), (65.5, 74.5), (115.5, 124.5)]
    render(axes, tmp_path)


@pytest.mark.parametrize(
    "accuracy",
    [
        None,
        # an AVG: no analytic half-width (its components have theirs), so no error bar
        parse_stated_accuracy(
            {
                "level": 0.95,
                "reason": None,
                "columns": [{"column": "sex", "accuracy": None}, {"column": "n", "accuracy": None}],
            }
        ),
    ],
)
def test_a_release_without_a_half_width_plots_bars_without_error_bars(
    tmp_path: Path, accuracy: pd.DataFrame | None
) -> None:
    table = pd.DataFrame({"sex": ["female", "male"], "n": [160, 170]})
    release = QueryResult(
        query_id="q", dataset="PENGUIN", engine="smartnoise_sql", cost=cost("1"),
        result=table, dummy=False, replayed=False, created_at=T0, accuracy=accuracy,
    )  # fmt: skip
    axes = release.plot()
    (bars,) = [c for c in axes.containers if isinstance(c, BarContainer)]
    assert bars.errorbar is None
    assert [patch.get_height() for patch in axes.patches] == [160.0, 170.0]
    render(axes, tmp_path)


def test_without_matplotlib_a_plot_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    for name in [m for m in sys.modules if m.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"neblina-client\[plot\]"):
        budget().plot()


def test_the_client_imports_matplotlib_only_inside_the_plot_functions() -> None:
    import ast

    import neblina_client

    package = Path(neblina_client.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.parse(source.read_text()).body:  # module-level statements only
            names = (
                [alias.name for alias in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            assert not any(name.startswith("matplotlib") for name in names), source.name
