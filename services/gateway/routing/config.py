"""The routing document: pydantic models that validate it and say exactly what is wrong.

The same document is served by ``GET /v1/routing``, replaced by ``PUT /v1/routing`` and rendered
by the Helm chart into Istio resources, so its keys are camelCase and every rule that keeps the
traffic split meaningful (weights summing to 100, existing shadow and progressive variants, ...)
is checked here, once, before anything is swapped in.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from medops.errors import InvalidInputError
from medops.modelspec import CHAMPION

Strategy = Literal["single", "canary", "ab", "shadow", "bandit", "bluegreen"]
Mode = Literal["gateway", "mesh"]

DEFAULT_VARIANT = CHAMPION
"""The variant (and MLflow alias) a model absent from the document is served by."""

_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"  # a DNS label, so Istio subsets can use it
_ALIAS_PATTERN = r"^[A-Za-z0-9_-]{1,255}$"
_SERVER_KEYS = ("revision", "updatedAt")
"""Keys the server adds; accepted back on PUT (a GET-edit-PUT round trip) and ignored."""


class _Doc(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Variant(_Doc):
    """One deployable target of a model: an MLflow alias or a pinned registered version."""

    name: str = Field(pattern=_NAME_PATTERN)
    alias: str | None = Field(default=None, pattern=_ALIAS_PATTERN)
    version: str | None = Field(default=None, pattern=r"^[0-9]{1,12}$")
    weight: StrictInt = Field(default=0, ge=0, le=100)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # YAML readers write `version: 3` as an int; a registered version is a number either way
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @model_validator(mode="after")
    def _one_target(self) -> Variant:
        if (self.alias is None) == (self.version is None):
            raise ValueError(
                f"variant {self.name!r} needs exactly one of alias or version "
                f"(got {'both' if self.alias is not None else 'neither'})"
            )
        return self

    @property
    def target(self) -> tuple[str, str | None, str | None]:
        """``(variant, alias, version)`` as the gateway loads it."""
        return (self.name, self.alias, self.version)


class Shadow(_Doc):
    """A copy of ``percent`` % of requests goes to ``variant``; its answer is never returned."""

    variant: str
    percent: StrictInt = Field(default=100, ge=0, le=100)


class Progressive(_Doc):
    """Automatic canary steps for one variant, judged on live metrics every interval."""

    variant: str
    steps: list[StrictInt] = Field(default_factory=lambda: [5, 25, 50, 100], min_length=1)
    interval_seconds: float = Field(default=60.0, gt=0)
    min_requests: StrictInt = Field(default=50, ge=0)
    max_error_rate: float = Field(default=0.02, ge=0, le=1)
    max_latency_seconds: float | None = Field(default=1.0, gt=0)
    max_disagreement: float | None = Field(default=0.15, ge=0, le=1)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if any(not 0 < s <= 100 for s in steps):
            raise ValueError(f"steps must lie in (0, 100], got {steps}")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"steps must be strictly increasing, got {steps}")
        return steps


class ModelRouting(_Doc):
    """How one model's traffic is split between its variants."""

    strategy: Strategy = "single"
    variants: list[Variant] = Field(min_length=1)
    shadow: Shadow | None = None
    active: str | None = None
    progressive: Progressive | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelRouting:
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique, repeated: {', '.join(dupes)}")
        total = sum(v.weight for v in self.variants)
        if total != 100:
            split = ", ".join(f"{v.name} {v.weight}" for v in self.variants)
            raise ValueError(f"variant weights must sum to 100, got {total} ({split})")
        known = ", ".join(names)
        for field, ref in (
            ("shadow.variant", self.shadow.variant if self.shadow else None),
            ("active", self.active),
            ("progressive.variant", self.progressive.variant if self.progressive else None),
        ):
            if ref is not None and ref not in names:
                raise ValueError(f"{field} {ref!r} is not one of the variants ({known})")
        self._strategy_rules()
        return self

    def _strategy_rules(self) -> None:
        s = self.strategy
        if s == "single" and (len(self.variants) != 1 or self.shadow or self.progressive):
            raise ValueError(
                "strategy single takes exactly one variant and no shadow or progressive "
                f"(got {len(self.variants)} variants); use canary, ab or shadow to split"
            )
        if s in ("canary", "ab", "shadow", "bluegreen") and len(self.variants) < 2:
            raise ValueError(f"strategy {s} needs at least 2 variants, got {len(self.variants)}")
        if s == "shadow" and self.shadow is None:
            raise ValueError("strategy shadow needs shadow: {variant, percent}")
        if s == "bandit" and sum(1 for v in self.variants if v.weight > 0) < 2:
            raise ValueError("strategy bandit needs at least 2 variants with weight > 0 (its arms)")
        if s == "bluegreen":
            if self.active is None:
                raise ValueError("strategy bluegreen needs active: the variant that gets 100%")
            weight = next(v.weight for v in self.variants if v.name == self.active)
            if weight != 100:
                raise ValueError(
                    f"strategy bluegreen sends 100% to the active variant {self.active!r}: "
                    f"its weight must be 100, got {weight}"
                )
        elif self.active is not None:
            raise ValueError(f"active is only for strategy bluegreen, not {s}")
        if self.progressive is not None:
            if s != "canary" or len(self.variants) != 2:
                raise ValueError(
                    "progressive needs strategy canary with exactly 2 variants "
                    f"(got {s} with {len(self.variants)})"
                )
            canary = self.variant(self.progressive.variant)
            if CHAMPION in (canary.name, canary.alias):
                raise ValueError(
                    f"progressive.variant {canary.name!r} is the champion; name the challenger"
                )

    @property
    def baseline(self) -> str:
        """The variant that takes the share of unready variants: ``champion`` by name or alias.

        For a progressive canary it is the other variant; otherwise the first variant.
        """
        if self.progressive is not None:
            others = [v.name for v in self.variants if v.name != self.progressive.variant]
            if others:
                return others[0]
        for v in self.variants:
            if v.name == CHAMPION:
                return v.name
        for v in self.variants:
            if v.alias == CHAMPION:
                return v.name
        return self.variants[0].name

    def variant(self, name: str) -> Variant:
        """The variant called ``name`` (KeyError when absent)."""
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)


def default_model_routing() -> ModelRouting:
    """One variant ``champion`` on the ``champion`` alias with all the traffic."""
    return ModelRouting(
        strategy="single",
        variants=[Variant(name=DEFAULT_VARIANT, alias=CHAMPION, weight=100)],
    )


class RoutingConfig(_Doc):
    """The whole routing document (without the server's ``revision`` and ``updatedAt``)."""

    mode: Mode = "gateway"
    models: dict[str, ModelRouting] = Field(default_factory=dict)

    @field_validator("models")
    @classmethod
    def _known_models(
        cls, models: dict[str, ModelRouting], info: ValidationInfo
    ) -> dict[str, ModelRouting]:
        context = info.context if isinstance(info.context, Mapping) else {}
        known = context.get("known_models")
        if known is None:  # the caller serves whatever the document names
            return models
        unknown = sorted(set(models) - set(known))
        if unknown:
            raise ValueError(
                f"unknown model(s) {', '.join(map(repr, unknown))} (known: {', '.join(known)})"
            )
        return models

    def for_model(self, model: str) -> ModelRouting:
        """The routing of ``model``; the single-champion default when it is not configured."""
        found = self.models.get(model)
        return found if found is not None else default_model_routing()

    @classmethod
    def from_document(
        cls, document: Any, *, known_models: Collection[str] | None = None
    ) -> RoutingConfig:
        """Validate a routing document (camelCase or snake_case keys); ``known_models``, when
        given, are the only model names it may route (None: any).

        Raises InvalidInputError naming each faulty field (dotted path) and why.
        """
        if not isinstance(document, Mapping):
            raise InvalidInputError(
                f"routing document must be an object, got {type(document).__name__}"
            )
        body = {k: v for k, v in document.items() if k not in _SERVER_KEYS}
        try:
            known = None if known_models is None else tuple(known_models)
            return cls.model_validate(body, context={"known_models": known})
        except ValidationError as exc:
            raise InvalidInputError(f"invalid routing document: {_describe(exc)}") from None

    @classmethod
    def from_file(cls, path: Path, *, known_models: Collection[str] | None = None) -> RoutingConfig:
        """Read a routing document from a YAML or JSON file (as the Helm chart mounts it);
        ``known_models`` None accepts any model name."""
        try:
            text = path.read_text(encoding="utf-8")
            document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise InvalidInputError(f"routing file {path.name}: cannot read it: {exc}") from None
        try:
            return cls.from_document(document or {}, known_models=known_models)
        except InvalidInputError as exc:
            raise InvalidInputError(f"routing file {path.name}: {exc.message}") from None

    def to_document(self) -> dict[str, Any]:
        """The camelCase document, as served and as the Helm chart renders it.

        A variant carries only the one of ``alias``/``version`` it uses, so the document
        validates against the chart's schema too.
        """
        doc = self.model_dump(mode="json", by_alias=True)
        for routing in doc["models"].values():
            for variant in routing["variants"]:
                for key in ("alias", "version"):
                    if variant[key] is None:
                        del variant[key]
        return doc


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{path.lstrip('.') or 'document'}: {message}")
    return "; ".join(parts)
