"""DP synthetic data (``client.synth``): MST, AIM and MWEM fitted on the server.

The server prices a synthesis at the request's (ε, δ), fits the synthesizer once on the
private rows as a job and releases ``nb_samples`` sampled rows (never a model object):
docs/synth.md. ``sample`` waits for the job (a progress bar on a terminal) and returns the
rows as a DataFrame; with ``wait=False`` it returns a :class:`SynthJob` at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

import pandas as pd

from ._exceptions import NeblinaError
from ._jobs import JobHandle
from ._types import Cost, QueryResult

if TYPE_CHECKING:
    from ._client import Client
    from ._jobs import Job

SYNTH = "smartnoise_synth"
SUPPORTED = ("mst", "aim", "mwem")

Amount = float | int | str  # as in _client.py


def synth_body(
    synth_name: str,
    epsilon: Amount,
    delta: Amount | None,
    select_cols: list[str] | None,
    synth_params: dict[str, float | int] | None,
    nb_samples: int | None = None,
    condition: str | None = None,
) -> dict[str, Any]:
    """The request fields of a synthesis (docs/synth.md)."""
    body: dict[str, Any] = {"engine": SYNTH, "synth_name": synth_name, "epsilon": epsilon}
    if delta is not None:
        body["delta"] = delta
    if select_cols:
        body["select_cols"] = list(select_cols)
    if synth_params:
        body["synth_params"] = dict(synth_params)
    if nb_samples is not None:
        body["nb_samples"] = nb_samples
    if condition:
        body["condition"] = condition
    return body


def _rows(answer: QueryResult) -> pd.DataFrame:
    if not isinstance(answer.result, pd.DataFrame):
        raise NeblinaError("unexpected response from the server: no rows", code="invalid_response")
    return answer.result


class Synth:
    """DP synthetic data from the client's dataset (``client.synth``): ``mst``, ``aim``,
    ``mwem``. The GAN synthesizers of Lomas are refused (``unsupported_synthesizer``)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def cost(
        self,
        synth_name: str,
        epsilon: Amount,
        delta: Amount | None = None,
        select_cols: list[str] | None = None,
        synth_params: dict[str, float | int] | None = None,
    ) -> Cost:
        """The price of a synthesis: exactly (``epsilon``, ``delta``); ``delta`` defaults to
        1e-9 for MST and AIM (snsynth's default) and is 0 for MWEM. Free; nothing is read."""
        return self._client._price(
            synth_body(synth_name, epsilon, delta, select_cols, synth_params)
        )

    @overload
    def sample(
        self,
        synth_name: str,
        epsilon: Amount,
        delta: Amount | None = ...,
        select_cols: list[str] | None = ...,
        synth_params: dict[str, float | int] | None = ...,
        *,
        nb_samples: int = ...,
        condition: str | None = ...,
        dummy: bool = ...,
        query_id: str | None = ...,
        dummy_rows: int = ...,
        dummy_seed: int = ...,
        wait: Literal[True] = ...,
    ) -> pd.DataFrame: ...

    @overload
    def sample(
        self,
        synth_name: str,
        epsilon: Amount,
        delta: Amount | None = ...,
        select_cols: list[str] | None = ...,
        synth_params: dict[str, float | int] | None = ...,
        *,
        nb_samples: int = ...,
        condition: str | None = ...,
        dummy: bool = ...,
        query_id: str | None = ...,
        dummy_rows: int = ...,
        dummy_seed: int = ...,
        wait: Literal[False],
    ) -> SynthJob: ...

    def sample(
        self,
        synth_name: str,
        epsilon: Amount,
        delta: Amount | None = None,
        select_cols: list[str] | None = None,
        synth_params: dict[str, float | int] | None = None,
        *,
        nb_samples: int = 200,
        condition: str | None = None,
        dummy: bool = False,
        query_id: str | None = None,
        dummy_rows: int = 100,
        dummy_seed: int = 42,
        wait: bool = True,
    ) -> pd.DataFrame | SynthJob:
        """Fit ``synth_name`` on the dataset (debited once: (ε, δ)) and return
        ``nb_samples`` synthetic rows; ``condition`` (a SQL WHERE clause over the selected
        columns) keeps only the rows meeting it. ``dummy=True`` fits on the dummy table,
        free. The server always runs a synthesis as a job: ``wait=False`` returns its
        :class:`SynthJob` at once."""
        body = synth_body(
            synth_name, epsilon, delta, select_cols, synth_params, nb_samples, condition
        )
        job = self._client._submit(
            body,
            query_id=query_id,
            dummy=dummy,
            dummy_rows=dummy_rows,
            dummy_seed=dummy_seed,
            wait=False,
        )
        handle = SynthJob(job)  # type: ignore[arg-type]
        return handle.wait() if wait else handle

    def job(self, query_id: str, dataset: str | None = None) -> SynthJob:
        """A handle on a synthesis submitted earlier with ``wait=False``."""
        return SynthJob(self._client.job(query_id, dataset))


class SynthJob(JobHandle):
    """A synthesis running on the server (its cost was debited at submission).

    ``status()`` gives the phase and the fraction done (MST's steps, AIM's budget spent,
    MWEM's iterations); ``wait()`` polls and returns the rows; ``answer`` the full
    :class:`QueryResult` once done (cost, query id)."""

    def __init__(self, job: Job) -> None:
        super().__init__(job)
        self.answer: QueryResult | None = None

    def wait(self, timeout: float | None = None, progress: bool | None = None) -> pd.DataFrame:
        """Poll until the synthesis ends; the synthetic rows, or the error it raised."""
        self.answer = self.job.wait(timeout=timeout, progress=progress)
        return _rows(self.answer)
