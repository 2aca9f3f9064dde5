"""Build the Lambda packages under ``build/lambda/``: the front, its authorizer, one per worker.

    .venv/bin/python scripts/package_lambda.py            # what `make package` runs
    .venv/bin/python scripts/package_lambda.py --if-stale # rebuild only if an input changed

What goes into each zip is the table ``FUNCTIONS`` (one ``Package`` per Lambda function):
the distributions it needs (their dependencies follow, read from the installed metadata),
the ``chalicelib`` modules it starts from (the modules they import follow, read from the
source), and how its bytecode is compiled. A new worker (polars, diffprivlib, duckdb,
synth) is one entry there, plus its pins in ``requirements.txt``.

Why not ``chalice package``: it gives every function the same zip, over Lambda's 250 MB
unzipped, and has no slimming step. This script:

1. installs ``requirements.txt`` (minus ``chalice``) once for the Lambda platform
   (``manylinux_2_28_x86_64``, CPython 3.12, wheels only; sdist-only pure-Python
   requirements such as ``antlr4-python3-runtime`` are first built into a local wheelhouse);
2. slims that tree once (cached by a digest of its inputs): moves the packages the Lambda
   runtime already provides (boto3, botocore, s3transfer, jmespath) out to
   ``build/lambda/runtime/`` (with copies of their dependencies dateutil, urllib3 and six),
   where the smoke check puts them back on ``sys.path`` to stand in for the runtime;
   deletes ``tests`` folders, console scripts, C sources and type stubs, and strips the
   debug symbols of OpenDP's shared object (numpy's and pandas' shared objects are never
   stripped);
3. stages each function from that tree: the front (``api``) gets pynamodb, Chalice's
   runtime (``chalice/app.py``, as Chalice itself ships it), ``app.py`` and the
   ``chalicelib`` modules ``app.py`` reaches, and no pandas, numpy or DP library; the
   authorizer a few modules more than pynamodb; each worker its engine family's
   libraries and the modules ``chalicelib/worker.py`` reaches;
4. compiles bytecode with unchecked hashes (``/var/task`` is read-only, and zip
   timestamps would invalidate timestamp-based ``.pyc``): all of a small package; for a
   worker only the modules its query path imports, so it stays under the limit (see
   infra/README.md);
5. writes deterministic zips (sorted, fixed timestamps: same inputs, same bytes, so
   Terraform sees no change) and ``manifest.json`` with each one's size and headroom.
"""

from __future__ import annotations

import argparse
import ast
import compileall
import email.parser
import fnmatch
import hashlib
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "lambda"

PLATFORM = "manylinux_2_28_x86_64"  # Lambda python3.12 = Amazon Linux 2023, glibc 2.34
PYTHON_VERSION = "3.12"
LAMBDA_UNZIPPED_LIMIT = 262_144_000  # 250 MB, Lambda's limit for the unzipped package
LAMBDA_TASK_ROOT = "/var/task"  # where Lambda unpacks the zip (file names in bytecode)
UNCHECKED = py_compile.PycInvalidationMode.UNCHECKED_HASH

# chalice: only its runtime module is shipped (vendored below, as Chalice does).
NOT_SHIPPED_REQUIREMENTS = {"chalice"}
# Installed at the pinned versions, then moved out of the packages: the runtime ships them.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "jmespath")
# Also in the runtime (boto3's own dependencies) but kept in the dependency tree too, pinned:
# a package whose distributions require them (pandas -> dateutil -> six) ships them; the
# others use the runtime's.
RUNTIME_SHARED = ("python_dateutil", "dateutil", "urllib3", "six")
STRIPPED_SHARED_OBJECTS = ("opendp/lib/opendp.abi3.so",)

# Never in a front package (api, authorizer): the front's cold start imports no data or DP
# library (issue 13); tests/deploy/test_package_lambda.py checks the zips against this list.
HEAVY_PACKAGES = (
    "pandas",
    "numpy",
    "opendp",
    "snsql",
    "sqlalchemy",
    "fastparquet",
    "polars",
    "duckdb",
    "sklearn",
    "scipy",
)


@dataclass(frozen=True)
class Package:
    """What one Lambda function's zip (``build/lambda/<name>.zip``) holds.

    ``requirements``: distributions from ``requirements.txt``; each brings its own
    dependencies (``Requires-Dist`` of the installed metadata, markers evaluated for the
    Lambda platform), except those the runtime provides (boto3, botocore...).
    ``chalicelib``: the files it starts from (paths under ``chalicelib/``, or ``app.py``);
    with ``follow_imports`` every ``chalicelib`` module they import, at any depth and also
    inside functions (``if TYPE_CHECKING:`` blocks excepted), comes along.
    ``exclude``: files (globs) never shipped nor followed; a shipped module that imports one
    at module level fails the build (a function-level import is a path this function never
    takes, e.g. the front's ``deps.build_worker``).
    ``chalice``: Chalice's runtime module (what ``app.py`` needs).
    ``bytecode``: ``"all"`` (small packages), or ``"imported"``: only the modules that
    ``probe`` (arguments of scripts/package_smoke.py) imports, third-party ones as bytecode
    *instead of* source, so a big package stays under the limit.
    ``heavy_allowed``: False for the front: the build fails if a heavy package slips in.
    """

    name: str
    requirements: tuple[str, ...]
    chalicelib: tuple[str, ...]
    handler: str
    follow_imports: bool = True
    exclude: tuple[str, ...] = ()
    chalice: bool = False
    data_files: tuple[str, ...] = ()
    bytecode: str = "all"
    probe: tuple[str, ...] = ()
    heavy_allowed: bool = True


# Build time only: generates chalicelib/openapi.json (with pydantic, which is not shipped).
BUILD_ONLY = ("chalicelib/api_models.py",)
# The engines' side of chalicelib: what a worker runs and the front never imports.
WORKER_ONLY = (
    "chalicelib/worker.py",
    "chalicelib/datasets.py",
    "chalicelib/dummy.py",
    "chalicelib/wire_tables.py",
    "chalicelib/engines/[!_]*.py",  # the engines themselves (engines/__init__.py is shared)
)
# The front's side: routes, authentication, the ledger's debit, the OpenAPI document.
FRONT_ONLY = (
    "app.py",
    "chalicelib/service.py",
    "chalicelib/auth.py",
    "chalicelib/openapi.py",
    "chalicelib/console_assets.py",
)
# The researcher console's static files (chalicelib/console_assets.py serves them).
CONSOLE_FILES = ("console/index.html", "console/console.js", "console/console.css")
WORKER_ROOTS = ("chalicelib/worker.py",)
# Each family's engine modules; a worker ships its own and none of the others' (the registry
# in chalicelib/engines/__init__.py imports each engine lazily, in its factory).
ENGINE_MODULES = {
    "sql": ("smartnoise_engine.py", "sql_policy.py", "duckdb_sql.py"),
    "opendp": ("opendp_engine.py",),
    "polars": ("polars_engine.py", "polars_plan.py"),
    "diffprivlib": ("diffprivlib_engine.py", "diffprivlib_fit.py"),
    "synth": ("synth_engine.py", "synth_fit.py"),
    # Spark-backed datasets: a Spark process (EMR Serverless on AWS), never a Lambda zip
    "spark": ("spark_sql.py",),
}


def other_engines(family: str) -> tuple[str, ...]:
    """The engine modules of every family but ``family`` (a worker's exclusions)."""
    return tuple(
        f"chalicelib/engines/{module}"
        for other, modules in sorted(ENGINE_MODULES.items())
        if other != family
        for module in modules
    )


WORKER_HANDLER = "chalicelib.worker.lambda_handler"

# Worker families that do not fit a zip, deployed from a container image instead
# (infra/docker/Dockerfile.worker with this requirements file; Terraform's
# workers[family].image_uri). polars: OpenDP's polars extra brings polars (123 MB; 105 MB
# stripped), pyarrow, scikit-learn and SciPy, next to OpenDP's 134 MB and pandas/numpy.
# diffprivlib: scikit-learn (51 MB installed), SciPy (144 MB with its libs), diffprivlib and
# joblib (6 MB) on top of pandas and numpy (142 MB): 343 MB before OpenDP, over the zip's 250.
# synth: jaxlib (330 MB installed), jax (32 MB), SciPy (144 MB), networkx, Faker and mbi
# on top of pandas, numpy, OpenDP and SmartNoise SQL (snsynth imports snsql): BENCHMARKS.md.
# Its smartnoise-synth goes in with --no-deps (requirements-synth-nodeps.txt).
# sql: SmartNoise SQL runs its rewritten queries on DuckDB over the dataset's Parquet copy;
# duckdb installs 69 MB, and the zip with pandas, NumPy, OpenDP and SmartNoise was already
# 248.5 MB of the 250 (BENCHMARKS.md "DuckDB package size"): a zip could only run SQLite.
IMAGE_WORKERS = {
    "sql": "requirements-sql.txt",
    "polars": "requirements-polars.txt",
    "diffprivlib": "requirements-diffprivlib.txt",
    "synth": "requirements-synth.txt",
}

# The functions (Terraform: infra/terraform, one aws_lambda_function each). Workers are named
# "worker-<worker>" after chalicelib/workers.py's worker names (NEBLINA_WORKER).
FUNCTIONS: tuple[Package, ...] = (
    Package(
        "api",
        requirements=("pynamodb",),
        chalicelib=("app.py",),
        handler="app.app",
        exclude=WORKER_ONLY,
        chalice=True,
        # the OpenAPI document and the console it serves
        data_files=("openapi.json", *CONSOLE_FILES),
        heavy_allowed=False,
    ),
    # What the authorizer imports (app.py imports config and errors; the authorizer function
    # imports auth and storage; those import models), listed: app.py's other imports are the
    # front's routes, which the authorizer never runs. tests/deploy/test_package_lambda.py
    # runs the authorizer from this package alone, so a missing module fails there.
    Package(
        "authorizer",
        requirements=("pynamodb",),
        chalicelib=(
            "app.py",
            "chalicelib/__init__.py",
            "chalicelib/auth.py",
            "chalicelib/config.py",
            "chalicelib/errors.py",
            "chalicelib/models.py",
            "chalicelib/storage/__init__.py",
            "chalicelib/storage/base.py",
            "chalicelib/storage/dynamo.py",
            "chalicelib/storage/dynamo_models.py",
        ),
        handler="app.token_authorizer",
        follow_imports=False,
        chalice=True,
        heavy_allowed=False,
    ),
    # worker-sql: an image worker (IMAGE_WORKERS), so that it runs DuckDB.
    Package(
        "worker-opendp",  # engine opendp
        requirements=("opendp", "pandas", "numpy", "fastparquet", "pynamodb"),
        chalicelib=WORKER_ROOTS,
        handler=WORKER_HANDLER,
        exclude=(*FRONT_ONLY, *other_engines("opendp")),
        bytecode="imported",
        probe=("--function", "worker", "--worker", "opendp"),
    ),
)

# The Spark job's code (docs/spark.md): not a Lambda. EMR Serverless runs
# scripts/spark_job_main.py (copied to build/lambda/spark-job-main.py) with this zip of
# chalicelib on --py-files; the job's third-party libraries come from the application's
# image (infra/README.md, "EMR Serverless"). Source only: EMR's Python compiles it.
SPARK_JOB = Package(
    "spark-job",
    requirements=(),
    chalicelib=(
        "chalicelib/spark_job.py",
        "chalicelib/worker.py",
        "chalicelib/engines/spark_sql.py",
    ),
    handler="chalicelib.spark_job.main",
    exclude=(
        *FRONT_ONLY,
        *(m for m in other_engines("sql") if not m.endswith("/spark_sql.py")),
    ),
)
SPARK_JOB_ENTRY = ROOT / "scripts" / "spark_job_main.py"


def build_spark_job(out: Path) -> dict[str, Any]:
    """``spark-job.zip`` (chalicelib as the job reaches it) and ``spark-job-main.py``."""
    out.mkdir(parents=True, exist_ok=True)
    stage = out / SPARK_JOB.name
    shutil.rmtree(stage, ignore_errors=True)
    for name in source_files(SPARK_JOB):
        target = stage / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, target)
    write_zip(stage, out / f"{SPARK_JOB.name}.zip")
    entry = out / "spark-job-main.py"
    shutil.copyfile(SPARK_JOB_ENTRY, entry)
    return {
        **zip_summary(out / f"{SPARK_JOB.name}.zip"),
        "entry_point": str(entry.relative_to(ROOT)) if entry.is_relative_to(ROOT) else str(entry),
        "entry_point_sha256": hashlib.sha256(entry.read_bytes()).hexdigest(),
    }


# Bump when the slimming rules change, so cached dependency trees are rebuilt.
SLIM_RULES_VERSION = "4"
# Build inputs and type stubs, never read at run time.
DROPPED_SUFFIXES = (".c", ".h", ".pyx", ".pxd", ".pyi")
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def log(message: str) -> None:
    print(f"package: {message}", flush=True)


def sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def app_sources() -> list[Path]:
    """app.py and every chalicelib file (what the functions are built from)."""
    data = [ROOT / "chalicelib" / name for p in FUNCTIONS for name in p.data_files]
    return [ROOT / "app.py", *sorted((ROOT / "chalicelib").rglob("*.py")), *sorted(set(data))]


def lambda_requirements() -> list[str]:
    """requirements.txt lines that go into the package."""
    lines = []
    for raw in (ROOT / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split("==")[0].split(">")[0].split("<")[0].split("[")[0].strip().lower()
        if name not in NOT_SHIPPED_REQUIREMENTS:
            lines.append(line)
    return lines


def deps_digest() -> str:
    """Identifies a slimmed dependency tree: requirements, platform and slimming rules."""
    document = {
        "requirements": lambda_requirements(),
        "platform": PLATFORM,
        "python": PYTHON_VERSION,
        "rules": SLIM_RULES_VERSION,
        "runtime": RUNTIME_PROVIDED,
        "shared": RUNTIME_SHARED,
        "stripped": STRIPPED_SHARED_OBJECTS,
        "dropped": DROPPED_SUFFIXES,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def inputs_digest() -> str:
    """Identifies a whole build: the dependency tree, the app code and this script."""
    code = sha256_files([*app_sources(), Path(__file__).resolve()])
    return hashlib.sha256(f"{deps_digest()}:{code}".encode()).hexdigest()


def pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
        check=True,
    )


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def build_dependencies(out: Path) -> Path:
    """The slimmed dependency tree for the Lambda platform (cached by ``deps_digest``)."""
    deps = out / "deps"
    stamp = deps / ".neblina-deps"
    digest = deps_digest()
    if stamp.exists() and stamp.read_text() == digest:
        log(f"dependencies: cached ({deps.relative_to(ROOT)})")
        return deps
    for stale in (deps, out / "runtime", out / "wheelhouse"):
        shutil.rmtree(stale, ignore_errors=True)
    requirements = out / "requirements-lambda.txt"
    requirements.write_text("\n".join(lambda_requirements()) + "\n")
    started = time.perf_counter()
    # Host wheels (binary wheels where they exist, pure-Python wheels built from sdists);
    # the install below takes only platform-compatible wheels from PyPI or this wheelhouse.
    log("dependencies: building a wheelhouse (sdist-only requirements become wheels)")
    pip("wheel", "-r", str(requirements), "--wheel-dir", str(out / "wheelhouse"))
    log(f"dependencies: installing for {PLATFORM}, CPython {PYTHON_VERSION}")
    pip(
        "install",
        "--target",
        str(deps),
        "--platform",
        PLATFORM,
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        "--only-binary=:all:",
        "--no-compile",
        "--find-links",
        str(out / "wheelhouse"),
        "-r",
        str(requirements),
    )
    before = tree_size(deps)
    slim(deps, out / "runtime")
    after = tree_size(deps)
    log(
        f"dependencies: {before / 1e6:.0f} MB installed, {after / 1e6:.0f} MB after slimming "
        f"({time.perf_counter() - started:.0f} s)"
    )
    stamp.write_text(digest)
    return deps


LAMBDA_IMAGE_LIMIT = 10_737_418_240  # 10 GiB, Lambda's limit for a container image
# What infra/docker/Dockerfile.worker deletes from the requirement files (sed) before its pip
# install: the front's framework, and what the base image already has.
IMAGE_SKIPPED = re.compile(r"^(chalice|boto3|botocore)==", re.MULTILINE)


def image_requirements(family: str) -> list[Path]:
    """The requirement files an image worker's build reads: its own and those it includes."""
    pending, found = [ROOT / IMAGE_WORKERS[family]], []
    while pending:
        path = pending.pop()
        if path in found:
            continue
        found.append(path)
        for line in path.read_text().splitlines():
            if line.startswith("-r "):
                pending.append(ROOT / line.removeprefix("-r ").strip())
    return sorted(found)


def build_image_tree(family: str, out: Path) -> Path:
    """What infra/docker/Dockerfile.worker installs in ``LAMBDA_TASK_ROOT`` for ``family``,
    built without Docker: ``build/lambda/image-<family>/`` (the install cached by a digest
    of the requirement files and the platform; ``chalicelib`` re-copied when it changed).

    The same pip install (the Lambda platform, wheels only, nothing slimmed or stripped) of
    the same filtered requirement files, then ``chalicelib/``, then bytecode for every
    module (unchecked hashes, as the Dockerfile compiles it); the base image's Python and
    boto3 are stood in for by this interpreter and ``build/lambda/runtime/``. Lets the
    package test check the image's size and run its worker without a Docker engine.
    """
    deps = build_dependencies(out)  # the wheelhouse (sdist-only requirements) and runtime/
    tree = out / f"image-{family}"
    stamp, code_stamp = tree / ".neblina-image", tree / ".neblina-code"
    files = image_requirements(family)
    document = {
        "requirements": {p.name: IMAGE_SKIPPED.sub("# ", p.read_text()) for p in files},
        "platform": PLATFORM,
        "python": PYTHON_VERSION,
        "bytecode": "unchecked-hash",
    }
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
    code = sha256_files(sorted((ROOT / "chalicelib").rglob("*.py")))
    started = time.perf_counter()
    if stamp.exists() and stamp.read_text() == digest:
        if code_stamp.exists() and code_stamp.read_text() == code:
            log(f"image-{family}: cached ({tree.relative_to(ROOT)})")
            return tree
        log(f"image-{family}: dependencies cached, chalicelib changed")
    else:
        shutil.rmtree(tree, ignore_errors=True)
        requirements = out / f"image-{family}-requirements"
        shutil.rmtree(requirements, ignore_errors=True)
        requirements.mkdir(parents=True)
        for name, text in document["requirements"].items():
            (requirements / name).write_text(text)
        log(f"image-{family}: installing {IMAGE_WORKERS[family]} for {PLATFORM} (no slimming)")
        pip(
            "install",
            "--target",
            str(tree),
            "--platform",
            PLATFORM,
            "--implementation",
            "cp",
            "--python-version",
            PYTHON_VERSION,
            "--only-binary=:all:",
            "--no-compile",
            "--find-links",
            str(deps.parent / "wheelhouse"),
            "-r",
            str(requirements / IMAGE_WORKERS[family]),
        )
        # the Dockerfile's `python -m compileall -q --invalidation-mode unchecked-hash`
        compileall.compile_dir(str(tree), quiet=1, workers=1, invalidation_mode=UNCHECKED)
        stamp.write_text(digest)
    shutil.rmtree(tree / "chalicelib", ignore_errors=True)
    shutil.copytree(ROOT / "chalicelib", tree / "chalicelib", ignore=shutil.ignore_patterns(
        "__pycache__"))  # fmt: skip
    compileall.compile_dir(
        str(tree / "chalicelib"), quiet=1, workers=1, invalidation_mode=UNCHECKED
    )
    code_stamp.write_text(code)
    log(
        f"image-{family}: {tree_size(tree) / 1e6:.0f} MB installed "
        f"({time.perf_counter() - started:.0f} s)"
    )
    return tree


def top_name(entry: Path) -> str:
    """The distribution or top-level module an installed entry belongs to."""
    return entry.name.split("-")[0].removesuffix(".py").lower()


def slim(deps: Path, runtime: Path) -> None:
    """Remove what the Lambda does not need from an installed dependency tree."""
    runtime.mkdir(parents=True, exist_ok=True)
    for entry in sorted(deps.iterdir()):
        if top_name(entry) in RUNTIME_PROVIDED:
            shutil.move(str(entry), runtime / entry.name)
        elif top_name(entry) in RUNTIME_SHARED:
            copy = shutil.copytree if entry.is_dir() else shutil.copy2
            copy(entry, runtime / entry.name)
    shutil.rmtree(deps / "bin", ignore_errors=True)
    for folder in sorted(deps.rglob("tests"), reverse=True):
        if folder.is_dir():
            shutil.rmtree(folder)
    for folder in sorted(deps.rglob("__pycache__"), reverse=True):
        shutil.rmtree(folder, ignore_errors=True)
    for path in sorted(deps.rglob("*")):
        if path.suffix in DROPPED_SUFFIXES and path.is_file():
            path.unlink()
    for relative in STRIPPED_SHARED_OBJECTS:
        target = deps / relative
        subprocess.run(["strip", "--strip-unneeded", str(target)], check=True)


def matches(relative: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(relative, pattern) for pattern in patterns)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def own_imports(path: Path) -> list[tuple[str, bool]]:
    """(file, at module level) for each ``chalicelib`` module the source file imports
    (``if TYPE_CHECKING:`` blocks skipped); files relative to the project root."""
    found: list[tuple[str, bool]] = []

    def modules(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if node.level or not node.module:  # relative imports: not used in chalicelib
            return []
        # "from chalicelib import errors" may name a submodule: try both
        return [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other, top)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                for module in modules(child):
                    if module == "chalicelib" or module.startswith("chalicelib."):
                        base = ROOT / Path(*module.split("."))
                        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                            if candidate.is_file():
                                found.append((str(candidate.relative_to(ROOT)), top))
                                # a submodule also runs its packages' __init__.py
                                for parent in candidate.relative_to(ROOT).parents[:-1]:
                                    init = parent / "__init__.py"
                                    found.append((str(init), top))
                continue
            inner = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, top and not inner)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def source_files(package: Package) -> list[str]:
    """The project files (relative to the root) that ``package`` ships.

    Raises SystemExit when a shipped module imports an excluded one at module level: the
    package could not even import it.
    """
    excluded = (*BUILD_ONLY, *package.exclude)
    selected: set[str] = set()
    pending = [name for name in package.chalicelib if not matches(name, excluded)]
    problems = []
    while pending:
        name = pending.pop()
        if name in selected:
            continue
        if not (ROOT / name).is_file():
            raise SystemExit(f"package: {package.name}: {name} does not exist")
        selected.add(name)
        if not package.follow_imports:
            continue
        for imported, top in own_imports(ROOT / name):
            if matches(imported, excluded):
                if top:
                    problems.append(f"{name} imports {imported} at module level")
            elif imported not in selected:
                pending.append(imported)
    if problems:
        raise SystemExit(f"package: {package.name} excludes what it imports: {problems}")
    data = [f"chalicelib/{name}" for name in package.data_files]
    return sorted(selected | set(data))


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(deps: Path) -> dict[str, Path]:
    """{normalized distribution name: its .dist-info folder} in the dependency tree."""
    out = {}
    for info in deps.glob("*.dist-info"):
        metadata = email.parser.Parser().parsestr((info / "METADATA").read_text())
        out[normalize(metadata["Name"])] = info
    return out


def distributions(deps: Path, requirements: tuple[str, ...]) -> list[Path]:
    """The .dist-info folders of ``requirements`` and everything they require, as
    installed for the Lambda platform (markers evaluated there; extras only as requested).
    Runtime-provided distributions (moved out by ``slim``) are left to the runtime."""
    from packaging.requirements import Requirement

    available = installed(deps)
    runtime = {normalize(name) for name in RUNTIME_PROVIDED}
    environment = {
        "python_version": PYTHON_VERSION,
        "python_full_version": f"{PYTHON_VERSION}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    chosen: dict[str, Path] = {}
    pending = [(requirement, "") for requirement in requirements]
    while pending:
        text, extra = pending.pop()
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate({**environment, "extra": extra}):
            continue
        name = normalize(requirement.name)
        if name in runtime or name in chosen:
            continue
        if name not in available:
            raise SystemExit(f"package: {text} is not installed for the Lambda (requirements.txt)")
        chosen[name] = available[name]
        metadata = email.parser.Parser().parsestr((available[name] / "METADATA").read_text())
        for extra_name in ("", *sorted(requirement.extras)):
            pending.extend((dep, extra_name) for dep in metadata.get_all("Requires-Dist") or [])
    return [chosen[name] for name in sorted(chosen)]


def top_level_entries(info: Path) -> set[str]:
    """The top-level files and folders a distribution installed (from its RECORD)."""
    entries = {info.name}
    for line in (info / "RECORD").read_text().splitlines():
        first = line.split(",", 1)[0].split("/", 1)[0]
        if first and first != "..":  # "../../bin/...": console scripts, not shipped
            entries.add(first)
    return entries


def stage_package(package: Package, deps: Path, stage: Path) -> None:
    """Copy the package's distributions and project files into ``stage``."""
    import chalice
    import chalice.app

    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for info in distributions(deps, package.requirements):
        for entry in sorted(top_level_entries(info)):
            source = deps / entry
            if source.is_dir():
                shutil.copytree(source, stage / entry, dirs_exist_ok=True)
            elif source.is_file():
                shutil.copy2(source, stage / entry)
    if package.chalice:
        (stage / "chalice").mkdir()
        shutil.copy2(chalice.__file__, stage / "chalice" / "__init__.py")
        shutil.copy2(chalice.app.__file__, stage / "chalice" / "app.py")
    for name in source_files(package):
        target = stage / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def compile_all(stage: Path) -> int:
    """Bytecode for every module (small packages); returns their count."""
    compileall.compile_dir(
        str(stage), ddir=LAMBDA_TASK_ROOT, quiet=1, workers=1, invalidation_mode=UNCHECKED
    )
    return sum(1 for _ in stage.rglob("*.py"))


def compile_imported(package: Package, stage: Path, runtime: Path) -> int:
    """Bytecode for the modules the package's probe imports; returns their count.

    A worker's query path imports ~600 modules; without bytecode every cold start compiles
    them (measured on the round-1 API: first query 2.4 s instead of 0.6 s). Bytecode next to
    the sources would add ~18 MB and push the package over the limit, so third-party
    modules on that path ship as bytecode *instead of* source (sourceless ``module.pyc``;
    tracebacks through them show function names and line numbers but no source text).
    Neblina's own code keeps its source, all of it with unchecked-hash bytecode in
    ``__pycache__``.
    """
    smoke = Path(__file__).resolve().parent / "package_smoke.py"
    command = [sys.executable, "-I", "-S", "-B", str(smoke), "--package", str(stage)]
    command += ["--runtime", str(runtime), *package.probe, "--store", "stub", "--list-modules"]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"package: {package.name}: the probe failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.splitlines()[-1])
    if not all(report.get("ok", {}).values()) or report.get("status", 200) != 200:
        raise SystemExit(f"package: {package.name}: the probe's calls failed: {report}")
    own = {*stage.glob("*.py"), *(stage / "chalicelib").rglob("*.py")}
    for path in sorted(own):
        in_lambda = f"{LAMBDA_TASK_ROOT}/{path.relative_to(stage)}"
        py_compile.compile(str(path), dfile=in_lambda, doraise=True, invalidation_mode=UNCHECKED)
    count = len(own)
    for name in report["module_files"]:
        path = Path(name)
        if path.suffix != ".py" or not path.is_relative_to(stage) or path in own:
            continue
        in_lambda = f"{LAMBDA_TASK_ROOT}/{path.relative_to(stage)}"
        py_compile.compile(
            str(path), cfile=str(path.with_suffix(".pyc")), dfile=in_lambda, doraise=True
        )
        path.unlink()
        count += 1
    return count


def write_zip(stage: Path, target: Path) -> None:
    """A deterministic zip of ``stage`` (sorted entries, fixed times and modes)."""
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in sorted(p for p in stage.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(str(path.relative_to(stage)), date_time=FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100755 if os.access(path, os.X_OK) else 0o100644) << 16
            with path.open("rb") as handle:
                archive.writestr(info, handle.read(), compresslevel=6)
    tmp.replace(target)


def zip_summary(path: Path) -> dict[str, int | str]:
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    return {
        "zip": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "zipped_bytes": path.stat().st_size,
        "unzipped_bytes": sum(info.file_size for info in infos),
        "files": len(infos),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def write_smoke_metadata(out: Path) -> None:
    """PENGUIN's metadata as JSON for scripts/package_smoke.py (not every package has YAML)."""
    import yaml

    metadata = yaml.safe_load((ROOT / "localstack" / "data" / "penguin.yaml").read_text())
    (out / "penguin-metadata.json").write_text(json.dumps(metadata, default=str) + "\n")


def build(out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    deps = build_dependencies(out)
    runtime = out / "runtime"
    write_smoke_metadata(out)
    manifest: dict[str, Any] = {
        "inputs": inputs_digest(),
        "platform": PLATFORM,
        "python": PYTHON_VERSION,
        "limit_unzipped_bytes": LAMBDA_UNZIPPED_LIMIT,
        "functions": {},
    }
    for package in FUNCTIONS:
        stage = out / package.name
        stage_package(package, deps, stage)
        if package.bytecode == "imported":
            compiled = compile_imported(package, stage, runtime)
        else:
            compiled = compile_all(stage)
        log(f"{package.name}: bytecode for {compiled} modules")
        target = out / f"{package.name}.zip"
        write_zip(stage, target)
        manifest["functions"][package.name] = {
            **zip_summary(target),
            "handler": package.handler,
            "requirements": list(package.requirements),
        }
    manifest["spark_job"] = build_spark_job(out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check(manifest: dict[str, Any]) -> list[str]:
    """Problems that make a package unusable (empty when every one is fine)."""
    problems = []
    for package in FUNCTIONS:
        summary = manifest["functions"][package.name]
        if summary["unzipped_bytes"] > LAMBDA_UNZIPPED_LIMIT:
            problems.append(
                f"{package.name} package is {summary['unzipped_bytes']:,} bytes unzipped, over "
                f"Lambda's {LAMBDA_UNZIPPED_LIMIT:,}: split it, or use a container image"
            )
        if not package.heavy_allowed:
            with zipfile.ZipFile(ROOT / summary["zip"]) as archive:
                tops = {name.split("/")[0] for name in archive.namelist()}
            heavy = sorted(tops & set(HEAVY_PACKAGES))
            if heavy:
                problems.append(f"{package.name} package contains {', '.join(heavy)}")
    return problems


def is_fresh(out: Path) -> bool:
    manifest = out / "manifest.json"
    if not manifest.exists():
        return False
    document = json.loads(manifest.read_text())
    zips_exist = all((out / f"{package.name}.zip").exists() for package in FUNCTIONS)
    return zips_exist and document.get("inputs") == inputs_digest()


def summary_line(name: str, summary: dict[str, Any]) -> str:
    """One package's size and its headroom under Lambda's unzipped limit."""
    headroom = LAMBDA_UNZIPPED_LIMIT - summary["unzipped_bytes"]
    return (
        f"{name}: {summary['zip']}  {summary['zipped_bytes'] / 1e6:.1f} MB zipped, "
        f"{summary['unzipped_bytes'] / 1e6:.1f} MB unzipped ({summary['files']} files), "
        f"headroom {headroom / 1e6:.1f} MB ({100 * headroom / LAMBDA_UNZIPPED_LIMIT:.0f} %)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--if-stale", action="store_true", help="do nothing when the last build is up to date"
    )
    parser.add_argument(
        "--spark-job",
        action="store_true",
        help="build only the Spark job's zip and entry point (no dependencies, seconds)",
    )
    parser.add_argument(
        "--image-tree",
        choices=sorted(IMAGE_WORKERS),
        help="instead: install what the worker's container image holds, without Docker",
    )
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if args.spark_job:
        summary = build_spark_job(out)
        log(f"spark-job: {summary['zip']} ({summary['files']} files), {summary['entry_point']}")
        return 0
    if sys.version_info[:2] != (3, 12):
        log(f"needs Python 3.12 (this is {sys.version.split()[0]}): run it with .venv/bin/python")
        return 2
    if args.image_tree:
        out.mkdir(parents=True, exist_ok=True)
        tree = build_image_tree(args.image_tree, out)
        size = tree_size(tree)
        log(
            f"image-{args.image_tree}: {tree.relative_to(ROOT)}  {size / 1e6:.1f} MB installed "
            f"(Lambda's image limit: {LAMBDA_IMAGE_LIMIT / 2**30:.0f} GiB with the base image)"
        )
        return 0
    if args.if_stale and is_fresh(out):
        manifest = json.loads((out / "manifest.json").read_text())
        log("up to date")
    else:
        manifest = build(out)
    log(f"limit: {LAMBDA_UNZIPPED_LIMIT / 1e6:.1f} MB unzipped per function")
    for package in FUNCTIONS:
        log(summary_line(package.name, manifest["functions"][package.name]))
    problems = check(manifest)
    for problem in problems:
        log(f"ERROR: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
