"""``neblina-admin import lomas``: a Lomas 0.4.x administration database, brought across.

Reads either form of Lomas's administration database:

- its YAML file (what a Lomas server with ``admin_database: {db_type: yaml}`` loads):
  ``users``, ``datasets`` and ``queries``; metadata files named by each dataset's
  ``metadata_access`` (paths relative to the YAML file);
- a directory of ``mongoexport`` files (``users``, ``datasets``, ``metadata``,
  ``queries_archives``, each ``<name>.json`` or ``<name>.jsonl``: one document per line or
  one JSON array; MongoDB Extended JSON such as ``{"$oid": ...}`` is understood).

and turns it into Neblina's declarative form (:mod:`neblina_admin.declarative`) plus what
that form cannot hold: each grant's spending and the query archive.

Amounts. Lomas stores budgets and costs as binary floats; each becomes the decimal of the
float's shortest repr (``Decimal(repr(x))``: 3.2 is 3.2, 1e-05 is 0.00001), the number Lomas
itself prints. Initial budgets are then rounded *down* to the ledger's grid (1e-20), costs
and spending *up* (:func:`chalicelib.models.charge`). A grant's spent is the largest of
Lomas's ``total_spent``, the sum of its archived costs, and ``initial - remaining`` where
``remaining`` is the float Lomas computes (``initial - spent`` in floating point): so the
imported remaining is never above the remaining Lomas would report.

History. Each archived Lomas query becomes a finished record (``engine`` ``lomas:<library>``,
its original timestamp, request and cost; result null). The Lomas response is kept under
``request.lomas.response`` except pickled objects (DiffPrivLib and SmartNoise-Synth models),
which are never unpickled: they are dropped with a note. The records are debited through the
ledger (:func:`neblina_admin.operations.open_grant`), then one ``import`` record carries the
spending the archive does not explain. Their ``payload_hash`` is no request's, so no query
can replay or re-run them.

Nothing is written unless every part is valid: :func:`convert` collects every refusal with its
reason; :func:`plan` adds what clashes with the store; :func:`apply` writes only when both
are empty.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from chalicelib import metadata as metadata_module
from chalicelib.auth import IssuedToken
from chalicelib.config import Settings
from chalicelib.errors import InvalidRequest
from chalicelib.models import (
    AMOUNT_QUANTUM,
    AmountOutOfRange,
    Dataset,
    PrivacyCost,
    QueryRecord,
    QueryState,
    User,
    charge,
    format_decimal,
    to_decimal,
    utcnow,
)
from chalicelib.storage import Store
from neblina_admin import operations as admin
from neblina_admin.declarative import Desired, DesiredDataset

log = logging.getLogger(__name__)

COLLECTIONS = ("users", "datasets", "metadata", "queries_archives")
LIBRARIES = ("smartnoise_sql", "opendp", "diffprivlib", "smartnoise_synth")
# Column keys of Lomas 0.4 metadata that only its OpenDP-Polars margins read; Neblina has
# no use for them, so they are dropped (with a note) rather than refused.
_POLARS_MARGIN_KEYS = frozenset(
    {"max_partition_length", "max_influenced_partitions", "max_partition_contributions"}
)
_PICKLED = "dropped: a pickled object is never unpickled (Neblina releases no pickles)"
_MAX_KEPT_RESPONSE = 64 * 1024  # bytes of JSON kept per archived response
_NAME_JUNK = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class LomasImport:
    """What a Lomas database becomes, and what is refused or worth knowing."""

    source: str
    form: str  # "yaml" or "mongoexport"
    desired: Desired = field(default_factory=Desired)
    history: dict[tuple[str, str], list[QueryRecord]] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)  # Lomas name -> Neblina name
    iam: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def archive_count(self) -> int:
        """How many archived Lomas queries come across."""
        return sum(len(records) for records in self.history.values())


# reading ----------------------------------------------------------------------------------
def _extended(document: dict[str, Any]) -> Any:
    """MongoDB Extended JSON (relaxed or canonical) to plain values."""
    if len(document) == 1:
        ((key, value),) = document.items()
        if key == "$oid":
            return str(value)
        if key in ("$numberDouble", "$numberDecimal"):
            return float(value)
        if key in ("$numberInt", "$numberLong"):
            return int(value)
        if key == "$date":
            return value
    return document


def _json_documents(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            documents = json.loads(text, object_hook=_extended)
        else:
            documents = [
                json.loads(line, object_hook=_extended)
                for line in text.splitlines()
                if line.strip()
            ]
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{path} is not mongoexport JSON: {exc}") from exc
    if not isinstance(documents, list) or not all(isinstance(d, dict) for d in documents):
        raise InvalidRequest(f"{path}: expected JSON documents (objects)")
    return documents


def read(source: Path) -> dict[str, Any]:
    """The raw collections of a Lomas YAML file or ``mongoexport`` directory."""
    if source.is_dir():
        raw: dict[str, Any] = {"form": "mongoexport"}
        for name in COLLECTIONS:
            candidates = [source / f"{name}.json", source / f"{name}.jsonl"]
            found = [p for p in candidates if p.is_file()]
            if not found and name != "queries_archives":
                raise InvalidRequest(f"{source}: no {name}.json (mongoexport -c {name})")
            raw[name] = _json_documents(found[0]) if found else []
        return raw
    import yaml

    try:
        document = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidRequest(f"cannot read {source}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"{source} is not valid YAML: {exc}") from exc
    if not isinstance(document, dict) or not {"users", "datasets"} <= set(document):
        raise InvalidRequest(f"{source}: a Lomas YAML database has users and datasets")
    return {
        "form": "yaml",
        "users": document.get("users") or [],
        "datasets": document.get("datasets") or [],
        "metadata": None,  # read from each dataset's metadata_access
        "queries_archives": document.get("queries") or [],
    }


# amounts ----------------------------------------------------------------------------------
def lomas_decimal(value: object) -> Decimal:
    """A Lomas float as the decimal of its shortest repr (a YAML ``1e-05`` string included)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"not a number: {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ValueError(f"not a number: {value!r}")
    result = to_decimal(value)
    if result < 0:
        raise ValueError(f"negative: {value!r}")
    return result


def _floor(value: Decimal) -> Decimal:
    return value.quantize(AMOUNT_QUANTUM, rounding=ROUND_FLOOR).normalize()


def _as_float(value: object) -> float:
    return float(value) if isinstance(value, (int, float, str)) else float(str(value))


# names ------------------------------------------------------------------------------------
def _rename(item: str, kind: str, imported: LomasImport, taken: dict[str, str]) -> str | None:
    """The Neblina name of a Lomas user or dataset name (runs of other characters -> ``_``)."""
    if not isinstance(item, str) or not item.strip():
        imported.problems.append(f"{kind} {item!r}: the name is empty or not a string")
        return None
    name = _NAME_JUNK.sub("_", item.strip()).strip("_") or "_"
    try:
        name = admin.user_id(name) if kind == "user" else admin.dataset_name(name)
    except InvalidRequest as exc:
        imported.problems.append(f"{kind} {item!r}: {exc.message}")
        return None
    if name in taken:
        imported.problems.append(
            f"{kind} {item!r}: duplicate (as {name!r}, also {taken[name]!r} in Lomas)"
        )
        return None
    taken[name] = item
    if name != item:
        imported.renamed[item] = name
    return name


# datasets ---------------------------------------------------------------------------------
def _access(spec: object, where: str) -> tuple[str, dict[str, Any]]:
    """``(kind, spec)`` of a Lomas ``*_access``; kind ``PATH_DB`` or ``S3_DB``."""
    if not isinstance(spec, dict):
        raise InvalidRequest(f"{where} must be a mapping with database_type")
    kind = spec.get("database_type")
    if kind not in ("PATH_DB", "S3_DB"):
        raise InvalidRequest(f"{where}: database_type {kind!r} is not PATH_DB or S3_DB")
    return str(kind), spec


def _s3_uri(spec: dict[str, Any], where: str) -> str:
    bucket, key = spec.get("bucket"), spec.get("key")
    if not isinstance(bucket, str) or not isinstance(key, str) or not bucket or not key:
        raise InvalidRequest(f"{where}: an S3_DB needs bucket and key")
    return f"s3://{bucket}/{key.lstrip('/')}"


def _data_source(
    name: str, spec: object, base: Path, imported: LomasImport
) -> str:  # raises InvalidRequest
    kind, access = _access(spec, f"dataset {name}: dataset_access")
    if kind == "PATH_DB":
        path = access.get("path")
        if not isinstance(path, str) or not path:
            raise InvalidRequest(f"dataset {name}: a PATH_DB needs a path")
        return admin.normalise_source(path, base)
    uri = _s3_uri(access, f"dataset {name}: dataset_access")
    credentials = access.get("credentials_name")
    message = f"{name}: {uri} needs s3:GetObject for the API's IAM role"
    if credentials:
        message += f" (Lomas credentials {credentials!r} were not copied)"
    endpoint = access.get("endpoint_url")
    if isinstance(endpoint, str) and endpoint and "amazonaws.com" not in endpoint:
        message += f"; Lomas read it from {endpoint}: copy the object to S3 first"
    imported.iam.append(message)
    if access.get("access_key_id") or access.get("secret_access_key"):
        imported.notes.append(f"dataset {name}: S3 keys stored in Lomas's database not copied")
    return uri


def _read_metadata_access(
    name: str,
    spec: object,
    base: Path,
    fetch: Callable[[str], bytes] | None,
) -> object:
    import yaml

    kind, access = _access(spec, f"dataset {name}: metadata_access")
    if kind == "S3_DB":
        where = _s3_uri(access, f"dataset {name}: metadata_access")
    else:
        path = access.get("path")
        if not isinstance(path, str) or not path:
            raise InvalidRequest(f"dataset {name}: metadata_access needs a path")
        where = path
    scheme = urlparse(where).scheme
    if scheme in ("s3", "http", "https"):
        if fetch is None:
            raise InvalidRequest(f"dataset {name}: metadata at {where} cannot be fetched here")
        try:
            text = fetch(where).decode("utf-8")
        except Exception as exc:
            raise InvalidRequest(f"dataset {name}: metadata {where} unreadable: {exc}") from exc
    else:
        file = Path(where) if Path(where).is_absolute() else base / where
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidRequest(
                f"dataset {name}: cannot read metadata file {file}: {exc.strerror}"
            ) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"dataset {name}: metadata {where} is not YAML: {exc}") from exc


def _metadata(name: str, raw: object, imported: LomasImport) -> dict[str, Any]:
    if isinstance(raw, dict) and isinstance(raw.get("columns"), dict):
        dropped = []
        columns = {}
        for column, spec in raw["columns"].items():
            if isinstance(spec, dict):
                kept = {k: v for k, v in spec.items() if k not in _POLARS_MARGIN_KEYS}
                dropped += [f"{column}.{k}" for k in spec if k in _POLARS_MARGIN_KEYS]
                columns[column] = kept
            else:
                columns[column] = spec
        raw = {**raw, "columns": columns}
        if dropped:
            imported.notes.append(
                f"dataset {name}: OpenDP-Polars margins dropped (unused): {', '.join(dropped)}"
            )
    try:
        return metadata_module.validate(raw)
    except InvalidRequest as exc:
        raise InvalidRequest(f"dataset {name}: {exc.message}") from exc


# the conversion ---------------------------------------------------------------------------
def convert(
    raw: dict[str, Any],
    base: Path,
    *,
    source: str = "",
    fetch: Callable[[str], bytes] | None = None,
    drop_orphans: bool = False,
) -> LomasImport:
    """Turn Lomas's collections into Neblina's; every refusal goes to ``problems``."""
    imported = LomasImport(source=source, form=str(raw.get("form", "yaml")))
    desired = imported.desired
    raw = dict(raw)
    for collection in ("users", "datasets", "queries_archives"):
        if not isinstance(raw.get(collection) or [], list):
            imported.problems.append(f"{collection}: must be a list of documents")
            raw[collection] = []
    dataset_names: dict[str, str] = {}
    metadata_docs = _metadata_documents(raw.get("metadata"), imported)
    for entry in raw.get("datasets") or []:
        lomas_name = entry.get("dataset_name") if isinstance(entry, dict) else None
        name = _rename(str(lomas_name or ""), "dataset", imported, dataset_names)
        if name is None or not isinstance(entry, dict):
            continue
        try:
            data = _data_source(name, entry.get("dataset_access"), base, imported)
            if metadata_docs is None:
                meta_raw = _read_metadata_access(name, entry.get("metadata_access"), base, fetch)
            elif lomas_name in metadata_docs:
                meta_raw = metadata_docs[str(lomas_name)]
            else:
                raise InvalidRequest(f"dataset {name}: no document in the metadata collection")
            meta = _metadata(name, meta_raw, imported)
        except InvalidRequest as exc:
            imported.problems.append(exc.message)
            continue
        from chalicelib.datasets import source_format

        try:
            fmt = source_format(data, None)
        except InvalidRequest as exc:
            imported.problems.append(f"dataset {name}: {exc.message}")
            continue
        desired.datasets[name] = DesiredDataset(
            name=name,
            source=data,
            metadata=meta,
            source_format=fmt,
            description=str(meta.get("description") or f"imported from Lomas ({lomas_name})"),
            cap=None,
        )
    lomas_grants = _users(raw.get("users") or [], imported, dataset_names)
    _archive(raw.get("queries_archives") or [], imported, dataset_names, drop_orphans)
    for key, (initial, spent_floats) in lomas_grants.items():
        _spent(key, initial, spent_floats, imported)
    return imported


def _metadata_documents(docs: object, imported: LomasImport) -> dict[str, Any] | None:
    """Lomas's ``metadata`` collection (``{<dataset>: <metadata>}`` per document)."""
    if docs is None:
        return None
    found: dict[str, Any] = {}
    for document in docs if isinstance(docs, list) else []:
        for key, value in document.items():
            if key == "_id":
                continue
            if key in found:
                imported.problems.append(f"metadata of {key!r} appears twice")
            found[key] = value
    return found


def _users(
    entries: list[Any], imported: LomasImport, datasets: dict[str, str]
) -> dict[tuple[str, str], tuple[PrivacyCost, tuple[float, float, float, float]]]:
    """Users and grants; returns each grant's initial and Lomas's four floats."""
    by_lomas_dataset = {lomas: neblina for neblina, lomas in datasets.items()}
    user_names: dict[str, str] = {}
    grants: dict[tuple[str, str], tuple[PrivacyCost, tuple[float, float, float, float]]] = {}
    for entry in entries:
        lomas_user = entry.get("user_name") if isinstance(entry, dict) else None
        uid = _rename(str(lomas_user or ""), "user", imported, user_names)
        if uid is None or not isinstance(entry, dict):
            continue
        may_query = entry.get("may_query", True)
        if not isinstance(may_query, bool):
            imported.problems.append(f"user {lomas_user!r}: may_query must be true or false")
            continue
        description = f"imported from Lomas (user_name {lomas_user!r})"
        if not may_query:
            imported.notes.append(
                f"user {uid}: may_query false in Lomas, imported disabled (Lomas also sets "
                "it while a query runs or after one crashed: `users enable` if so)"
            )
        imported.desired.users[uid] = User(uid, utcnow(), not may_query, description)
        for grant in entry.get("datasets_list") or []:
            where = f"user {lomas_user!r}: grant"
            if not isinstance(grant, dict):
                imported.problems.append(f"{where}: not a mapping")
                continue
            lomas_dataset = grant.get("dataset_name")
            where = f"user {lomas_user!r}: grant on {lomas_dataset!r}"
            name = by_lomas_dataset.get(str(lomas_dataset))
            if name is None:
                imported.problems.append(f"{where}: no such dataset in the Lomas datasets")
                continue
            if (uid, name) in grants:
                imported.problems.append(f"{where}: appears twice")
                continue
            try:
                fields = [
                    "initial_epsilon",
                    "initial_delta",
                    "total_spent_epsilon",
                    "total_spent_delta",
                ]
                values = [lomas_decimal(grant.get(f, 0 if "spent" in f else None)) for f in fields]
                initial = admin.budget(epsilon=_floor(values[0]), delta=_floor(values[1]))
            except (ValueError, InvalidRequest) as exc:
                imported.problems.append(f"{where}: {getattr(exc, 'message', exc)}")
                continue
            floats = tuple(_as_float(v) for v in values)
            grants[(uid, name)] = (initial, (floats[0], floats[1], floats[2], floats[3]))
            imported.desired.grants[(uid, name)] = initial
    return grants


def _spent(
    key: tuple[str, str],
    initial: PrivacyCost,
    floats: tuple[float, float, float, float],
    imported: LomasImport,
) -> None:
    """The grant's spent: never below Lomas's, its archive's, or initial - Lomas's remaining."""
    uid, name = key
    initial_e, initial_d, spent_e, spent_d = floats
    booked = sum((r.cost for r in imported.history.get(key, [])), PrivacyCost.zero())

    reasons: set[str] = set()

    def largest(
        spent: float, initial_float: float, initial_dec: Decimal, archived: Decimal
    ) -> Decimal:
        lomas_spent = lomas_decimal(spent)
        lomas_remaining = lomas_decimal(max(initial_float - spent, 0.0))  # Lomas's float
        if archived > lomas_spent:
            reasons.add("its archived costs, each rounded up to the 1e-20 grid, sum to more")
        if initial_dec - lomas_remaining > max(lomas_spent, archived):
            reasons.add("Lomas's float remaining (initial - spent) is below initial - spent")
        return charge(max(lomas_spent, archived, initial_dec - lomas_remaining))

    try:
        spent = PrivacyCost(
            epsilon=largest(spent_e, initial_e, initial.epsilon, booked.epsilon),
            delta=largest(spent_d, initial_d, initial.delta, booked.delta),
        )
    except AmountOutOfRange as exc:
        imported.problems.append(f"grant {uid} on {name}: spent {exc}")
        return
    if not spent <= initial:
        imported.problems.append(
            f"grant {uid} on {name}: spent (epsilon {format_decimal(spent.epsilon)}, delta "
            f"{format_decimal(spent.delta)}) is above the initial budget"
        )
        return
    exact = PrivacyCost(epsilon=lomas_decimal(spent_e), delta=lomas_decimal(spent_d))
    if spent != exact:
        reasons = reasons or {"rounded up to the ledger's 1e-20 grid"}
        imported.notes.append(
            f"grant {uid} on {name}: spent raised from Lomas's epsilon "
            f"{format_decimal(exact.epsilon)}, delta {format_decimal(exact.delta)} to epsilon "
            f"{format_decimal(spent.epsilon)}, delta {format_decimal(spent.delta)} "
            f"({'; '.join(sorted(reasons))}): remaining never exceeds Lomas's"
        )
    if spent != PrivacyCost.zero():
        imported.desired.spent[key] = spent


def _archive(
    entries: list[Any], imported: LomasImport, datasets: dict[str, str], drop_orphans: bool
) -> None:
    by_lomas_dataset = {lomas: neblina for neblina, lomas in datasets.items()}
    renamed = imported.renamed
    orphans = 0
    for i, entry in enumerate(entries):
        where = f"archived query #{i + 1}"
        if not isinstance(entry, dict):
            imported.problems.append(f"{where}: not a mapping")
            continue
        lomas_user, lomas_dataset = entry.get("user_name"), entry.get("dataset_name")
        uid = renamed.get(str(lomas_user), str(lomas_user))
        name = by_lomas_dataset.get(str(lomas_dataset))
        if (
            uid not in imported.desired.users
            or name is None
            or (uid, name) not in imported.desired.grants
        ):
            if drop_orphans:
                orphans += 1
                continue
            imported.problems.append(
                f"{where} ({lomas_user!r} on {lomas_dataset!r}): no such grant in the Lomas "
                "users (it was revoked?); pass --drop-orphan-queries to leave it behind"
            )
            continue
        try:
            record = _record(entry, uid, name, i)
        except (ValueError, InvalidRequest, AmountOutOfRange) as exc:
            imported.problems.append(f"{where}: {getattr(exc, 'message', exc)}")
            continue
        imported.history.setdefault((uid, name), []).append(record)
    if orphans:
        imported.notes.append(f"{orphans} archived queries without a grant left behind")
    for records in imported.history.values():
        records.sort(key=lambda r: r.created_at)


def _clean(value: Any) -> Any:
    """JSON-safe copy (Decimals as strings)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float) and value != value:
        return None
    return value


def _record(entry: dict[str, Any], uid: str, name: str, ordinal: int) -> QueryRecord:
    library = entry.get("dp_librairy", entry.get("dp_library"))
    if library not in LIBRARIES:
        raise InvalidRequest(f"unknown dp_librairy {library!r}")
    response = entry.get("response")
    if not isinstance(response, dict):
        raise InvalidRequest("no response (its cost is unknown)")
    cost = PrivacyCost(
        epsilon=charge(lomas_decimal(response.get("epsilon"))),
        delta=charge(lomas_decimal(response.get("delta", 0) or 0)),
    )
    stamp = entry.get("timestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)):
        raise InvalidRequest(f"timestamp {stamp!r} is not epoch seconds")
    created = datetime.fromtimestamp(float(stamp), UTC)
    kept = _clean({k: v for k, v in response.items() if k != "result"})
    notes = []
    result = response.get("result")
    if isinstance(result, dict):
        result = dict(result)
        if "model" in result:
            result["model"] = _PICKLED
            notes.append("the pickled model was dropped, never unpickled")
        body = json.dumps(_clean(result), sort_keys=True)
        if len(body) > _MAX_KEPT_RESPONSE:
            result = {"res_type": result.get("res_type"), "dropped": "larger than 64 KiB"}
            notes.append("the result was larger than 64 KiB and was dropped")
        kept["result"] = _clean(result)
    client_input = _clean(entry.get("client_input") or {})
    document = json.dumps([ordinal, uid, name, stamp, client_input], sort_keys=True, default=str)
    digest = hashlib.sha256(document.encode()).hexdigest()
    notes.append("imported from Lomas: read-only history, never replayed or re-run")
    return QueryRecord(
        query_id=f"lomas-{digest[:40]}",
        user_id=uid,
        dataset=name,
        engine=f"lomas:{library}",
        payload_hash=admin.IMPORTED,
        request={
            "lomas": {
                "library": library,
                "client_input": client_input,
                "response": kept,
                "timestamp": float(stamp),  # exact: a MongoDB date keeps milliseconds
            },
            "note": "; ".join(notes),
        },
        cost=cost,
        state=QueryState.RUNNING,
        created_at=created,
        lease_expires_at=created,
        finished_at=created,
    )


# plan and apply ---------------------------------------------------------------------------
def plan(store: Store, imported: LomasImport) -> tuple[list[str], list[str]]:
    """The lines of the plan, and every problem (the conversion's and the store's)."""
    problems = list(imported.problems)
    desired = imported.desired
    users = {u.user_id for u in store.list_users()}
    datasets = {d.name for d in store.list_datasets()}
    lines = [
        f"Lomas import of {imported.source} ({imported.form}): {len(desired.users)} users, "
        f"{len(desired.datasets)} datasets, {len(desired.grants)} grants, "
        f"{imported.archive_count()} archived queries"
    ]
    back = {neblina: lomas for lomas, neblina in imported.renamed.items()}
    for uid, user in desired.users.items():
        if uid in users:
            problems.append(f"user {uid} already exists in Neblina (import only creates)")
        extra = [f"Lomas {back[uid]!r}"] if uid in back else []
        extra += ["disabled"] if user.disabled else []
        lines.append(f"  + user {uid}" + (f" ({', '.join(extra)})" if extra else ""))
    for name, spec in desired.datasets.items():
        if name in datasets:
            problems.append(f"dataset {name} already exists in Neblina (import only creates)")
        lines.append(f"  + dataset {name}: source {spec.source}")
    for (uid, name), initial in desired.grants.items():
        spent = desired.spent.get((uid, name), PrivacyCost.zero())
        records = imported.history.get((uid, name), [])
        lines.append(
            f"  + grant {uid} on {name}: {_amounts(initial)}; spent {_amounts(spent)} "
            f"({len(records)} archived queries)"
        )
    counts: dict[str, int] = {}
    for records in imported.history.values():
        for record in records:
            counts[record.engine] = counts.get(record.engine, 0) + 1
    if counts:
        lines.append(
            "  + archive: " + ", ".join(f"{n} {engine}" for engine, n in sorted(counts.items()))
        )
    return lines, problems


def _amounts(cost: PrivacyCost) -> str:
    return f"epsilon {format_decimal(cost.epsilon)}, delta {format_decimal(cost.delta)}"


def apply(
    store: Store, imported: LomasImport, settings: Settings | None = None
) -> dict[str, IssuedToken]:
    """Write everything (users, datasets, grants with their history), then one token per user.

    Refused (``InvalidRequest``, nothing written) while :func:`plan` lists any problem. With
    ``settings``, each dataset's CSV source in S3 is converted to its Parquet copy, as
    ``datasets add`` does (:func:`neblina_admin.operations.columnar_copy`; a failed
    conversion is logged and the workers read the source).
    """
    _, problems = plan(store, imported)
    if problems:
        raise InvalidRequest("nothing imported: " + "; ".join(problems))
    desired = imported.desired
    for user in desired.users.values():
        store.put_user(user, create_only=True)
    for spec in desired.datasets.values():
        columnar = None
        if settings is not None:
            dataset = Dataset(
                spec.name, spec.source, spec.metadata, utcnow(), source_format=spec.source_format
            )
            try:
                columnar = admin.columnar_copy(settings, dataset)
            except Exception as exc:  # the workers read the source, as before copies
                log.warning("dataset %s: no Parquet copy (%s)", spec.name, exc)
        admin.add_dataset(
            store,
            spec.name,
            spec.source,
            spec.metadata,
            description=spec.description,
            source_format=spec.source_format,
            columnar=columnar,
        )
    for (uid, name), initial in desired.grants.items():
        admin.open_grant(
            store,
            uid,
            name,
            initial,
            desired.spent.get((uid, name), PrivacyCost.zero()),
            imported.history.get((uid, name), []),
            note="spent in Lomas without an archived query (Lomas's total_spent)",
        )
    return {uid: admin.add_token(store, uid) for uid in desired.users}


def document(imported: LomasImport) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The declarative file (with each grant's ``spent``) and the metadata by dataset."""
    desired = imported.desired
    users: list[dict[str, Any]] = []
    for uid, user in desired.users.items():
        entry: dict[str, Any] = {"id": uid, "description": user.description}
        if user.disabled:
            entry["disabled"] = True
        users.append(entry)
    datasets = [
        {
            "name": name,
            "source": spec.source,
            "metadata": f"metadata/{name}.yaml",
            "format": spec.source_format,
            "description": spec.description,
        }
        for name, spec in desired.datasets.items()
    ]
    grants = []
    for (uid, name), initial in desired.grants.items():
        grant: dict[str, Any] = {"user": uid, "dataset": name, **initial.to_json()}
        if (uid, name) in desired.spent:
            grant["spent"] = desired.spent[(uid, name)].to_json()
        grants.append(grant)
    metadata = {name: spec.metadata for name, spec in desired.datasets.items()}
    return {"users": users, "datasets": datasets, "grants": grants}, metadata


def iter_history(imported: LomasImport) -> Iterator[QueryRecord]:
    """Every imported record, oldest first."""
    records = [r for rs in imported.history.values() for r in rs]
    yield from sorted(records, key=lambda r: r.created_at)
