"""The shape of the code, checked: no import cycles, a REST layer without flow logic, services
that never import each other, and no test harness in a production image."""

from __future__ import annotations

import ast
import fnmatch
import subprocess
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("medops", "services", "pipelines")


def _modules() -> dict[str, Path]:
    out = {}
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every project module ``module`` imports, wherever the import statement stands
    (functions and ``TYPE_CHECKING`` blocks included: a lazy cycle is still a cycle)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: _imports(m, p, known) for m, p in known.items()}


def test_no_module_imports_back_into_one_that_imports_it() -> None:
    graph = _graph()
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    # the check itself sees cycles
    graph["medops.errors"] = {*graph["medops.errors"], "medops.clinical.plane"}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError:
        return
    raise AssertionError("a planted cycle went unnoticed")


def test_services_never_import_each_other_and_the_library_imports_no_service() -> None:
    for module, imported in _graph().items():
        if module.startswith("medops"):
            assert not any(m.startswith(("services", "pipelines")) for m in imported), module
        for service in ("services.gateway", "services.monitor"):
            if module.startswith(service):
                others = {m for m in imported if m.startswith("services.")}
                assert all(m.startswith(service) for m in others), (module, others)


def test_the_rest_layer_only_parses_and_writes() -> None:
    """The clinical flow (decoding, preprocessing, models, masks, the prediction log) lives
    in ``medops.clinical``; the REST module reaches none of its parts directly."""
    imported = _graph()["services.gateway.rest"]
    flow = {
        "medops.imaging",
        "medops.transforms",
        "medops.deid",
        "medops.rle",
        "medops.monitoring",
        "medops.clinical.plane",
        "medops.clinical.encoders",
    }
    assert not {m for m in imported if any(m == f or m.startswith(f + ".") for f in flow)}
    source = (ROOT / "services" / "gateway" / "rest.py").read_text()
    assert "import numpy" not in source and "np." not in source


def test_the_library_and_the_gateway_name_no_model() -> None:
    """Tasks, sizes, classes and rules come from each version's metadata and the task files:
    no shipped model name anywhere in the library, nor in the gateway's serving code (the
    settings' defaults aside)."""
    from pipelines.brain import BRAIN_MODELS

    sources = [*(ROOT / "medops").rglob("*.py")]
    sources += [
        p
        for p in (ROOT / "services" / "gateway").glob("*.py")
        if p.name not in ("settings.py", "README.md")
    ]
    for path in sources:
        text = path.read_text()
        named = [n for n in BRAIN_MODELS if n in text]
        assert not named, (path.relative_to(ROOT), named)
        assert "brain-tumor" not in text and "pipelines.brain" not in text, path.relative_to(ROOT)


def _image_files(dockerfile: str) -> list[str]:
    """The tracked files the image's build context holds (its ``.dockerignore`` allow-list)."""
    rules = (ROOT / "infra" / "docker" / f"{dockerfile}.dockerignore").read_text().splitlines()
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    kept = []
    for path in tracked:
        keep = False
        for rule in (r.strip() for r in rules):
            if not rule or rule.startswith("#"):
                continue
            negate, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negate
        if keep:
            kept.append(path)
    return kept


def test_the_gateway_image_holds_no_test_harness() -> None:
    files = _image_files("Dockerfile.gateway")
    assert "services/gateway/rest.py" in files and "medops/clinical/plane.py" in files
    # the chains the gateway serves are read from the task files at start
    assert {str(p.relative_to(ROOT)) for p in (ROOT / "tasks").glob("*.yaml")} <= set(files)
    dockerfile = (ROOT / "infra" / "docker" / "Dockerfile.gateway").read_text()
    assert "COPY tasks /opt/medops/tasks" in dockerfile
    assert "MEDOPS_TASKS_DIR=/opt/medops/tasks" in dockerfile
    assert not [f for f in files if f.startswith("tests/") or "harness" in f]
    for f in files:
        if f.endswith(".py"):
            text = (ROOT / f).read_text()
            assert "import pytest" not in text and "gateway_harness" not in text, f
