"""OpenDP pipelines on the wire, and the input space the server feeds them.

OpenDP is imported inside the functions only (install the ``opendp`` extra, at the
server's OpenDP version); nothing here runs at import time.

``dp.serialize`` writes a chain's prefix again for every ``then_`` step (as the input of
the step and inside the ``transformation_output_domain``/``_metric`` of its input), so its
JSON grows as 3^steps: 0.5 MB for an 8-step mean, 44 MB and 4 s for 12 steps. The server
accepts the same JSON with each repeated call written once, ``{"nodes": [...]}``, where a
value ``{"__ref__": i}`` stands for node ``i`` and the last node is the pipeline.
:func:`pipeline_nodes` writes that form directly, with OpenDP's own encoding of each object
(``__opendp_dict__``, as ``dp.serialize`` does), visiting each object once. It also writes
type arguments held as ``RuntimeType`` objects as their type strings, where ``dp.serialize``
fails.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

SEPARATOR = ","  # the server's CSV input: no header, columns in metadata order
FUNCTION, KWARGS, VERSION, TUPLE, REF = (
    "__function__",
    "__kwargs__",
    "__version__",
    "__tuple__",
    "__ref__",
)


class _NodeWriter:
    """OpenDP's JSON encoder (``opendp.mod._Encoder``) with shared calls written once."""

    def __init__(self, version: str) -> None:
        self.nodes: list[dict[str, Any]] = []
        self._version = version
        self._by_key: dict[str, int] = {}
        self._by_id: dict[int, int] = {}

    def encode(self, value: Any) -> Any:
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        if isinstance(value, list):
            return [self.encode(item) for item in value]
        if isinstance(value, tuple):
            return {TUPLE: [self.encode(item) for item in value]}
        if isinstance(value, dict):
            return {key: self.encode(item) for key, item in value.items()}
        if type(value).__name__ == "RuntimeType":
            # A type argument left at a RuntimeType default (e.g. make_count_by_categories's
            # MO in OpenDP 0.14.2), which dp.serialize cannot write: its string, e.g.
            # "L1Distance<i32>", parses back to the same type.
            return str(value)
        recipe = getattr(value, "__opendp_dict__", None)
        if not isinstance(recipe, dict):
            raise TypeError(
                f"cannot send {type(value).__name__} objects: only OpenDP objects built by "
                "OpenDP constructors can be serialized"
            )
        if id(value) not in self._by_id:
            node = {**self.encode(recipe), VERSION: self._version}
            key = json.dumps(node, sort_keys=True)
            if key not in self._by_key:
                self._by_key[key] = len(self.nodes)
                self.nodes.append(node)
            self._by_id[id(value)] = self._by_key[key]
        return {REF: self._by_id[id(value)]}


def pipeline_nodes(measurement: Any) -> dict[str, Any]:
    """``{"nodes": [...]}``: ``dp.serialize(measurement)`` with shared calls written once."""
    from opendp.mod import __version__ as opendp_version

    writer = _NodeWriter(opendp_version)
    root = writer.encode(measurement)
    if not (isinstance(root, dict) and root.get(REF) == len(writer.nodes) - 1):
        raise TypeError(f"expected an OpenDP Measurement, got {type(measurement).__name__}")
    return {"nodes": writer.nodes}


def expand(pipeline: dict[str, Any]) -> Any:
    """The ``dp.serialize`` JSON (as Python objects) of a ``{"nodes": [...]}`` pipeline."""
    nodes = pipeline["nodes"]
    expanded: list[Any] = []

    def resolve(value: Any) -> Any:
        if isinstance(value, list):
            return [resolve(item) for item in value]
        if isinstance(value, dict):
            if set(value) == {REF}:
                return expanded[value[REF]]
            return {key: resolve(item) for key, item in value.items()}
        return value

    for node in nodes:
        expanded.append(resolve(node))
    return expanded[-1]


def input_space(columns: list[str], column: str | None = None) -> Any:
    """The start of every pipeline: the server's CSV text read as a dataframe of strings.

    With ``column``, that column selected as a vector of strings.
    """
    from opendp.transformations import make_select_column, make_split_dataframe

    with warnings.catch_warnings():  # "deprecated: use polars"; the server has no polars
        warnings.simplefilter("ignore", DeprecationWarning)
        frame = make_split_dataframe(separator=SEPARATOR, col_names=list(columns))
        if column is None:
            return frame
        if column not in columns:
            raise ValueError(f"no column {column!r} (columns: {', '.join(columns)})")
        return frame >> make_select_column(key=column, TOA=str)
