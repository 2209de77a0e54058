"""Reading task files, the rules across them, and their data on disk.

Every problem is a :class:`Problem` naming the file, the field path and what was found, so a
command line or a pipeline reports all of them at once, before anything trains or serves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from medops.data.layouts import LAYOUTS, LayoutProblems, detect_layout, scan
from medops.data.reading import read_bytes, sha256_bytes
from medops.errors import DatasetError, InvalidInputError
from medops.tasks.schema import ChainSpec, Problem, TaskSpec, semantic_problems

if TYPE_CHECKING:
    from medops.data.manifest import Manifest

SUFFIXES = (".yaml", ".yml")
Spec = TaskSpec | ChainSpec


class TaskFileError(InvalidInputError):
    """One or more task files are wrong; ``problems`` says where and how."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = list(problems)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML whose mappings refuse a key given twice (plain YAML keeps the last silently)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _found(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _pydantic_problems(file: str, exc: ValidationError) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        where = path.lstrip(".") or "document"
        kind = err["type"]
        if kind == "extra_forbidden":
            message = f"unknown field (found {_found(err['input'])})"
        elif kind == "missing":
            message = "required, but missing"
        else:
            message = f"{err['msg'].removeprefix('Value error, ')} (found {_found(err['input'])})"
        out.append(Problem(file=file, field=where, message=message))
    return out


def read_spec(path: Path) -> tuple[Spec | None, list[Problem]]:
    """The task or chain declared in ``path``, or None and what is wrong with it."""
    file = path.name
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        return None, [Problem(file=str(path), field="file", message="no such task file")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(file=file, field="file", message=f"unreadable ({exc})")]
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        return None, [Problem(file=file, field="document", message=f"not YAML{line}: {reason}")]
    if not isinstance(document, dict):
        found = type(document).__name__
        return None, [Problem(file=file, field="document", message=f"expected a mapping, {found}")]
    model: type[Spec] = ChainSpec if "chain" in document else TaskSpec
    try:
        spec = model.model_validate(document)
    except ValidationError as exc:
        return None, _pydantic_problems(file, exc)
    problems = []
    if spec.name != path.stem:
        problems.append(
            Problem(file=file, field="name", message=f"{spec.name!r} differs from the file name")
        )
    if isinstance(spec, TaskSpec):
        problems += [Problem(file=file, field=f, message=m) for f, m in semantic_problems(spec)]
    return (None if problems else spec), problems


def task_files(folder: Path) -> list[Path]:
    """The task files of ``folder`` (``*.yaml``, ``*.yml``), sorted."""
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: no such task folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in SUFFIXES)


@dataclass(frozen=True)
class TaskFile:
    path: Path
    spec: Spec

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Catalog:
    """Valid task files by name, with the rules that span files checked."""

    files: dict[str, TaskFile] = field(default_factory=dict)

    def tasks(self) -> list[TaskSpec]:
        return [f.spec for f in self.files.values() if isinstance(f.spec, TaskSpec)]

    def chains(self) -> list[ChainSpec]:
        return [f.spec for f in self.files.values() if isinstance(f.spec, ChainSpec)]

    def task(self, name: str) -> TaskSpec:
        found = self.files.get(name)
        if found is None or not isinstance(found.spec, TaskSpec):
            known = ", ".join(t.name for t in self.tasks()) or "none"
            raise InvalidInputError(f"no task named {name!r} (known: {known})")
        return found.spec

    def chain_models(self, name: str) -> tuple[str, str | None]:
        """The registered ``(classifier, segmenter)`` of the chain ``name``, as
        ``medops.clinical.Chain`` takes them."""
        found = self.files.get(name)
        if found is None or not isinstance(found.spec, ChainSpec):
            known = ", ".join(c.name for c in self.chains()) or "none"
            raise InvalidInputError(f"no chain named {name!r} (known: {known})")
        steps = found.spec.chain
        segmenter = self.task(steps.segmenter).models[0] if steps.segmenter else None
        return self.task(steps.classifier).models[0], segmenter

    def chains_of(self, task: str) -> list[str]:
        return [c.name for c in self.chains() if task in (c.chain.classifier, c.chain.segmenter)]

    def add(self, entry: TaskFile) -> list[Problem]:
        """Add ``entry`` unless its name or a model name is taken; the problems otherwise."""
        file = entry.path.name
        problems = []
        other = self.files.get(entry.name)
        if other is not None:
            problems.append(
                Problem(
                    file=file,
                    field="name",
                    message=f"{entry.name} is also declared in {other.path.name}",
                )
            )
        if isinstance(entry.spec, TaskSpec):
            owners = {m: t for t in self.tasks() for m in t.models}
            for i, model in enumerate(entry.spec.models):
                if model in owners:
                    owner = owners[model]
                    problems.append(
                        Problem(
                            file=file,
                            field=f"models[{i}]",
                            message=f"{model} is also a model of task {owner.name} "
                            f"({self.files[owner.name].path.name})",
                        )
                    )
        if not problems:
            self.files[entry.name] = entry
        return problems

    def chain_problems(self) -> list[Problem]:
        """Chains that name a missing task, or a task of the wrong kind for its step."""
        out = []
        for entry in self.files.values():
            if not isinstance(entry.spec, ChainSpec):
                continue
            steps = entry.spec.chain
            for step, name, kinds in (
                ("classifier", steps.classifier, ("binary-classification",)),
                ("segmenter", steps.segmenter, ("binary-segmentation", "multilabel-segmentation")),
            ):
                if name is None:
                    continue
                where = f"chain.{step}"
                target = self.files.get(name)
                if target is None or not isinstance(target.spec, TaskSpec):
                    known = ", ".join(t.name for t in self.tasks()) or "none"
                    message = f"no task named {name} (known tasks: {known})"
                    out.append(Problem(file=entry.path.name, field=where, message=message))
                elif target.spec.kind not in kinds:
                    message = f"{name} is {target.spec.kind}; a {step} step needs {kinds[0]}"
                    out.append(Problem(file=entry.path.name, field=where, message=message))
        return out


def load_catalog(
    paths: Iterable[Path], *, context: Iterable[Path] = ()
) -> tuple[Catalog, list[Problem]]:
    """Read ``paths`` and check the rules across files; ``context``: other task files (the
    rest of the folder) whose names and models count for the cross-file rules, whose own
    problems are not reported."""
    catalog = Catalog()
    problems: list[Problem] = []
    wanted = [Path(p) for p in paths]
    chosen = {p.resolve() for p in wanted}
    for path in (Path(p) for p in context):
        if path.resolve() in chosen:
            continue
        spec, _ = read_spec(path)
        if spec is not None:
            catalog.add(TaskFile(path, spec))
    for path in wanted:
        spec, found = read_spec(path)
        problems += found
        if spec is not None:
            problems += catalog.add(TaskFile(path, spec))
    problems += [p for p in catalog.chain_problems() if _in(p, wanted)]
    return catalog, problems


def _in(problem: Problem, paths: Sequence[Path]) -> bool:
    return any(problem.file == p.name for p in paths)


# ---------------------------------------------------------------- the data on disk


def data_path(spec: TaskSpec, data_root: Path) -> Path:
    return Path(data_root) / spec.data.path


def _hasher(root: Path) -> Callable[[str], str]:
    def sha(rel: str) -> str:
        return sha256_bytes(read_bytes(root / rel, rel))

    return sha


_OPTION_FIELDS = {"images": "data.images", "masks": "data.masks", "together": "groups.together"}


def _image_mask_problems(spec: TaskSpec, root: Path, file: str) -> list[Problem]:
    """The dataset read as the layout's reader reads it for training: pairing, decodable
    masks, image and mask sizes, the declared groups."""
    try:
        scan(root, "image-mask-folders", _hasher(root), spec.layout_options())
    except LayoutProblems as exc:
        out = []
        for option, message in exc.problems:
            key, _, index = option.partition("[")
            field = _OPTION_FIELDS[key] + (f"[{index}" if index else "")
            out.append(Problem(file=file, field=field, message=message))
        return out
    except DatasetError as exc:
        return [Problem(file=file, field="data.path", message=str(exc))]
    return []


def data_problems(spec: TaskSpec, file: str, data_root: Path) -> list[Problem]:
    """What is wrong with the task's data on disk: a missing folder, a layout other than the
    declared one, class folders other than the class list; for image-mask-folders the
    layout's own reading (images without masks, unreadable files, sizes that differ, groups
    that name samples the data lacks)."""
    root = data_path(spec, data_root).resolve()
    if not root.is_dir():
        problem = "not found" if not root.exists() else "not a folder"
        message = f"{root} {problem} (data root {Path(data_root).resolve()}: MEDOPS_DATA_DIR)"
        return [Problem(file=file, field="data.path", message=message)]
    layout = spec.data.layout
    if layout == "image-mask-folders":
        return _image_mask_problems(spec, root, file)
    try:
        detected = detect_layout(root)
    except DatasetError as exc:
        return [Problem(file=file, field="data.layout", message=f"{layout}, but {exc}")]
    if detected != layout:
        message = f"declared {layout}, but {root} reads as {detected}"
        return [Problem(file=file, field="data.layout", message=message)]
    problems = []
    if spec.label.source == "folder":
        folders = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name[0] not in "._")
        if folders != spec.label.classes:
            message = f"{spec.label.classes} differs from the class folders {folders} of {root}"
            problems.append(Problem(file=file, field="label.classes", message=message))
    return problems


def read_task(path: Path) -> TaskSpec:
    """The task declared in ``path``; :class:`TaskFileError` with every problem otherwise."""
    spec, problems = read_spec(Path(path))
    if problems:
        raise TaskFileError(problems)
    if not isinstance(spec, TaskSpec):
        raise TaskFileError(
            [Problem(file=Path(path).name, field="chain", message="a chain, not a task")]
        )
    return spec


def ingest_task(spec: TaskSpec, data_root: Path, home: Path, *, progress: bool = False) -> Manifest:
    """Ingest the task's dataset as the task declares it (layout, folders, mask threshold,
    samples kept together); a folder that reads as another layout is refused."""
    from medops.data.ingestion import ingest

    return ingest(
        data_path(spec, data_root),
        home,
        progress=progress,
        layout=spec.data.layout,
        options=spec.layout_options(),
    )


def summary(entry: TaskFile) -> str:
    """One line per valid file, as ``medops tasks validate`` prints it."""
    spec = entry.spec
    if isinstance(spec, ChainSpec):
        steps = [spec.chain.classifier, *([spec.chain.segmenter] if spec.chain.segmenter else [])]
        return f"{entry.path.name}: ok: chain {spec.name}: {' -> '.join(steps)}"
    trainable = (
        ""
        if spec.trainable
        else (
            f"; layout {spec.data.layout} is declared, its reader comes in a later step "
            f"(trainable today: {', '.join(LAYOUTS)})"
        )
    )
    return (
        f"{entry.path.name}: ok: {spec.name} ({spec.kind}, {_classes(spec)}, "
        f"models {', '.join(spec.models)}, data {spec.data.path} [{spec.data.layout}]){trainable}"
    )


def _classes(spec: TaskSpec) -> str:
    n = len(spec.label.classes)
    return f"{n} class" if n == 1 else f"{n} classes"
