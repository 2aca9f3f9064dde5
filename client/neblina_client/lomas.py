"""Lomas's client surface over Neblina: a notebook moves by changing one line.

::

    # from lomas_client import Client
    from neblina_client.lomas import Client

    client = Client(url, "Dr. Antartica", "PENGUIN", token="nbl_...")
    client.get_remaining_budget().remaining_epsilon
    res = client.smartnoise_sql.query("SELECT COUNT(*) AS n FROM df", epsilon=1.0, delta=1e-5)
    res.result.df                       # a DataFrame, as in Lomas

What Lomas 0.4's ``lomas_client`` offers, with its names, defaults and return shapes
(``InitialBudgetResponse.initial_epsilon``, ``QueryResponse.result.df``, ...): the metadata,
dummy dataset, budget and archive methods, ``smartnoise_sql`` and ``opendp`` (a
``dp.Measurement`` built the Lomas way: ``make_split_dataframe(separator=",",
col_names=<the metadata's columns>)`` over the server's header-less CSV) and ``diffprivlib``
(a scikit-learn ``Pipeline`` of diffprivlib objects; ``result.model`` is the fitted pipeline,
rebuilt from JSON parameters, and ``result.score`` is None) and ``smartnoise_synth``
(``mst``, ``aim``, ``mwem``: ``result.df_samples`` holds the sampled rows; transformers come
from the metadata, so ``constraints`` and ``return_model=True`` are refused). Amounts come back as
floats, as in Lomas (the nearest float; the server debits exact decimals, which
``client.neblina.budget()`` shows).

The identity is the token (``token=`` or ``NEBLINA_TOKEN``), not ``user_name``, which only
fills ``requested_by``. Nothing is ever unpickled: what Lomas returned pickled has no
counterpart, and what cannot map raises :class:`NotSupportedInNeblina` naming the Neblina way.
Errors are Lomas's exception classes (``InvalidQueryException``, ...), each carrying the
Neblina error as ``error`` and its ``__cause__``.
"""

from ._lomas import (
    Client,
    CostResponse,
    DiffPrivLibQueryResult,
    ExternalLibraryException,
    InitialBudgetResponse,
    InternalServerException,
    InvalidQueryException,
    LomasException,
    NotSupportedInNeblina,
    OpenDPQueryResult,
    QueryResponse,
    RemainingBudgetResponse,
    SmartnoiseSQLQueryResult,
    SmartnoiseSynthClient,
    SmartnoiseSynthSamples,
    SpentBudgetResponse,
    UnauthorizedAccessException,
)

__all__ = [
    "Client",
    "CostResponse",
    "DiffPrivLibQueryResult",
    "ExternalLibraryException",
    "InitialBudgetResponse",
    "InternalServerException",
    "InvalidQueryException",
    "LomasException",
    "NotSupportedInNeblina",
    "OpenDPQueryResult",
    "QueryResponse",
    "RemainingBudgetResponse",
    "SmartnoiseSQLQueryResult",
    "SmartnoiseSynthClient",
    "SmartnoiseSynthSamples",
    "SpentBudgetResponse",
    "UnauthorizedAccessException",
]
