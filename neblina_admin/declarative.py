"""Declarative administration: one YAML file of users, datasets and grants; plan and apply.

::

    users:
      - id: alice
        description: Alice (statistics office)      # optional
        disabled: false                             # optional
    datasets:
      - name: PENGUIN
        source: s3://neblina-datasets/PENGUIN/penguins.csv   # or https://..., or a path
        metadata: data/penguin.yaml                 # relative to this file
        format: csv                                 # optional (from the extension)
        description: ...                            # optional (else the metadata's)
        cap: {epsilon: 50, delta: 0.01}             # optional dataset-wide budget
        per_query_cap: {epsilon: 2, delta: 1.0e-5}  # optional: the most one query may cost
        hardened: true                              # optional: fixed latency buckets, ...
        latency_bucket_ms: 500                      # ... of this size (default 500)
    grants:
      - {user: alice, dataset: PENGUIN, epsilon: 10, delta: 0.001}
      - {user: bob, dataset: PENGUIN, epsilon: 10, delta: 0.001,
         spent: {epsilon: 3.2, delta: 0.00001}}     # optional: an opening balance

``spent`` (what ``import lomas`` writes) is what a new grant has already spent elsewhere: it is
debited once, when the grant is created, through the ledger (an ``import`` record in the
archive, :func:`neblina_admin.operations.open_grant`); on an existing grant it is ignored, as
stored spending only ever grows through queries.

The file is the whole desired state, as in Terraform: what is stored but not in the file is
removed (a removed user's tokens are revoked; the archive is never deleted). ``plan``
compares and changes nothing; ``apply`` validates everything first (metadata, budgets,
references, grants below what was spent, and each new or changed source read as the engines
read it and checked against its metadata) and writes only when all of it is valid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from chalicelib.config import Settings
from chalicelib.errors import InvalidRequest
from chalicelib.models import (
    Dataset,
    DatasetCap,
    Grant,
    PrivacyCost,
    User,
    format_decimal,
    utcnow,
)
from chalicelib.storage import Store
from neblina_admin import operations as admin

log = logging.getLogger(__name__)

_TOP_KEYS = {"users", "datasets", "grants"}
_USER_KEYS = {"id", "description", "disabled"}
_DATASET_KEYS = {
    "name",
    "source",
    "metadata",
    "format",
    "description",
    "cap",
    "per_query_cap",
    "hardened",
    "latency_bucket_ms",
}
_GRANT_KEYS = {"user", "dataset", "epsilon", "delta"}
_GRANT_OPTIONAL = {"spent"}


@dataclass(frozen=True)
class DesiredDataset:
    """A dataset as the file describes it (metadata loaded and validated)."""

    name: str
    source: str
    metadata: dict[str, Any]
    source_format: str
    description: str
    cap: PrivacyCost | None
    per_query_cap: PrivacyCost | None = None
    hardened: bool = False
    latency_bucket_ms: int | None = None


@dataclass
class Desired:
    """The whole desired state of a file."""

    users: dict[str, User] = field(default_factory=dict)
    datasets: dict[str, DesiredDataset] = field(default_factory=dict)
    grants: dict[tuple[str, str], PrivacyCost] = field(default_factory=dict)
    spent: dict[tuple[str, str], PrivacyCost] = field(default_factory=dict)  # opening balances


@dataclass(frozen=True)
class Change:
    """One line of a plan: ``action`` is create, update or remove."""

    action: str
    kind: str  # user, dataset, cap, grant
    key: str
    details: tuple[str, ...] = ()
    run: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def line(self) -> str:
        """``+ user alice``, ``~ grant alice on PENGUIN: epsilon 10 -> 20``."""
        sign = {"create": "+", "update": "~", "remove": "-"}[self.action]
        text = f"  {sign} {self.kind} {self.key}"
        return text + (": " + "; ".join(self.details) if self.details else "")

    def to_json(self) -> dict[str, Any]:
        """The change as data (for ``--json``)."""
        return {
            "action": self.action,
            "kind": self.kind,
            "key": self.key,
            "details": list(self.details),
        }


def _problem(problems: list[str], where: str, exc: Exception) -> None:
    problems.append(f"{where}: {getattr(exc, 'message', str(exc))}")


def _entries(raw: dict[str, Any], key: str, problems: list[str]) -> list[dict[str, Any]]:
    value = raw.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        problems.append(f"{key}: must be a list of mappings")
        return []
    return value


def _keys(entry: dict[str, Any], allowed: set[str], required: set[str], where: str) -> list[str]:
    problems = []
    unknown = sorted(set(entry) - allowed)
    if unknown:
        problems.append(f"{where}: unknown keys {', '.join(unknown)}")
    missing = sorted(required - set(entry))
    if missing:
        problems.append(f"{where}: missing {', '.join(missing)}")
    return problems


def parse(raw: object, base: Path) -> Desired:
    """Validate a loaded document; raises ``InvalidRequest`` listing every problem."""
    problems: list[str] = []
    desired = Desired()
    # entries already reported as invalid: grants naming them get no second, misleading
    # "not among the file's ..." problem
    invalid_users: set[str] = set()
    invalid_datasets: set[str] = set()
    if not isinstance(raw, dict):
        raise InvalidRequest("the file must be a mapping with users, datasets and grants")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        problems.append(f"unknown top-level keys: {', '.join(unknown)}")
    for i, entry in enumerate(_entries(raw, "users", problems)):
        where = f"users[{i}]"
        problems += _keys(entry, _USER_KEYS, {"id"}, where)
        try:
            uid = admin.user_id(str(entry.get("id", "")))
        except InvalidRequest as exc:
            _problem(problems, where, exc)
            invalid_users.add(str(entry.get("id", "")))
            continue
        if uid in desired.users:
            problems.append(f"{where}: user {uid} appears twice")
        disabled = entry.get("disabled", False)
        if not isinstance(disabled, bool):
            problems.append(f"{where}: disabled must be true or false")
        desired.users[uid] = User(
            user_id=uid,
            created_at=utcnow(),
            disabled=bool(disabled),
            description=str(entry.get("description", "")),
        )
    for i, entry in enumerate(_entries(raw, "datasets", problems)):
        where = f"datasets[{i}]"
        problems += _keys(entry, _DATASET_KEYS, {"name", "source", "metadata"}, where)
        try:
            name = admin.dataset_name(str(entry.get("name", "")))
            where = f"datasets.{name}"
            source = admin.normalise_source(str(entry.get("source", "")), base)
            metadata = admin.read_metadata(base / str(entry.get("metadata", "")))
            cap = None
            if entry.get("cap") is not None:
                spec = entry["cap"]
                if not isinstance(spec, dict) or set(spec) != {"epsilon", "delta"}:
                    raise InvalidRequest("cap must be {epsilon: ..., delta: ...}")
                cap = admin.budget(epsilon=spec["epsilon"], delta=spec["delta"])
            fmt = entry.get("format")
            if fmt not in (None, "csv", "parquet"):
                raise InvalidRequest(f"unknown format {fmt!r}: csv or parquet")
            per_query = None
            if entry.get("per_query_cap") is not None:
                spec = entry["per_query_cap"]
                if not isinstance(spec, dict) or set(spec) != {"epsilon", "delta"}:
                    raise InvalidRequest("per_query_cap must be {epsilon: ..., delta: ...}")
                per_query = admin.per_query_cap(epsilon=spec["epsilon"], delta=spec["delta"])
            hardened = entry.get("hardened", False)
            if not isinstance(hardened, bool):
                raise InvalidRequest("hardened must be true or false")
            bucket = entry.get("latency_bucket_ms")
            if bucket is not None:
                bucket = admin.latency_bucket_ms(bucket)
        except InvalidRequest as exc:
            _problem(problems, where, exc)
            invalid_datasets.add(str(entry.get("name", "")))
            continue
        if name in desired.datasets:
            problems.append(f"{where}: dataset {name} appears twice")
        from chalicelib.datasets import source_format

        desired.datasets[name] = DesiredDataset(
            name=name,
            source=source,
            metadata=metadata,
            source_format=source_format(source, fmt),
            description=str(entry.get("description") or metadata.get("description", "")),
            cap=cap,
            per_query_cap=per_query,
            hardened=hardened,
            latency_bucket_ms=bucket,
        )
    for i, entry in enumerate(_entries(raw, "grants", problems)):
        where = f"grants[{i}]"
        problems += _keys(entry, _GRANT_KEYS | _GRANT_OPTIONAL, _GRANT_KEYS, where)
        uid, name = str(entry.get("user", "")), str(entry.get("dataset", ""))
        if uid not in desired.users and uid not in invalid_users:
            problems.append(f"{where}: user {uid!r} is not among the file's users")
        if name not in desired.datasets and name not in invalid_datasets:
            problems.append(f"{where}: dataset {name!r} is not among the file's datasets")
        try:
            initial = admin.budget(epsilon=entry.get("epsilon"), delta=entry.get("delta"))
        except InvalidRequest as exc:
            _problem(problems, where, exc)
            continue
        if (uid, name) in desired.grants:
            problems.append(f"{where}: a second grant for {uid} on {name}")
        desired.grants[(uid, name)] = initial
        if entry.get("spent") is not None:
            spec = entry["spent"]
            try:
                if not isinstance(spec, dict) or set(spec) != {"epsilon", "delta"}:
                    raise InvalidRequest("spent must be {epsilon: ..., delta: ...}")
                spent = admin.budget(epsilon=spec["epsilon"], delta=spec["delta"])
                if not spent <= initial:
                    raise InvalidRequest("spent is above the grant's epsilon or delta")
            except InvalidRequest as exc:
                _problem(problems, where, exc)
                continue
            desired.spent[(uid, name)] = spent
    if problems:
        raise InvalidRequest("invalid file: " + "; ".join(problems))
    return desired


def load(path: Path) -> Desired:
    """Read and validate a declarative file (``yaml.safe_load`` only)."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"{path} is not valid YAML: {exc}") from exc
    return parse(raw, path.resolve().parent)


def _amounts(cost: PrivacyCost) -> str:
    return f"epsilon {format_decimal(cost.epsilon)}, delta {format_decimal(cost.delta)}"


def _cap_text(cost: PrivacyCost | None) -> str | None:
    return None if cost is None else _amounts(cost)


def _diff(name: str, old: object, new: object) -> str:
    return f"{name} {old!r} -> {new!r}"


def _metadata_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    details = []
    for key in sorted(set(old) | set(new)):
        if key == "columns":
            continue
        if old.get(key) != new.get(key):
            details.append(_diff(f"metadata.{key}", old.get(key), new.get(key)))
    old_cols, new_cols = old.get("columns", {}), new.get("columns", {})
    for column in sorted(set(old_cols) | set(new_cols)):
        if column not in old_cols:
            details.append(f"metadata.columns.{column} added")
        elif column not in new_cols:
            details.append(f"metadata.columns.{column} removed")
        elif old_cols[column] != new_cols[column]:
            keys = sorted(set(old_cols[column]) | set(new_cols[column]))
            for k in keys:
                if old_cols[column].get(k) != new_cols[column].get(k):
                    details.append(
                        _diff(
                            f"metadata.columns.{column}.{k}",
                            old_cols[column].get(k),
                            new_cols[column].get(k),
                        )
                    )
    return details


def plan(
    store: Store, desired: Desired, settings: Settings | None = None
) -> tuple[list[Change], list[str]]:
    """The changes that would make the store match, and the problems that forbid applying.

    Reads only. With ``settings``, each new or changed source is checked to exist and, as
    is each dataset whose metadata or format changed, read and checked against its metadata
    (:func:`admin.check_data`).
    """
    problems: list[str] = []
    users = {u.user_id: u for u in store.list_users()}
    datasets = {d.name: d for d in store.list_datasets()}
    grants: dict[tuple[str, str], Grant] = {(g.user_id, g.dataset): g for g in store.list_grants()}

    changes = [
        *_plan_users(store, desired, users),
        *_plan_datasets(store, desired, datasets, settings, problems),
        *_plan_grants(store, desired, grants, problems),
        *_plan_removals(store, desired, users, datasets, grants),
    ]
    return changes, problems


def _plan_users(store: Store, desired: Desired, users: dict[str, User]) -> list[Change]:
    """Users to create or update (description, disabled)."""
    changes: list[Change] = []
    for uid, want in desired.users.items():
        have = users.get(uid)
        if have is None:
            changes.append(Change("create", "user", uid, run=_put_user(store, want, create=True)))
            continue
        details = []
        if have.description != want.description:
            details.append(_diff("description", have.description, want.description))
        if have.disabled != want.disabled:
            details.append(_diff("disabled", have.disabled, want.disabled))
        if details:
            update = User(uid, have.created_at, want.disabled, want.description)
            changes.append(
                Change("update", "user", uid, tuple(details), _put_user(store, update, False))
            )
    return changes


def _plan_datasets(
    store: Store,
    desired: Desired,
    datasets: dict[str, Dataset],
    settings: Settings | None,
    problems: list[str],
) -> list[Change]:
    """Datasets to create or update, each followed by its cap's change; data checked."""
    changes: list[Change] = []
    for name, spec in desired.datasets.items():
        stored = datasets.get(name)
        source_changed = stored is None or stored.source != spec.source
        data_changed = (
            source_changed
            or stored is None
            or stored.metadata != spec.metadata
            or stored.source_format != spec.source_format
        )
        if data_changed and settings is not None:
            try:
                if source_changed:
                    admin.check_source(settings, spec.source)
                admin.check_data(settings, name, spec.source, spec.metadata, spec.source_format)
            except InvalidRequest as exc:
                _problem(problems, f"datasets.{name}", exc)
        if stored is None:
            details = [f"source {spec.source}"]
            if spec.per_query_cap is not None:
                details.append(f"per_query_cap {_amounts(spec.per_query_cap)}")
            if spec.hardened:
                details.append(f"hardened, bucket {spec.latency_bucket_ms or 'default'} ms")
            changes.append(
                Change("create", "dataset", name, tuple(details), _put(store, spec, None, settings))
            )
        else:
            details = []
            for label, old, new in (
                ("source", stored.source, spec.source),
                ("format", stored.source_format, spec.source_format),
                ("description", stored.description, spec.description),
                ("per_query_cap", _cap_text(stored.per_query_cap), _cap_text(spec.per_query_cap)),
                ("hardened", stored.hardened, spec.hardened),
                ("latency_bucket_ms", stored.latency_bucket_ms, spec.latency_bucket_ms),
            ):
                if old != new:
                    details.append(_diff(label, old, new))
            details += _metadata_diff(stored.metadata, spec.metadata)
            if details:
                changes.append(
                    Change(
                        "update",
                        "dataset",
                        name,
                        tuple(details),
                        _put(store, spec, stored, settings),
                    )
                )
        cap = store.get_cap(name) if stored is not None else None
        cap_change = _cap_change(store, name, cap, spec.cap, problems)
        if cap_change is not None:
            changes.append(cap_change)
    return changes


def _plan_grants(
    store: Store,
    desired: Desired,
    grants: dict[tuple[str, str], Grant],
    problems: list[str],
) -> list[Change]:
    """Grants to create or set (never below what was spent)."""
    changes: list[Change] = []
    for (uid, name), initial in desired.grants.items():
        key = f"{uid} on {name}"
        have_grant = grants.get((uid, name))
        spent = desired.spent.get((uid, name))
        if have_grant is None:
            details: tuple[str, ...] = (_amounts(initial),)
            if spent is not None and spent != PrivacyCost.zero():
                details += (f"already spent {_amounts(spent)}",)
                run = _later(admin.open_grant, store, uid, name, initial, spent)
            else:
                run = _create_grant(store, uid, name, initial)
            changes.append(Change("create", "grant", key, details, run))
        elif have_grant.initial != initial:
            detail = f"{_amounts(have_grant.initial)} -> {_amounts(initial)}"
            if not have_grant.spent <= initial:
                problems.append(
                    f"grant {key}: refused: {_amounts(initial)} is below what was already spent "
                    f"({_amounts(have_grant.spent)}); spent budget cannot be taken back"
                )
            changes.append(
                Change("update", "grant", key, (detail,), _set_grant(store, uid, name, initial))
            )
    return changes


def _plan_removals(
    store: Store,
    desired: Desired,
    users: dict[str, User],
    datasets: dict[str, Dataset],
    grants: dict[tuple[str, str], Grant],
) -> list[Change]:
    """What the file no longer names: grants first, then datasets, then users."""
    changes: list[Change] = []
    for (uid, name), have_grant in sorted(grants.items()):
        if (uid, name) not in desired.grants:
            spent = f"spent {_amounts(have_grant.spent)} stays in the archive"
            changes.append(
                Change(
                    "remove", "grant", f"{uid} on {name}", (spent,), _delete_grant(store, uid, name)
                )
            )
    for name in sorted(set(datasets) - set(desired.datasets)):
        changes.append(Change("remove", "dataset", name, (), _remove_dataset(store, name)))
    for uid in sorted(set(users) - set(desired.users)):
        changes.append(
            Change(
                "remove", "user", uid, ("tokens revoked, archive kept",), _remove_user(store, uid)
            )
        )
    return changes


def _cap_change(
    store: Store,
    name: str,
    have: DatasetCap | None,
    want: PrivacyCost | None,
    problems: list[str],
) -> Change | None:
    if want is None:
        if have is None or have.limit is None:
            return None
        return Change(
            "update", "cap", name, ("limit removed (spend still counted)",), _cap(store, name, None)
        )
    if have is None:
        return Change("create", "cap", name, (_amounts(want),), _cap(store, name, want))
    if have.limit == want and have.complete:
        return None
    if not have.spent <= want:
        problems.append(
            f"cap {name}: refused: {_amounts(want)} is below what the dataset's grants already "
            f"spent ({_amounts(have.spent)})"
        )
    old = _amounts(have.limit) if have.limit is not None else "no limit"
    return Change("update", "cap", name, (f"{old} -> {_amounts(want)}",), _cap(store, name, want))


def _later(fn: Callable[..., object], *args: Any, **kwargs: Any) -> Callable[[], None]:
    def run() -> None:
        fn(*args, **kwargs)

    return run


def _put_user(store: Store, user: User, create: bool) -> Callable[[], None]:
    return _later(store.put_user, user, create_only=create)


def _put(
    store: Store, spec: DesiredDataset, stored: Dataset | None, settings: Settings | None
) -> Callable[[], None]:
    dataset = Dataset(
        name=spec.name,
        source=spec.source,
        metadata=spec.metadata,
        created_at=stored.created_at if stored is not None else utcnow(),
        description=spec.description,
        source_format=spec.source_format,
        per_query_cap=spec.per_query_cap,
        hardened=spec.hardened,
        latency_bucket_ms=spec.latency_bucket_ms,
    )

    def run() -> None:
        columnar = None
        same_data = stored is not None and (
            stored.source,
            stored.metadata,
            stored.source_format,
        ) == (dataset.source, dataset.metadata, dataset.source_format)
        if same_data and stored is not None:
            columnar = stored.columnar  # the copy of this very source and metadata
        elif settings is not None:  # a new or changed source: converted once, here
            try:
                columnar = admin.columnar_copy(settings, dataset)
            except Exception as exc:  # the workers read the source, as before copies
                log.warning("dataset %s: no Parquet copy (%s)", dataset.name, exc)
        store.put_dataset(replace(dataset, columnar=columnar), create_only=stored is None)

    return run


def _cap(store: Store, name: str, limit: PrivacyCost | None) -> Callable[[], None]:
    return _later(store.set_cap, name, limit)


def _create_grant(store: Store, uid: str, name: str, initial: PrivacyCost) -> Callable[[], None]:
    return _later(store.create_grant, uid, name, initial)


def _set_grant(store: Store, uid: str, name: str, initial: PrivacyCost) -> Callable[[], None]:
    return _later(admin.set_grant, store, uid, name, epsilon=initial.epsilon, delta=initial.delta)


def _delete_grant(store: Store, uid: str, name: str) -> Callable[[], None]:
    return _later(store.delete_grant, uid, name)


def _remove_dataset(store: Store, name: str) -> Callable[[], None]:
    return _later(admin.remove_dataset, store, name, force=True)


def _remove_user(store: Store, uid: str) -> Callable[[], None]:
    return _later(admin.remove_user, store, uid, force=True)


def apply(
    store: Store,
    desired: Desired,
    settings: Settings | None = None,
    approved: list[Change] | None = None,
) -> list[Change]:
    """Make the store match; validates everything before the first write.

    The order is users, datasets, caps, grants (new and changed), then removals of grants,
    datasets and users, so every write refers to things that exist. Running it twice in a
    row changes nothing the second time. With ``approved`` (the plan a person confirmed),
    nothing is written unless the removals planned now are exactly the approved ones.
    """
    changes, problems = plan(store, desired, settings)
    if problems:
        raise InvalidRequest("nothing applied: " + "; ".join(problems))
    if approved is not None and removals(changes) != removals(approved):
        raise InvalidRequest(
            "nothing applied: the stored state changed since the plan was shown; run apply again"
        )
    order = {"user": 0, "dataset": 1, "cap": 2, "grant": 3}
    creates = [c for c in changes if c.action != "remove"]
    removes = [c for c in changes if c.action == "remove"]
    creates.sort(key=lambda c: order[c.kind])
    removes.sort(key=lambda c: -order[c.kind])
    for change in creates + removes:
        assert change.run is not None
        change.run()
    return changes


def removals(changes: list[Change]) -> list[Change]:
    """The changes that remove something (what ``apply`` asks about)."""
    return [c for c in changes if c.action == "remove"]


def export(store: Store) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The stored state as a declarative document, and each dataset's metadata by name.

    The document names each dataset's metadata as ``metadata/<name>.yaml`` (relative to
    the file, where the caller writes them); amounts are exact decimal strings. ``plan`` of
    the written file against the same store shows no changes.
    """
    document: dict[str, Any] = {"users": [], "datasets": [], "grants": []}
    for user in sorted(store.list_users(), key=lambda u: u.user_id):
        entry: dict[str, Any] = {"id": user.user_id}
        if user.description:
            entry["description"] = user.description
        if user.disabled:
            entry["disabled"] = True
        document["users"].append(entry)
    metadata: dict[str, dict[str, Any]] = {}
    for dataset in sorted(store.list_datasets(), key=lambda d: d.name):
        metadata[dataset.name] = dataset.metadata
        item: dict[str, Any] = {
            "name": dataset.name,
            "source": dataset.source,
            "metadata": f"metadata/{dataset.name}.yaml",
            "format": dataset.source_format,
            "description": dataset.description,
        }
        cap = store.get_cap(dataset.name)
        if cap is not None and cap.limit is not None:
            item["cap"] = cap.limit.to_json()
        if dataset.per_query_cap is not None:
            item["per_query_cap"] = dataset.per_query_cap.to_json()
        if dataset.hardened:
            item["hardened"] = True
        if dataset.latency_bucket_ms is not None:
            item["latency_bucket_ms"] = dataset.latency_bucket_ms
        document["datasets"].append(item)
    for grant in sorted(store.list_grants(), key=lambda g: (g.user_id, g.dataset)):
        document["grants"].append(
            {"user": grant.user_id, "dataset": grant.dataset, **grant.initial.to_json()}
        )
    return document, metadata


def summary(changes: list[Change]) -> str:
    """``Plan: 2 to create, 1 to update, 0 to remove.``"""
    counts = {a: sum(1 for c in changes if c.action == a) for a in ("create", "update", "remove")}
    return (
        f"{counts['create']} to create, {counts['update']} to update, {counts['remove']} to remove"
    )
