"""The training pipeline: ingest -> split -> validate -> (tune) -> train classifier || train
segmenter -> evaluate -> export -> register -> promotion gate -> publish the Triton repository;
the segmenter is evaluated as it serves, gated by the classifier of the same run.

``build_pipeline()`` gives the pipeline for ``kfp.local``; ``build_pipeline(cluster=...)`` adds
the Kubernetes settings (GPU nodes, resources, the data volume, MLflow credentials) that
``compile_pipeline`` writes into the YAML for a Kubeflow Pipelines cluster.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp import compiler, dsl

from medops.tasks import TaskSpec
from pipelines.components import DEFAULT_IMAGE, Components, make_components
from pipelines.tasks import encode

PIPELINE_NAME = "medops-training"
NO_CACHE = (
    "check_registry",
    "ingest",
    "pretrain",
    "evaluate",
    "evaluate_segmenter",
    "register",
    "gate",
    "publish",
)
"""Steps that read or change state outside their inputs (the registry, the data folder)."""
USES_REGISTRY = (
    "check_registry",
    "train",
    "evaluate",
    "evaluate_segmenter",
    "register",
    "gate",
    "publish",
)
"""Steps that talk to MLflow (train: for warm starts) and so get its credentials."""


@dataclass(frozen=True)
class ClusterSettings:
    """Kubernetes settings of the compiled pipeline."""

    data_pvc: str = "medops-data"
    """PersistentVolumeClaim holding the datasets and MEDOPS_HOME."""
    mount_path: str = "/data"
    gpu_node_label: tuple[str, str] = ("nvidia.com/gpu.present", "true")
    gpu_tolerations: tuple[tuple[str, str, str], ...] = (
        ("nvidia.com/gpu", "Exists", "NoSchedule"),
    )
    """(key, operator, effect) tolerations of the GPU node taints."""
    gpus: int = 1
    train_cpu: str = "8"
    train_memory: str = "32G"
    step_cpu: str = "2"
    step_memory: str = "8G"
    mlflow_secret: str = "medops-mlflow"
    secret_env: dict[str, str] = field(
        default_factory=lambda: {
            "username": "MLFLOW_TRACKING_USERNAME",
            "password": "MLFLOW_TRACKING_PASSWORD",
        }
    )
    """Secret key -> environment variable (MLflow reads these for basic auth)."""


def _with_data(task: Any, cluster: ClusterSettings) -> None:
    from kfp import kubernetes

    kubernetes.mount_pvc(task, pvc_name=cluster.data_pvc, mount_path=cluster.mount_path)


def _with_registry(task: Any, cluster: ClusterSettings) -> None:
    from kfp import kubernetes

    kubernetes.use_secret_as_env(
        task, secret_name=cluster.mlflow_secret, secret_key_to_env=dict(cluster.secret_env)
    )


def _on_gpu(task: Any, cluster: ClusterSettings) -> None:
    from kfp import kubernetes

    key, value = cluster.gpu_node_label
    kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tkey, operator, effect in cluster.gpu_tolerations:
        kubernetes.add_toleration(task, key=tkey, operator=operator, effect=effect)
    if cluster.gpus:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(cluster.gpus)
    task.set_cpu_limit(cluster.train_cpu).set_memory_limit(cluster.train_memory)


def _finish(
    task: Any, kind: str, label: str, cluster: ClusterSettings | None, *, gpu: bool = False
) -> Any:
    """Name the task, set caching, and (for clusters) volumes, secrets and resources."""
    task.set_display_name(label)
    if kind in NO_CACHE:
        task.set_caching_options(False)
    if cluster is not None:
        _with_data(task, cluster)
        if kind in USES_REGISTRY:
            _with_registry(task, cluster)
        if gpu:
            _on_gpu(task, cluster)
        else:
            task.set_cpu_limit(cluster.step_cpu).set_memory_limit(cluster.step_memory)
    return task


def _prepare_data(
    c: Components,
    data_path: Any,
    home: Any,
    seed: Any,
    max_patients: Any,
    *,
    label: str,
    cluster: ClusterSettings | None,
    task: str = "",
) -> tuple[Any, Any, Any]:
    """ingest -> split -> validate for one dataset (as ``task``, a task document, declares
    it); returns (manifest, splits task, validate)."""
    ingested = _finish(
        c.ingest(data_path=data_path, home=home, task=task), "ingest", f"ingest{label}", cluster
    )
    manifest = ingested.output
    splits = _finish(
        c.split(manifest=manifest, seed=seed, max_patients=max_patients),
        "split",
        f"split{label}",
        cluster,
    )
    validated = _finish(
        c.validate(manifest=manifest, splits=splits.outputs["splits"], task=task),
        "validate",
        f"validate{label}",
        cluster,
    )
    return manifest, splits, validated


def _model_branch(
    c: Components,
    task: str,
    *,
    preset: Any,
    manifest: Any,
    home: Any,
    splits: Any,
    overrides: Any,
    warm_start: Any,
    pretrained: Any,
    tracking_uri: Any,
    hpo_trials: Any,
    crossval: Any,
    floors: Any,
    after: list[Any],
    cluster: ClusterSettings | None,
    gated_by: dict[str, Any] | None = None,
    label: str = "",
) -> Any:
    """train -> evaluate -> export -> register -> gate for one task; returns its tasks.

    ``gated_by``: the classifier branch whose model gates this segmenter in serving;
    ``label``: the task's name in step names (default ``task``)."""
    label = label or task
    trained = _finish(
        c.train(
            task=task,
            preset=preset,
            manifest=manifest,
            home=home,
            splits=splits,
            overrides=overrides,
            warm_start=warm_start,
            pretrained=pretrained,
            tracking_uri=tracking_uri,
        ).after(*after),
        "train",
        f"train {label}",
        cluster,
        gpu=True,
    )
    inputs = dict(
        preset=preset,
        manifest=manifest,
        home=home,
        splits=splits,
        model=trained.outputs["model"],
        overrides=overrides,
        tracking_uri=tracking_uri,
    )
    if gated_by is None:
        evaluated = _finish(
            c.evaluate(task=task, **inputs), "evaluate", f"evaluate {label}", cluster
        )
    else:
        # the segmenter is judged as it serves: gated by this run's classifier
        evaluated = _finish(
            c.evaluate_segmenter(
                **inputs,
                classifier=gated_by["train"].outputs["model"],
                classifier_evaluation=gated_by["evaluate"].outputs["evaluation"],
                classifier_training=gated_by["train"].outputs["training"],
            ),
            "evaluate_segmenter",
            f"evaluate {label} (two-stage)",
            cluster,
        )
    exported = _finish(
        c.export(
            task=task,
            preset=preset,
            model=trained.outputs["model"],
            evaluation=evaluated.outputs["evaluation"],
            overrides=overrides,
        ),
        "export",
        f"export {label}",
        cluster,
    )
    registered = _finish(
        c.register(
            task=task,
            preset=preset,
            tracking_uri=tracking_uri,
            onnx=exported.outputs["onnx"],
            model=trained.outputs["model"],
            report=evaluated.outputs["report"],
            evaluation=evaluated.outputs["evaluation"],
            training=trained.outputs["training"],
            max_abs_diff=exported.outputs["Output"],
            hpo_trials=hpo_trials,
            crossval=crossval,
        ),
        "register",
        f"register {label}",
        cluster,
    )
    gated = _finish(
        c.gate(
            task=task,
            preset=preset,
            tracking_uri=tracking_uri,
            version=registered.output,
            evaluation=evaluated.outputs["evaluation"],
            floors=floors,
        ),
        "gate",
        f"promotion gate {label}",
        cluster,
    )
    return {"train": trained, "evaluate": evaluated, "register": registered, "gate": gated}


def build_pipeline(*, image: str = DEFAULT_IMAGE, cluster: ClusterSettings | None = None) -> Any:
    """The pipeline as a kfp graph component (call it under ``kfp.local`` or compile it)."""
    c = make_components(image)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Train, evaluate, register and promote the medops brain MRI models.",
    )
    def medops_training(
        lgg_path: str,
        home: str,
        tracking_uri: str,
        fourclass_path: str = "",
        preset: str = "fast",
        seed: int = 0,
        hpo_trials: int = 0,
        warm_start: str = "",
        type_classifier: bool = False,
        max_patients: dict = {},  # noqa: B006 - kfp needs a literal default
        type_max_patients: dict = {},  # noqa: B006
        crossval: str = "",
        floors: dict = {},  # noqa: B006 - per task: metric -> gate floor, over the preset's
    ) -> str:
        registry_ok = _finish(
            c.check_registry(tracking_uri=tracking_uri), "check_registry", "check registry", cluster
        )
        manifest, splits, validated = _prepare_data(
            c, lgg_path, home, seed, max_patients, label="", cluster=cluster
        )
        # transfer learning: the classifier starts from its network trained on tumour types
        pretrained = _finish(
            c.pretrain(preset=preset, fourclass_path=fourclass_path, home=home),
            "pretrain",
            "pretrain classifier on tumour types",
            cluster,
            gpu=True,
        )
        branches: dict[str, Any] = {}
        for task in ("classifier", "segmenter"):
            with dsl.If(hpo_trials > 0, name=f"tune-{task}"):
                tuned = _finish(
                    c.tune(
                        task=task,
                        preset=preset,
                        manifest=manifest,
                        home=home,
                        splits=splits.outputs["splits"],
                        n_trials=hpo_trials,
                        seed=seed,
                    ).after(validated),
                    "tune",
                    f"tune {task}",
                    cluster,
                    gpu=True,
                )
            with dsl.Else(name=f"untuned-{task}"):
                untuned = _finish(c.no_tuning().after(validated), "no_tuning", "no tuning", None)
            branches[task] = _model_branch(
                c,
                task,
                preset=preset,
                manifest=manifest,
                home=home,
                splits=splits.outputs["splits"],
                overrides=dsl.OneOf(tuned.output, untuned.output),
                warm_start=warm_start,
                pretrained=pretrained.output if task == "classifier" else "",
                tracking_uri=tracking_uri,
                hpo_trials=hpo_trials,
                crossval=crossval,
                floors=floors,
                after=[registry_ok],
                cluster=cluster,
                gated_by=branches.get("classifier"),
            )
        classifier, segmenter = branches["classifier"], branches["segmenter"]
        with dsl.If(type_classifier == True, name="type-classifier"):  # noqa: E712 - kfp condition
            manifest4, splits4, validated4 = _prepare_data(
                c, fourclass_path, home, seed, type_max_patients, label=" 4-class", cluster=cluster
            )
            type_branch = _model_branch(
                c,
                "type-classifier",
                preset=preset,
                manifest=manifest4,
                home=home,
                splits=splits4.outputs["splits"],
                overrides="{}",
                warm_start="",
                pretrained="",
                tracking_uri=tracking_uri,
                hpo_trials=0,
                crossval="",
                floors=floors,
                after=[registry_ok, validated4],
                cluster=cluster,
            )
        with dsl.Else(name="no-type-classifier"):
            no_type = _finish(c.skipped(), "skipped", "type classifier skipped", None)
        published = _finish(
            c.publish(
                tracking_uri=tracking_uri,
                home=home,
                type_classifier_promoted=dsl.OneOf(type_branch["gate"].output, no_type.output),
            ).after(classifier["gate"], segmenter["gate"]),
            "publish",
            "publish Triton repository",
            cluster,
        )
        return published.output

    return medops_training


TASK_PIPELINE_NAME = "medops-task-training"


def build_task_pipeline(
    tasks: list[TaskSpec], *, image: str = DEFAULT_IMAGE, cluster: ClusterSettings | None = None
) -> Any:
    """The pipeline of tasks declared in task files: for each, ingest (its layout and groups)
    -> split -> validate -> train -> evaluate -> export -> register -> gate; then one publish
    of the Triton repository. Each task's document is a constant of the graph, so a compiled
    pipeline carries its tasks. ``data_root`` holds every task's ``data.path``."""
    if not tasks:
        raise ValueError("a task pipeline needs at least one task")
    c = make_components(image)
    names = ", ".join(t.name for t in tasks)

    @dsl.pipeline(name=TASK_PIPELINE_NAME, description=f"Train and gate the tasks {names}.")
    def medops_task_training(
        data_root: str,
        home: str,
        tracking_uri: str,
        preset: str = "fast",
        seed: int = 0,
        warm_start: str = "",
        max_patients: dict = {},  # noqa: B006 - kfp needs a literal default
        floors: dict = {},  # noqa: B006 - per task name: metric -> gate floor
    ) -> str:
        registry_ok = _finish(
            c.check_registry(tracking_uri=tracking_uri), "check_registry", "check registry", cluster
        )
        gates = []
        for spec in tasks:
            task = encode(spec)
            manifest, splits, validated = _prepare_data(
                c,
                f"{data_root}/{spec.data.path}",
                home,
                seed,
                max_patients,
                label=f" {spec.name}",
                cluster=cluster,
                task=task,
            )
            branch = _model_branch(
                c,
                task,
                preset=preset,
                manifest=manifest,
                home=home,
                splits=splits.outputs["splits"],
                overrides="{}",
                warm_start=warm_start,
                pretrained="",
                tracking_uri=tracking_uri,
                hpo_trials=0,
                crossval="",
                floors=floors,
                after=[registry_ok, validated],
                cluster=cluster,
                label=spec.name,
            )
            gates.append(branch["gate"])
        published = _finish(
            c.publish(tracking_uri=tracking_uri, home=home, type_classifier_promoted=False).after(
                *gates
            ),
            "publish",
            "publish Triton repository",
            cluster,
        )
        return published.output

    return medops_task_training


def compile_pipeline(
    output: Path,
    *,
    image: str = DEFAULT_IMAGE,
    cluster: ClusterSettings | None = None,
    tasks: list[TaskSpec] | None = None,
) -> Path:
    """Compile the cluster pipeline (with Kubernetes settings) to a YAML file: the brain
    pipeline, or the pipeline of ``tasks`` read from task files."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    cluster = cluster or ClusterSettings()
    if tasks:
        pipeline = build_task_pipeline(tasks, image=image, cluster=cluster)
    else:
        pipeline = build_pipeline(image=image, cluster=cluster)
    compiler.Compiler().compile(pipeline, str(output))
    return output
