"""Build the two Lambda packages under ``build/lambda/``: ``api.zip`` and ``authorizer.zip``.

    .venv/bin/python scripts/package_lambda.py            # what `make package` runs
    .venv/bin/python scripts/package_lambda.py --if-stale # rebuild only if an input changed

Why not ``chalice package``: it gives every function the same 93 MB zip (331 MB unzipped,
over Lambda's 250 MB limit) and has no slimming step. This script:

1. installs ``requirements.txt`` (minus ``chalice``) for the Lambda platform
   (``manylinux_2_28_x86_64``, CPython 3.12, wheels only; sdist-only pure-Python
   requirements such as ``antlr4-python3-runtime`` are first built into a local wheelhouse);
2. slims that tree once (cached by a digest of its inputs): moves the packages the Lambda
   runtime already provides (boto3, botocore, s3transfer, jmespath) out to
   ``build/lambda/runtime/`` (with copies of their dependencies dateutil, urllib3 and six,
   which the API package keeps too, for pandas), where the smoke check puts them back on
   ``sys.path`` to stand in for the runtime; deletes ``tests`` folders, console scripts,
   C sources and type stubs, and strips the debug symbols of OpenDP's shared object
   (numpy's and pandas' shared objects are never stripped);
3. stages each function: the API gets everything; the authorizer gets only pynamodb,
   Chalice's runtime (``chalice/app.py``, as Chalice itself ships it), ``app.py`` and the
   few ``chalicelib`` modules the authorizer imports — no pandas, numpy or DP library;
4. compiles bytecode with unchecked hashes (``/var/task`` is read-only, and zip
   timestamps would invalidate timestamp-based ``.pyc``): for the API only the modules the
   query path imports, so the package stays under the limit (see infra/README.md);
5. writes deterministic zips (sorted, fixed timestamps: same inputs, same bytes, so
   Terraform sees no change) and ``manifest.json`` with the sizes.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import py_compile
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

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
# Also in the runtime (boto3's own dependencies) but kept in the API package too, pinned,
# because pandas needs them; the authorizer uses the runtime's.
RUNTIME_SHARED = ("python_dateutil", "dateutil", "urllib3", "six")
STRIPPED_SHARED_OBJECTS = ("opendp/lib/opendp.abi3.so",)

# What the authorizer imports (app.py imports config and errors; the authorizer function
# imports auth and storage; those import models). tests/deploy/test_package_lambda.py runs the
# authorizer from this package alone, so a missing module fails there.
AUTHORIZER_DEPENDENCIES = ("pynamodb",)
AUTHORIZER_CHALICELIB = (
    "__init__.py",
    "auth.py",
    "config.py",
    "errors.py",
    "models.py",
    "storage/__init__.py",
    "storage/base.py",
    "storage/dynamo.py",
    "storage/dynamo_models.py",
)
HEAVY_PACKAGES = ("pandas", "numpy", "opendp", "snsql", "sqlalchemy", "fastparquet")

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


# Build time only: generates chalicelib/openapi.json (with pydantic, which is not shipped).
BUILD_ONLY_SOURCES = {"api_models.py"}
# Data files the API reads: the OpenAPI document it serves.
API_DATA_FILES = ("openapi.json",)


def app_sources() -> list[Path]:
    """app.py and every chalicelib source file (what both functions are built from)."""
    data = [ROOT / "chalicelib" / name for name in API_DATA_FILES]
    return [ROOT / "app.py", *sorted((ROOT / "chalicelib").rglob("*.py")), *data]


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


def copy_app(stage: Path, chalicelib_files: list[str] | None) -> None:
    """app.py, chalicelib (all of it or the listed files) and Chalice's runtime module."""
    import chalice
    import chalice.app

    shutil.copy2(ROOT / "app.py", stage / "app.py")
    (stage / "chalice").mkdir(exist_ok=True)
    shutil.copy2(chalice.__file__, stage / "chalice" / "__init__.py")
    shutil.copy2(chalice.app.__file__, stage / "chalice" / "app.py")
    source = ROOT / "chalicelib"
    names = chalicelib_files or [
        *(
            str(p.relative_to(source))
            for p in sorted(source.rglob("*.py"))
            if "__pycache__" not in p.parts and p.name not in BUILD_ONLY_SOURCES
        ),
        *API_DATA_FILES,
    ]
    for name in names:
        target = stage / "chalicelib" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target)


def compile_all(stage: Path) -> None:
    """Bytecode for every module (small packages)."""
    compileall.compile_dir(
        str(stage), ddir=LAMBDA_TASK_ROOT, quiet=1, workers=1, invalidation_mode=UNCHECKED
    )


def compile_imported(stage: Path, runtime: Path) -> int:
    """Bytecode for the modules the API's query path imports; returns their count.

    The query path imports ~600 modules; without bytecode every cold start compiles them
    (measured: first query 2.4 s instead of 0.6 s). Bytecode next to the sources would add
    ~18 MB and push the package over the limit, so third-party modules on that path ship
    as bytecode *instead of* source (sourceless ``module.pyc``; tracebacks through them
    show function names and line numbers but no source text). Neblina's own code keeps its
    source (and so does the vendored Chalice runtime), with unchecked-hash bytecode in
    ``__pycache__``.
    """
    smoke = Path(__file__).resolve().parent / "package_smoke.py"
    command = [sys.executable, "-I", "-S", "-B", str(smoke), "--package", str(stage)]
    command += ["--runtime", str(runtime), "--function", "api", "--store", "stub"]
    result = subprocess.run(
        [*command, "--list-modules"], check=True, capture_output=True, text=True
    )
    report = json.loads(result.stdout.splitlines()[-1])
    if report.get("status") != 200:
        raise SystemExit(f"package: the staged API package failed its smoke query: {report}")
    own = {
        stage / "app.py",
        *(stage / "chalicelib").rglob("*.py"),
        *(stage / "chalice").glob("*.py"),
    }
    count = 0
    for name in report["module_files"]:
        path = Path(name)
        if path.suffix != ".py" or not path.is_relative_to(stage):
            continue
        in_lambda = f"{LAMBDA_TASK_ROOT}/{path.relative_to(stage)}"
        if path in own:
            py_compile.compile(
                str(path), dfile=in_lambda, doraise=True, invalidation_mode=UNCHECKED
            )
        else:
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
        "zip": str(path.relative_to(ROOT)),
        "zipped_bytes": path.stat().st_size,
        "unzipped_bytes": sum(info.file_size for info in infos),
        "files": len(infos),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def build(out: Path) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    deps = build_dependencies(out)
    runtime = out / "runtime"

    api = out / "api"
    shutil.rmtree(api, ignore_errors=True)
    shutil.copytree(deps, api, ignore=shutil.ignore_patterns(".neblina-deps"))
    copy_app(api, None)
    compiled = compile_imported(api, runtime)
    log(f"api: bytecode for {compiled} modules of the query path")

    authorizer = out / "authorizer"
    shutil.rmtree(authorizer, ignore_errors=True)
    authorizer.mkdir()
    for entry in sorted(deps.iterdir()):
        if top_name(entry) in AUTHORIZER_DEPENDENCIES:
            copy = shutil.copytree if entry.is_dir() else shutil.copy2
            copy(entry, authorizer / entry.name)
    copy_app(authorizer, list(AUTHORIZER_CHALICELIB))
    compile_all(authorizer)

    manifest: dict[str, object] = {
        "inputs": inputs_digest(),
        "platform": PLATFORM,
        "python": PYTHON_VERSION,
        "limit_unzipped_bytes": LAMBDA_UNZIPPED_LIMIT,
    }
    for name, stage in (("api", api), ("authorizer", authorizer)):
        target = out / f"{name}.zip"
        write_zip(stage, target)
        manifest[name] = zip_summary(target)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check(manifest: dict[str, object]) -> list[str]:
    """Problems that make a package unusable (empty when both are fine)."""
    problems = []
    api = manifest["api"]
    assert isinstance(api, dict)
    if api["unzipped_bytes"] > LAMBDA_UNZIPPED_LIMIT:
        problems.append(
            f"api package is {api['unzipped_bytes']:,} bytes unzipped, over Lambda's "
            f"{LAMBDA_UNZIPPED_LIMIT:,}: use the container image (infra/docker/Dockerfile)"
        )
    with zipfile.ZipFile(ROOT / str(manifest["authorizer"]["zip"])) as archive:  # type: ignore[index]
        tops = {name.split("/")[0] for name in archive.namelist()}
    heavy = sorted(tops & set(HEAVY_PACKAGES))
    if heavy:
        problems.append(f"authorizer package contains {', '.join(heavy)}")
    return problems


def is_fresh(out: Path) -> bool:
    manifest = out / "manifest.json"
    if not manifest.exists():
        return False
    document = json.loads(manifest.read_text())
    zips_exist = all((out / f"{name}.zip").exists() for name in ("api", "authorizer"))
    return zips_exist and document.get("inputs") == inputs_digest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--if-stale", action="store_true", help="do nothing when the last build is up to date"
    )
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if sys.version_info[:2] != (3, 12):
        log(f"needs Python 3.12 (this is {sys.version.split()[0]}): run it with .venv/bin/python")
        return 2
    if args.if_stale and is_fresh(out):
        manifest = json.loads((out / "manifest.json").read_text())
        log("up to date")
    else:
        manifest = build(out)
    for name in ("api", "authorizer"):
        summary = manifest[name]
        log(
            f"{name}: {summary['zip']}  {summary['zipped_bytes'] / 1e6:.1f} MB zipped, "
            f"{summary['unzipped_bytes'] / 1e6:.1f} MB unzipped, {summary['files']} files"
        )
    problems = check(manifest)
    for problem in problems:
        log(f"ERROR: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
