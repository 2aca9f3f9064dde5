"""neblina-admin: users, tokens, datasets, grants, caps, archive export, plan and apply.

Authentication is the administrator's own AWS credentials (or ``MONGODB_URI``): the CLI
talks to the store directly; there is no admin HTTP surface. The store is chosen as the
server chooses it (``NEBLINA_STORE``, ``AWS_ENDPOINT_URL``, ``NEBLINA_TABLE_PREFIX``); with
none of ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID`` set, the local stack of
``.neblina/local.env`` (:mod:`neblina_admin.admintarget`), and the target is named on stderr.

Exit codes: 0 done; 1 refused (invalid input, conflict, below spent) with nothing changed;
2 usage error; 3 not found; 4 storage unreachable or unexpected error; ``plan
--detailed-exitcode`` returns 5 when changes are pending.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.table import Table

from chalicelib.auth import IssuedToken
from chalicelib.config import Settings, get_settings
from chalicelib.errors import InvalidRequest, NeblinaError, NotFound
from chalicelib.models import (
    Dataset,
    DatasetCap,
    Grant,
    PrivacyCost,
    Token,
    format_decimal,
    utcnow,
)
from chalicelib.storage import Store, get_store, reset_store
from neblina_admin import admintarget, declarative
from neblina_admin import operations as admin

EXIT_REFUSED, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_CHANGES = 1, 3, 4, 5

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0] if __doc__ else ""
)
users = typer.Typer(no_args_is_help=True, help="Researchers: add, list, show, disable, remove.")
tokens = typer.Typer(
    no_args_is_help=True, help="API tokens: issue (shown once), list, rotate, revoke."
)
datasets = typer.Typer(no_args_is_help=True, help="Datasets: source + validated metadata.")
grants = typer.Typer(no_args_is_help=True, help="Budgets per user and dataset, and caps.")
archive = typer.Typer(no_args_is_help=True, help="Export archived queries.")
ledger = typer.Typer(no_args_is_help=True, help="Ledger upkeep: settle what a crash left.")
importer = typer.Typer(no_args_is_help=True, help="Bring a deployment of another platform across.")
app.add_typer(users, name="users")
app.add_typer(tokens, name="tokens")
app.add_typer(datasets, name="datasets")
app.add_typer(grants, name="grants")
app.add_typer(archive, name="archive")
app.add_typer(ledger, name="ledger")
app.add_typer(importer, name="import")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _a_number(value: str | None) -> str | None:
    """Usage check of an amount option: it must be written as a number (exit 2 otherwise).

    Whether the number is acceptable (>= 0, finite, δ < 1) is decided by neblina_admin.operations,
    with exit 1 like every other refusal.
    """
    if value is None:
        return None
    try:
        Decimal(value.strip())
    except (InvalidOperation, ValueError):
        raise typer.BadParameter(f"{value!r} is not a number") from None
    return value


def _one_of(*choices: str) -> Callable[[str | None], str | None]:
    """Usage check of a choice option (exit 2 otherwise)."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
EpsilonOpt = Annotated[
    str, typer.Option("--epsilon", "-e", help="ε, an exact decimal >= 0.", callback=_a_number)
]
DeltaOpt = Annotated[
    str, typer.Option("--delta", "-d", help="δ, an exact decimal in [0, 1).", callback=_a_number)
]


def _use_target() -> None:
    """Choose the store once per command (see neblina_admin.admintarget) and name it on stderr."""
    context = click.get_current_context(silent=True)
    if context is not None:
        root = context.find_root()
        if root.meta.get("neblina.target"):
            return
        root.meta["neblina.target"] = True
    target = admintarget.use()
    if target.environ:
        get_settings.cache_clear()
        reset_store()
    if target.announce:
        err.print(f"target: {target.description}", markup=False)


def _settings() -> Settings:
    _use_target()
    return get_settings()


def _store() -> Store:
    _use_target()
    return get_store()


def _closed_pipe() -> None:
    """The reader of stdout went away (``| head``): stop quietly, as ``cat`` does."""
    try:  # later writes (and the flush at exit) go nowhere instead of failing again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests)
        pass


def handled[F: Callable[..., Any]](fn: F) -> F:
    """Turn Neblina errors into one ``error:`` line and a documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return result
        except NeblinaError as exc:
            err.print(f"error: {exc.message}", markup=False)
            raise typer.Exit(
                EXIT_NOT_FOUND if isinstance(exc, NotFound) else EXIT_REFUSED
            ) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except BrokenPipeError:
            _closed_pipe()
            raise typer.Exit(0) from None
        except Exception as exc:
            if type(exc).__name__ == "NoCredentialsError":  # botocore's, without importing it
                err.print(
                    "error: no AWS credentials found: start the local stack (make up), or set "
                    "AWS_PROFILE or AWS_ENDPOINT_URL",
                    markup=False,
                )
                raise typer.Exit(EXIT_UNAVAILABLE) from None
            err.print(f"error: storage unavailable or unexpected failure: {exc}", markup=False)
            raise typer.Exit(EXIT_UNAVAILABLE) from None

    return wrapper  # type: ignore[return-value]


def _emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _amount(cost: PrivacyCost | None) -> str:
    if cost is None:
        return "-"
    return f"ε {format_decimal(cost.epsilon)}, δ {format_decimal(cost.delta)}"


def _grant_json(grant: Grant) -> dict[str, Any]:
    return {
        "user": grant.user_id,
        "dataset": grant.dataset,
        "initial": grant.initial.to_json(),
        "spent": grant.spent.to_json(),
        "remaining": grant.remaining.to_json(),
        "capped": grant.capped,
    }


def _cap_json(cap: DatasetCap | None) -> dict[str, Any] | None:
    if cap is None:
        return None
    return {
        "limit": cap.limit.to_json() if cap.limit else None,
        "spent": cap.spent.to_json(),
        "remaining": cap.remaining.to_json() if cap.remaining else None,
        "complete": cap.complete,
    }


def _token_json(token: Token) -> dict[str, Any]:
    return {
        "token_id": token.token_id,
        "user": token.user_id,
        "created_at": admin.iso(token.created_at),
        "expires_at": admin.iso(token.expires_at),
        "last_used_at": admin.iso(token.last_used_at),
        "revoked": token.revoked,
    }


# users ----------------------------------------------------------------------------------
@users.command("add")
@handled
def users_add(
    user_id: str, description: Annotated[str, typer.Option(help="Free text.")] = ""
) -> None:
    """Create a user."""
    store = _store()
    user, created = admin.add_user(store, user_id, description)
    if not created:
        err.print(f"error: user {user_id} already exists", markup=False)
        raise typer.Exit(EXIT_REFUSED)
    out.print(f"created user {user.user_id}")


@users.command("list")
@handled
def users_list(as_json: JsonOpt = False) -> None:
    """All users."""
    rows = _store().list_users()
    if as_json:
        _emit_json(
            [
                {
                    "user": u.user_id,
                    "disabled": u.disabled,
                    "description": u.description,
                    "created_at": admin.iso(u.created_at),
                }
                for u in rows
            ]
        )
        return
    _table(
        "users",
        ["user", "status", "created", "description"],
        [
            [
                u.user_id,
                "disabled" if u.disabled else "active",
                u.created_at.strftime("%Y-%m-%d %H:%M"),
                u.description,
            ]
            for u in rows
        ],
    )


@users.command("show")
@handled
def users_show(user_id: str, as_json: JsonOpt = False) -> None:
    """One user, their grants and tokens."""
    store = _store()
    user = admin.require_user(store, user_id)
    user_grants = store.list_grants(user_id)
    user_tokens = store.list_tokens(user_id)
    if as_json:
        _emit_json(
            {
                "user": user.user_id,
                "disabled": user.disabled,
                "description": user.description,
                "created_at": admin.iso(user.created_at),
                "grants": [_grant_json(g) for g in user_grants],
                "tokens": [_token_json(t) for t in user_tokens],
            }
        )
        return
    status = "disabled" if user.disabled else "active"
    out.print(f"user {user.user_id} ({status}) created {user.created_at:%Y-%m-%d %H:%M}")
    if user.description:
        out.print(f"  {user.description}")
    _print_grants(list(user_grants))
    _print_tokens(user_tokens)


def _set_disabled(user_id: str, disabled: bool) -> None:
    user = admin.update_user(_store(), user_id, disabled=disabled)
    out.print(f"user {user.user_id} {'disabled' if disabled else 'enabled'}")


@users.command("disable")
@handled
def users_disable(user_id: str) -> None:
    """Stop a user's tokens from working (reversible)."""
    _set_disabled(user_id, True)


@users.command("enable")
@handled
def users_enable(user_id: str) -> None:
    """Let a disabled user query again."""
    _set_disabled(user_id, False)


@users.command("remove")
@handled
def users_remove(
    user_id: str,
    force: Annotated[
        bool, typer.Option(help="Revoke unexpired tokens instead of refusing.")
    ] = False,
) -> None:
    """Remove a user and their grants. The archive is never deleted."""
    done = admin.remove_user(_store(), user_id, force=force)
    out.print(
        f"removed user {user_id}: {done.revoked_tokens} token(s) revoked, "
        f"{done.removed_grants} grant(s) removed, {done.archived_queries} archived "
        "queries kept"
    )


# tokens ---------------------------------------------------------------------------------
ExpiresOpt = Annotated[
    str | None,
    typer.Option(
        help="Lifetime, e.g. 90m, 12h, 30d, 2w (default: NEBLINA_TOKEN_DEFAULT_DAYS, 90 days)."
    ),
]
NoExpiryOpt = Annotated[
    bool, typer.Option("--no-expiry", help="A token that never expires (only on request).")
]


def _print_secret(issued: IssuedToken, user_id: str, as_json: bool) -> None:
    if as_json:
        _emit_json({"token": issued.secret, **_token_json(issued.record)})
        return
    expires = admin.iso(issued.record.expires_at) or "never"
    out.print(f"token {issued.record.token_id} for {user_id} (expires: {expires})")
    out.print("secret (shown once, store it now):")
    sys.stdout.write(issued.secret + "\n")


@tokens.command("issue")
@handled
def tokens_issue(
    user_id: str,
    expires_in: ExpiresOpt = None,
    no_expiry: NoExpiryOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Issue a token; the secret is printed once and only its hash is stored."""
    lifetime = admin.duration(expires_in) if expires_in is not None else None
    issued = admin.add_token(_store(), user_id, lifetime, never_expires=no_expiry)
    _print_secret(issued, user_id, as_json)


@tokens.command("rotate")
@handled
def tokens_rotate(
    token_id: str,
    grace: Annotated[
        str | None,
        typer.Option(help="Let the old token work this long, e.g. 10m (default: revoke now)."),
    ] = None,
    expires_in: ExpiresOpt = None,
    no_expiry: NoExpiryOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Issue a new token for the same user and retire the old one (revoked, or after --grace)."""
    rotation = admin.rotate_token(
        _store(),
        token_id,
        grace=admin.duration(grace) if grace is not None else None,
        expires_in=admin.duration(expires_in) if expires_in is not None else None,
        never_expires=no_expiry,
    )
    old = rotation.old
    if as_json:
        _emit_json(
            {
                "token": rotation.issued.secret,
                **_token_json(rotation.issued.record),
                "old": _token_json(old),
            }
        )
        return
    fate = "revoked" if old.revoked else f"expires {admin.iso(old.expires_at)}"
    out.print(f"old token {old.token_id}: {fate}")
    _print_secret(rotation.issued, old.user_id, False)


@tokens.command("list")
@handled
def tokens_list(
    user: Annotated[str | None, typer.Option(help="Only this user's tokens.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Tokens: id, user, created, expires, last used, state. Never the secret."""
    store = _store()
    if user is not None:
        admin.require_user(store, user)
    rows = store.list_tokens(user)
    if as_json:
        _emit_json([_token_json(t) for t in rows])
        return
    _print_tokens(rows)


def _print_tokens(rows: list[Token]) -> None:
    now = utcnow()

    def state(t: Token) -> str:
        return "revoked" if t.revoked else "expired" if t.is_expired(now) else "active"

    def when(value: Any) -> str:
        return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"

    _table(
        "tokens",
        ["token id", "user", "created", "expires", "last used", "state"],
        [
            [
                t.token_id,
                t.user_id,
                when(t.created_at),
                when(t.expires_at),
                when(t.last_used_at),
                state(t),
            ]
            for t in rows
        ],
    )


@tokens.command("revoke")
@handled
def tokens_revoke(token_id: str) -> None:
    """Revoke a token by its id (see tokens list); it stops working at once."""
    token = admin.revoke_token(_store(), token_id)
    out.print(f"revoked token {token.token_id} of {token.user_id}")


# datasets -------------------------------------------------------------------------------
SourceOpt = Annotated[
    str, typer.Option("--source", help="s3://bucket/key, http(s):// URL, or a local path.")
]
MetadataOpt = Annotated[Path, typer.Option("--metadata", help="Metadata YAML file.")]


@datasets.command("add")
@handled
def datasets_add(
    name: str,
    source: SourceOpt,
    metadata: MetadataOpt,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="csv or parquet (default: extension).",
            callback=_one_of("csv", "parquet"),
        ),
    ] = None,
    description: Annotated[str, typer.Option(help="Default: the metadata's.")] = "",
    upload: Annotated[
        bool, typer.Option(help="Upload a local file to the bucket and register its S3 URI.")
    ] = False,
) -> None:
    """Register a dataset: its source and its validated public metadata."""
    settings = _settings()
    store = _store()
    admin.dataset_name(name)
    validated = admin.read_metadata(metadata)
    location = admin.normalise_source(source)
    if upload and location.startswith(("s3://", "http://", "https://")):
        raise InvalidRequest("--upload takes a local file")
    if store.get_dataset(name) is not None:  # before anything is uploaded
        err.print(f"error: dataset {name} already exists (use datasets update)", markup=False)
        raise typer.Exit(EXIT_REFUSED)
    admin.check_source(settings, location)
    admin.check_data(settings, name, location, validated, fmt)  # before it is uploaded
    if upload:
        key = f"{name}/{Path(location).name}"
        location = admin.upload(settings, settings.bucket, key, Path(location).read_bytes())
    columnar = _columnar_copy(settings, name, location, validated, fmt)
    dataset, created = admin.add_dataset(
        store,
        name,
        location,
        validated,
        description=description,
        source_format=fmt,
        columnar=columnar,
    )
    if not created:
        err.print(f"error: dataset {name} already exists (use datasets update)", markup=False)
        raise typer.Exit(EXIT_REFUSED)
    out.print(f"created dataset {dataset.name} <- {dataset.source} ({dataset.source_format})")
    if dataset.columnar:
        out.print(f"  Parquet copy: {dataset.columnar['uri']}")


def _columnar_copy(
    settings: Settings, name: str, source: str, metadata: dict[str, Any], fmt: str | None
) -> dict[str, str] | None:
    """The source converted to its Parquet copy (None: not an S3 CSV, or it failed: the
    workers then read the source itself, as before)."""
    from chalicelib.datasets import source_format

    dataset = Dataset(
        name=name,
        source=source,
        metadata=metadata,
        created_at=utcnow(),
        source_format=source_format(source, fmt),
    )
    try:
        return admin.columnar_copy(settings, dataset)
    except Exception as exc:
        err.print(
            f"warning: no Parquet copy of {source} ({exc}); workers will read the source",
            markup=False,
        )
        return None


@datasets.command("list")
@handled
def datasets_list(as_json: JsonOpt = False) -> None:
    """All datasets."""
    rows = _store().list_datasets()
    if as_json:
        _emit_json(
            [
                {
                    "dataset": d.name,
                    "source": d.source,
                    "format": d.source_format,
                    "rows": d.metadata.get("rows"),
                    "columns": len(d.metadata.get("columns", {})),
                    "description": d.description,
                }
                for d in rows
            ]
        )
        return
    _table(
        "datasets",
        ["dataset", "rows", "columns", "source", "description"],
        [
            [
                d.name,
                str(d.metadata.get("rows")),
                str(len(d.metadata.get("columns", {}))),
                d.source,
                d.description,
            ]
            for d in rows
        ],
    )


@datasets.command("show")
@handled
def datasets_show(name: str, as_json: JsonOpt = False) -> None:
    """One dataset: source, metadata, cap, grants."""
    store = _store()
    dataset = admin.require_dataset(store, name)
    cap = store.get_cap(name)
    dataset_grants = list(store.list_grants(dataset=name))
    if as_json:
        _emit_json(
            {
                "dataset": dataset.name,
                "source": dataset.source,
                "format": dataset.source_format,
                "description": dataset.description,
                "metadata": dataset.metadata,
                "cap": _cap_json(cap),
                "grants": [_grant_json(g) for g in dataset_grants],
                "columnar": dataset.columnar,
                **_policy_json(dataset),
            }
        )
        return
    out.print(f"dataset {dataset.name} <- {dataset.source} ({dataset.source_format})")
    if dataset.description:
        out.print(f"  {dataset.description}")
    meta = dataset.metadata
    out.print(
        f"  rows {meta['rows']}, max_ids {meta['max_ids']}, row_privacy {meta['row_privacy']}"
    )
    _table(
        "columns",
        ["column", "type", "bounds / categories", "nullable"],
        [
            [
                column,
                spec["type"],
                str(spec["categories"])
                if "categories" in spec
                else f"[{spec['lower']}, {spec['upper']}]"
                if "lower" in spec
                else "-",
                str(spec["nullable"]),
            ]
            for column, spec in meta["columns"].items()
        ],
    )
    _print_cap(cap)
    _print_policy(dataset)
    _print_grants(dataset_grants)


@datasets.command("update")
@handled
def datasets_update(
    name: str,
    metadata: Annotated[Path | None, typer.Option(help="New metadata YAML file.")] = None,
    source: Annotated[str | None, typer.Option(help="New source.")] = None,
    description: Annotated[str | None, typer.Option(help="New description.")] = None,
    per_query_epsilon: Annotated[
        str | None,
        typer.Option(
            help="Largest ε one query may cost (with --per-query-delta).", callback=_a_number
        ),
    ] = None,
    per_query_delta: Annotated[
        str | None,
        typer.Option(
            help="Largest δ one query may cost (with --per-query-epsilon).", callback=_a_number
        ),
    ] = None,
    no_per_query_cap: Annotated[
        bool, typer.Option("--no-per-query-cap", help="Remove the dataset's per-query cap.")
    ] = False,
    hardened: Annotated[
        bool | None,
        typer.Option(
            "--hardened/--not-hardened",
            help="Fixed latency buckets and generic failure bodies for query and cost answers.",
        ),
    ] = None,
    latency_bucket_ms: Annotated[
        int | None, typer.Option(help="Hardened mode's latency bucket (default 500 ms).")
    ] = None,
) -> None:
    """Change a dataset's metadata, source, description or policy (validated first)."""
    cap_given = per_query_epsilon is not None or per_query_delta is not None
    if cap_given and (per_query_epsilon is None or per_query_delta is None):
        raise InvalidRequest("give both --per-query-epsilon and --per-query-delta")
    if cap_given and no_per_query_cap:
        raise InvalidRequest("give a per-query cap or --no-per-query-cap, not both")
    policy: dict[str, Any] = {}
    if cap_given:
        policy["query_cap"] = admin.per_query_cap(epsilon=per_query_epsilon, delta=per_query_delta)
    elif no_per_query_cap:
        policy["query_cap"] = None
    if hardened is not None:
        policy["hardened"] = hardened
    if latency_bucket_ms is not None:
        policy["bucket_ms"] = latency_bucket_ms
    if metadata is None and source is None and description is None and not policy:
        raise InvalidRequest(
            "nothing to update: give --metadata, --source, --description or a policy option"
        )
    settings = _settings()
    validated = admin.read_metadata(metadata) if metadata is not None else None
    location = admin.normalise_source(source) if source is not None else None
    if location is not None:
        admin.check_source(settings, location)
    if validated is not None or location is not None:
        current = admin.require_dataset(_store(), name)
        new_format = None if location is not None else current.source_format
        admin.check_data(
            settings, name, location or current.source, validated or current.metadata, new_format
        )
        policy["columnar"] = _columnar_copy(
            settings, name, location or current.source, validated or current.metadata, new_format
        )
    dataset = admin.update_dataset(
        _store(), name, metadata=validated, source=location, description=description, **policy
    )
    out.print(f"updated dataset {dataset.name}")
    if policy:
        _print_policy(dataset)


def _policy_json(dataset: Dataset) -> dict[str, Any]:
    cap = dataset.per_query_cap
    return {
        "per_query_cap": cap.to_json() if cap is not None else None,
        "hardened": dataset.hardened,
        "latency_bucket_ms": dataset.latency_bucket_ms,
    }


def _print_policy(dataset: Dataset) -> None:
    cap = dataset.per_query_cap
    out.print(f"  per-query cap: {_amount(cap) if cap is not None else 'deployment default'}")
    if dataset.hardened:
        out.print(f"  hardened: latency bucket {round(dataset.bucket_seconds * 1000)} ms")
    else:
        out.print("  hardened: no")


@datasets.command("check")
@handled
def datasets_check(name: str) -> None:
    """Read a dataset's source as the engines do and check it against its metadata."""
    dataset = admin.require_dataset(_store(), name)
    admin.check_data(_settings(), name, dataset.source, dataset.metadata, dataset.source_format)
    out.print(f"dataset {name}: {dataset.source} matches its metadata")


@datasets.command("remove")
@handled
def datasets_remove(
    name: str,
    force: Annotated[bool, typer.Option(help="Revoke its grants instead of refusing.")] = False,
) -> None:
    """Remove a dataset (and its cap). The archive is never deleted."""
    done = admin.remove_dataset(_store(), name, force=force)
    out.print(
        f"removed dataset {name}: {done.removed_grants} grant(s) revoked, "
        f"{done.archived_queries} archived queries kept"
    )


# grants ---------------------------------------------------------------------------------
def _print_grants(rows: list[Grant]) -> None:
    _table(
        "grants",
        ["user", "dataset", "initial", "spent", "remaining", "capped"],
        [
            [
                g.user_id,
                g.dataset,
                _amount(g.initial),
                _amount(g.spent),
                _amount(g.remaining),
                "yes" if g.capped else "",
            ]
            for g in rows
        ],
    )


def _print_cap(cap: DatasetCap | None) -> None:
    if cap is None:
        out.print("  cap: none")
        return
    limit = _amount(cap.limit) if cap.limit is not None else "no limit"
    note = "" if cap.complete else " (incomplete: run grants cap again)"
    out.print(
        f"  cap: limit {limit}; spent {_amount(cap.spent)}; remaining "
        f"{_amount(cap.remaining)}{note}"
    )


@grants.command("add")
@handled
def grants_add(user_id: str, dataset: str, epsilon: EpsilonOpt, delta: DeltaOpt) -> None:
    """Give a user a budget (ε, δ) on a dataset."""
    grant, created = admin.grant(_store(), user_id, dataset, epsilon=epsilon, delta=delta)
    if not created:
        err.print(
            f"error: {user_id} already holds a grant on {dataset} (use grants set or top-up)",
            markup=False,
        )
        raise typer.Exit(EXIT_REFUSED)
    out.print(f"granted {user_id} on {dataset}: {_amount(grant.initial)}")


@grants.command("top-up")
@handled
def grants_top_up(
    user_id: str,
    dataset: str,
    epsilon: Annotated[
        str, typer.Option("--epsilon", "-e", help="ε to add.", callback=_a_number)
    ] = "0",
    delta: Annotated[
        str, typer.Option("--delta", "-d", help="δ to add.", callback=_a_number)
    ] = "0",
) -> None:
    """Add to a grant."""
    grant = admin.top_up(_store(), user_id, dataset, epsilon=epsilon, delta=delta)
    out.print(f"{user_id} on {dataset}: initial {_amount(grant.initial)}")


@grants.command("set")
@handled
def grants_set(user_id: str, dataset: str, epsilon: EpsilonOpt, delta: DeltaOpt) -> None:
    """Set a grant's initial budget (never below what was spent)."""
    grant = admin.set_grant(_store(), user_id, dataset, epsilon=epsilon, delta=delta)
    out.print(f"{user_id} on {dataset}: initial {_amount(grant.initial)}")


@grants.command("revoke")
@handled
def grants_revoke(user_id: str, dataset: str) -> None:
    """Remove a grant; its spend stays in the archive and in the dataset's cap."""
    grant = admin.revoke_grant(_store(), user_id, dataset)
    out.print(f"revoked {user_id} on {dataset} (had spent {_amount(grant.spent)})")


@grants.command("show")
@handled
def grants_show(user_id: str, dataset: str, as_json: JsonOpt = False) -> None:
    """A grant's budget: initial, spent, remaining."""
    store = _store()
    grant = admin.require_grant(store, user_id, dataset)
    cap = store.get_cap(dataset) if grant.capped else None
    if as_json:
        _emit_json({**_grant_json(grant), "cap": _cap_json(cap)})
        return
    out.print(f"{user_id} on {dataset}")
    for label, value in (
        ("initial", grant.initial),
        ("spent", grant.spent),
        ("remaining", grant.remaining),
    ):
        out.print(
            f"  {label:<10} epsilon {format_decimal(value.epsilon)}, "
            f"delta {format_decimal(value.delta)}"
        )
    if cap is not None:
        _print_cap(cap)


@grants.command("list")
@handled
def grants_list(
    user: Annotated[str | None, typer.Option(help="Only this user's grants.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset's grants.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Grants, with their budgets."""
    store = _store()
    if user is not None:
        admin.require_user(store, user)
    if dataset is not None:
        admin.require_dataset(store, dataset)
    rows = list(store.list_grants(user, dataset=dataset))
    if as_json:
        _emit_json([_grant_json(g) for g in rows])
        return
    _print_grants(rows)


@grants.command("cap")
@handled
def grants_cap(
    dataset: str,
    epsilon: Annotated[str | None, typer.Option("--epsilon", "-e", callback=_a_number)] = None,
    delta: Annotated[str | None, typer.Option("--delta", "-d", callback=_a_number)] = None,
    no_limit: Annotated[
        bool, typer.Option("--no-limit", help="Lift the limit (the spend is still counted).")
    ] = False,
) -> None:
    """Set a dataset-wide budget across all users, enforced with each debit."""
    if no_limit == (epsilon is not None or delta is not None):
        raise InvalidRequest("give --epsilon and --delta, or --no-limit")
    limit = None if no_limit else admin.budget(epsilon=epsilon, delta=delta)
    cap = admin.set_cap(_store(), dataset, limit)
    out.print(f"dataset {dataset}")
    _print_cap(cap)


# archive --------------------------------------------------------------------------------
@archive.command("export")
@handled
def archive_export(
    user: Annotated[str | None, typer.Option(help="This user's queries.")] = None,
    dataset: Annotated[str | None, typer.Option(help="This dataset's queries.")] = None,
    fmt: Annotated[
        str,
        typer.Option("--format", help="jsonl or csv.", callback=_one_of("jsonl", "csv")),
    ] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (default stdout).")
    ] = None,
) -> None:
    """Export archived queries (oldest first) as JSON lines or CSV."""
    # a removed user's or dataset's archive stays exportable: no existence check here
    records = admin.archive(_store(), uid=user, dataset=dataset)
    if output is None:
        count = admin.write_export(records, sys.stdout, fmt)
    else:
        with open(output, "w", newline="") as handle:
            count = admin.write_export(records, handle, fmt)
        out.print(f"exported {count} queries to {output}")
    if count == 0:
        err.print("note: no archived queries matched", markup=False)


# ledger -----------------------------------------------------------------------------------
@ledger.command("reconcile")
@handled
def ledger_reconcile() -> None:
    """Settle reservations and refunds a crash left half-written (older than the query lease).

    MongoDB only (docs/ledger.md, "MongoDB without transactions"): a debit no record carries
    is given back, one whose record exists stands. Safe to run at any time, and repeatedly.
    DynamoDB writes each reservation in one transaction, so there is nothing to settle.
    """
    settled = admin.reconcile(_store())
    out.print(f"settled {settled} pending ledger entr{'y' if settled == 1 else 'ies'}")


# schema, plan and apply -------------------------------------------------------------------
@app.command("init")
@handled
def init_command() -> None:
    """Create the tables (DynamoDB) or indexes (MongoDB) if missing; Terraform does this on AWS."""
    _store().create_schema()
    settings = _settings()
    out.print(f"store ready: {settings.store}, names prefixed {settings.table_prefix!r}")


FileArg = Annotated[Path, typer.Argument(help="Declarative YAML file.")]


@app.command("plan")
@handled
def plan_command(
    file: FileArg,
    as_json: JsonOpt = False,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 5 when changes are pending.")
    ] = False,
) -> None:
    """Show what apply would change; changes nothing."""
    desired = declarative.load(file)
    changes, problems = declarative.plan(_store(), desired, _settings())
    if as_json:
        _emit_json({"changes": [c.to_json() for c in changes], "problems": problems})
    elif not changes:
        out.print(f"No changes. The stored state matches {file}.")
    else:
        for change in changes:
            out.print(change.line(), markup=False)
        out.print(f"Plan: {declarative.summary(changes)}.")
    if problems:
        for problem in problems:
            err.print(f"error: {problem}", markup=False)
        raise typer.Exit(EXIT_REFUSED)
    if detailed_exitcode and changes:
        raise typer.Exit(EXIT_CHANGES)


@app.command("apply")
@handled
def apply_command(
    file: FileArg,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "--auto-approve", "-y", help="Remove what the file omits without asking."
        ),
    ] = False,
) -> None:
    """Make the stored state match the file (validated whole first; idempotent).

    The plan is shown first; when it removes anything, apply asks before writing, unless
    --yes (or --auto-approve) is given.
    """
    desired = declarative.load(file)
    store, settings = _store(), _settings()
    changes, problems = declarative.plan(store, desired, settings)
    if problems:
        raise InvalidRequest("nothing applied: " + "; ".join(problems))
    if not changes:
        out.print(f"No changes. The stored state already matches {file}.")
        return
    for change in changes:
        out.print(change.line(), markup=False)
    removals = declarative.removals(changes)
    if removals and not yes:
        question = (
            f"Plan: {declarative.summary(changes)}. The {len(removals)} removal(s) are what "
            f"{file} does not list (it is the whole desired state). Apply?"
        )
        try:
            confirmed = typer.confirm(question, default=False, err=True)
        except typer.Abort:  # no answer (stdin closed)
            confirmed = False
        if not confirmed:
            err.print(
                "error: nothing applied (pass --yes to apply without asking; "
                "neblina-admin export-config writes the current state as a file to start from)",
                markup=False,
            )
            raise typer.Exit(EXIT_REFUSED)
    applied = declarative.apply(store, desired, settings, approved=changes)
    out.print(f"Applied: {declarative.summary(applied)}.")


@app.command("export-config")
@handled
def export_config(
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="The declarative file to write; metadata files go to metadata/ beside it.",
        ),
    ],
    force: Annotated[bool, typer.Option(help="Overwrite files that exist.")] = False,
) -> None:
    """Write the stored state as a declarative file that plan and apply accept.

    plan of the written file shows no changes: edit it, then plan and apply.
    """

    document, metadata = declarative.export(_store())
    header = (
        "# neblina-admin export-config: the whole stored state (users, datasets, grants).\n"
        "# Edit, then `neblina-admin plan` this file; metadata paths are relative to it.\n"
    )
    _write_declarative(output, document, metadata, force=force, header=header)
    folder = output.parent / "metadata"
    counts = {key: len(value) for key, value in document.items()}
    out.print(
        f"wrote {output} ({counts['users']} users, {counts['datasets']} datasets, "
        f"{counts['grants']} grants) and {len(metadata)} metadata file(s) in {folder}"
    )


# import --------------------------------------------------------------------------------
def _fetch(location: str) -> bytes:
    """A Lomas metadata file named by URL (http(s), or s3 with the administrator's rights)."""
    from urllib.parse import urlparse

    parsed = urlparse(location)
    if parsed.scheme == "s3":
        from chalicelib.aws import s3_client

        response = s3_client(_settings()).get_object(
            Bucket=parsed.netloc, Key=parsed.path.lstrip("/")
        )
        return bytes(response["Body"].read())
    import urllib.request

    with urllib.request.urlopen(location, timeout=30) as answer:  # noqa: S310 (http(s) only)
        return bytes(answer.read())


@importer.command("lomas")
@handled
def import_lomas(
    source: Annotated[
        Path, typer.Argument(help="Lomas's YAML database, or a directory of mongoexport files.")
    ],
    apply_it: Annotated[
        bool, typer.Option("--apply", help="Write it all and print each user's token once.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the declarative file (grants with spent); metadata/ beside it.",
        ),
    ] = None,
    drop_orphans: Annotated[
        bool,
        typer.Option(
            "--drop-orphan-queries", help="Leave behind archived queries of revoked grants."
        ),
    ] = False,
    force: Annotated[bool, typer.Option(help="Overwrite files that exist (-o).")] = False,
) -> None:
    """Import a Lomas 0.4.x deployment: users, datasets, metadata, budgets spent, archive.

    Prints the plan; writes nothing unless every part is valid, and only with --apply
    (docs/migrating-from-lomas.md).
    """
    from neblina_admin import lomas

    raw = lomas.read(source)
    base = source if source.is_dir() else source.resolve().parent
    imported = lomas.convert(raw, base, source=str(source), fetch=_fetch, drop_orphans=drop_orphans)
    store = _store()
    lines, problems = lomas.plan(store, imported)
    for line in lines:
        out.print(line, markup=False)
    for note in imported.notes:
        out.print(f"note: {note}", markup=False)
    for item in imported.iam:
        out.print(f"needs an IAM grant: {item}", markup=False)
    if problems:
        for problem in problems:
            err.print(f"refused: {problem}", markup=False)
        raise InvalidRequest(f"nothing imported: {len(problems)} problem(s) listed above")
    if output is not None:
        _write_declarative(output, *lomas.document(imported), force=force)
        out.print(
            f"wrote {output}: plan/apply it to create users, datasets and grants (with "
            "spent); the archive comes across only with import --apply"
        )
    if not apply_it:
        out.print("Nothing written to the store (pass --apply to import).")
        return
    issued = lomas.apply(store, imported, _settings())
    out.print(
        f"Imported: {len(imported.desired.users)} users, {len(imported.desired.datasets)} "
        f"datasets, {len(imported.desired.grants)} grants, {imported.archive_count()} "
        "archived queries."
    )
    out.print("tokens (shown once, hand each to its user now):")
    for uid, token in issued.items():
        sys.stdout.write(f"{uid}\t{token.record.token_id}\t{token.secret}\n")


def _write_declarative(
    output: Path,
    document: dict[str, Any],
    metadata: dict[str, Any],
    *,
    force: bool,
    header: str = "",
) -> None:
    """The declarative file and ``metadata/<name>.yaml`` beside it (refused if any exists)."""
    import yaml

    folder = output.parent / "metadata"
    targets = [output] + [folder / f"{name}.yaml" for name in metadata]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not force:
        raise InvalidRequest(f"{', '.join(existing)} exist(s); pass --force to overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    for name, meta in metadata.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    output.write_text(header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except BrokenPipeError:  # output closed outside a command (help, usage)
        _closed_pipe()


if __name__ == "__main__":
    main()
