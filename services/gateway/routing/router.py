"""The Router: turns the routing document into fast per-request decisions and keeps it live.

Each accepted configuration is compiled into one immutable plan per model (a 100-slot split
table plus prebuilt decisions), swapped in by a single reference assignment, so ``route`` reads
without locks and allocates nothing. Everything that changes the configuration (``replace``,
``switch``, progressive steps, promotion, rollback) goes through one locked path that bumps the
revision and writes the audit trail.

With a :class:`~.store.RoutingStore` the replicas of a fleet share one document, revision,
progressive state and audit trail: every change is a compare-and-set on the revision in the
store, ``refresh`` adopts what another replica committed, and a canary step is taken by the one
replica whose compare-and-set wins (the others find the revision moved and adopt it).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medops.errors import InvalidInputError, MedopsError, NotFoundError
from medops.modelspec import CHAMPION

from . import policies
from .audit import AuditTrail, diff
from .config import ModelRouting, RoutingConfig, Variant
from .progressive import ProgressiveController
from .store import RevisionConflictError, RoutingStore

log = logging.getLogger("medops.gateway.routing")

ROUTE_KEY_HEADER = "x-medops-route-key"
"""Sticky assignment: the variant is a pure function of sha256 of this header."""
VARIANT_HEADER = "x-medops-variant"
"""Forces a variant (testing override; what Istio sets in mesh mode); also on every answer."""
MODEL_VERSION_HEADER = "x-medops-model-version"
"""The registered model version that answered, on every answer."""

Target = tuple[str, str | None, str | None]
"""(variant, alias, version)."""
PromoteHook = Callable[[str, str], None]
RollbackHook = Callable[[str, str, str], None]
VetHook = Callable[[str, str], str | None]
"""``(model, variant)`` -> why that variant's version may not take a canary's traffic."""


class _HookFailedError(MedopsError):
    """The promotion hook failed: the change it guards is not made."""


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where one request goes: the primary variant and the shadow copies to send."""

    variant: str
    alias: str | None
    version: str | None
    shadow: tuple[Target, ...] = ()


class _Counters:
    """Cumulative per-variant counts (monotone, for Prometheus counters)."""

    __slots__ = (
        "compared",
        "disagreements",
        "errors",
        "latency_sum",
        "requests",
        "routed",
        "shadowed",
    )

    def __init__(self) -> None:
        self.routed = 0
        self.shadowed = 0
        self.requests = 0
        self.errors = 0
        self.latency_sum = 0.0
        self.compared = 0
        self.disagreements = 0


@dataclass(frozen=True, slots=True)
class _Plan:
    names: dict[str, int]
    plain: tuple[RouteDecision, ...]
    shadowed: tuple[RouteDecision, ...]
    table: tuple[int, ...]
    only: int  # the one variant that every slot holds, else -1
    arms: tuple[int, ...]  # bandit arms (variant indexes); empty unless bandit
    posteriors: tuple[list[float], ...]  # [alpha, beta] per arm, shared with the Router
    shadow_index: int
    shadow_percent: int
    counters: tuple[_Counters, ...]
    weights: tuple[int, ...]  # effective percent per variant after readiness gating


class Router:
    """Routes requests of every model to a variant according to the routing document.

    ``config`` None serves every model from its ``champion`` alias. ``clock`` (monotonic
    seconds) drives progressive delivery; ``rng`` makes every random draw reproducible.
    ``on_promote(model, variant)`` is called when a canary passes its last step at 100 %
    (wire it to move the MLflow ``champion`` alias); ``on_rollback(model, variant, reason)``
    when a canary is rolled back. ``vet(model, variant)`` is asked before a canary starts,
    steps or is promoted; a reason it returns (the promotion gate kept that version out)
    rolls the canary back instead, so a canary cannot carry past the gate a model the gate
    refused. With ``ready_by_default`` False, a variant other than the
    baseline gets traffic only after ``set_ready(model, variant, True)``.

    ``store`` shares the routing with the other replicas of a fleet: ``config`` then only
    seeds a store that has no document yet, the audit trail is the store's (``audit_path`` is
    not written) and ``wall_clock`` (Unix seconds) dates the steps for every replica.
    """

    def __init__(
        self,
        config: RoutingConfig | None = None,
        *,
        audit_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        known_models: Collection[str] | None = None,
        on_promote: PromoteHook | None = None,
        on_rollback: RollbackHook | None = None,
        vet: VetHook | None = None,
        ready_by_default: bool = True,
        max_decisions: int = 1000,
        store: RoutingStore | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall_clock
        self._store = store
        self._rng = rng if rng is not None else random.Random()
        self._known = None if known_models is None else tuple(known_models)
        self._on_promote = on_promote
        self._on_rollback = on_rollback
        self._vet = vet
        self._ready_by_default = ready_by_default
        self._ready: dict[tuple[str, str], bool] = {}
        self._counters: dict[tuple[str, str], _Counters] = {}
        self._posteriors: dict[tuple[str, str], tuple[Target, list[float]]] = {}
        self._decisions: deque[dict[str, Any]] = deque(maxlen=max_decisions)
        self._decision_counts: dict[tuple[str, str], int] = {}
        self._progressive = ProgressiveController()
        self._audit = AuditTrail(audit_path if store is None else None)
        self._lock = threading.RLock()
        self._config = RoutingConfig()
        self._plans: dict[str, _Plan] = {}
        self._revision = self._audit.last_revision()
        self._updated_at = ""
        self._steps: dict[str, tuple[int, float]] = {}  # model -> (revision, Unix time)
        self._verdicts: dict[str, dict[str, Any]] = {}
        self._unshared = False  # a rollback applied here that the store did not take
        initial = config if config is not None else RoutingConfig()
        unknown = [] if self._known is None else sorted(set(initial.models) - set(self._known))
        if unknown:
            raise InvalidInputError(f"unknown model(s) in routing config: {', '.join(unknown)}")
        with self._lock:
            if store is None or not self._refresh_locked():
                # no fleet yet (or no store): this document starts it
                try:
                    self._install(initial, actor="system", action="load", previous=None)
                except RevisionConflictError:
                    self._refresh_locked()  # another replica seeded the store first
            self._tick_locked()

    # -- the hot path -----------------------------------------------------------------------

    def route(self, model: str, headers: Mapping[str, str]) -> RouteDecision:
        """Choose the variant for one request of ``model`` (headers with lowercase names).

        ``x-medops-variant`` forces a variant; otherwise ``x-medops-route-key`` picks a stable
        slot from its sha256, else the slot is drawn at random. A bandit samples its arms
        (Thompson) and ignores the routing key. Raises NotFoundError for an
        unknown model and InvalidInputError for an override naming no variant of the model.
        """
        plan = self._plans.get(model)
        if plan is None:
            plan = self._default_plan(model)
        forced = headers.get(VARIANT_HEADER)
        if forced:
            index = plan.names.get(forced, -1)
            if index < 0:
                raise InvalidInputError(
                    f"header {VARIANT_HEADER}: {forced!r} is not a variant of {model} "
                    f"(variants: {', '.join(plan.names)})"
                )
        elif plan.only >= 0:
            index = plan.only
        elif plan.arms:
            index = policies.thompson_pick(plan.arms, plan.posteriors, self._rng)
        else:
            key = headers.get(ROUTE_KEY_HEADER)
            slot = policies.bucket(key) if key else int(self._rng.random() * 100)
            index = plan.table[slot]
        plan.counters[index].routed += 1
        percent = plan.shadow_percent
        if percent and index != plan.shadow_index and self._rng.random() * 100 < percent:
            plan.counters[plan.shadow_index].shadowed += 1
            return plan.shadowed[index]
        return plan.plain[index]

    # -- the document -------------------------------------------------------------------------

    @property
    def config(self) -> RoutingConfig:
        """The running configuration."""
        return self._config

    @property
    def revision(self) -> int:
        """The running configuration's revision (+1 on every accepted change)."""
        return self._revision

    def document(self) -> dict[str, Any]:
        """The current routing document, with ``revision`` and ``updatedAt``."""
        doc = self._config.to_document()
        doc["revision"] = self._revision
        doc["updatedAt"] = self._updated_at
        return doc

    def replace(
        self, document: Mapping[str, Any], *, actor: str, expected_revision: int | None = None
    ) -> dict[str, Any]:
        """Validate ``document`` and swap it in atomically; returns the new document.

        ``actor`` is a role (e.g. ``admin``), never a credential. ``expected_revision`` is the
        revision the document was written against: when it is no longer the current one
        (another change came first, on any replica) :class:`RevisionConflictError` (409) names
        both and nothing changes; None replaces whatever is current. Raises InvalidInputError
        saying what is wrong, and then the running configuration is unchanged.
        """
        config = RoutingConfig.from_document(document, known_models=self._known)
        with self._lock:
            for _attempt in range(5):
                self._refresh_locked()
                if expected_revision is not None and expected_revision != self._revision:
                    raise RevisionConflictError(self._revision, expected_revision)
                try:
                    self._install(config, actor=actor, action="replace", previous=self._config)
                    break
                except RevisionConflictError:
                    # another replica committed between our read and our write
                    if expected_revision is not None:
                        self._refresh_locked()
                        raise RevisionConflictError(self._revision, expected_revision) from None
            else:
                raise MedopsError("routing store: the revision kept moving; retry", status_code=503)
            self._tick_locked()
            return self.document()

    def switch(self, model: str, variant: str, *, actor: str) -> dict[str, Any]:
        """Blue/green switch: make ``variant`` the active one with 100 % of ``model``."""
        with self._lock:
            routing = self._config.models.get(model)
            if routing is None or routing.strategy != "bluegreen":
                raise InvalidInputError(f"model {model} is not routed with strategy bluegreen")
            names = [v.name for v in routing.variants]
            if variant not in names:
                raise InvalidInputError(
                    f"{variant!r} is not a variant of {model} (variants: {', '.join(names)})"
                )
            doc = self._config.to_document()
            entry = doc["models"][model]
            entry["active"] = variant
            for v in entry["variants"]:
                v["weight"] = 100 if v["name"] == variant else 0
            return self.replace(doc, actor=actor)

    def variants(self, model: str) -> list[Target]:
        """Every (variant, alias, version) of ``model`` the gateway must have loaded."""
        self._check_model(model)
        return [v.target for v in self._config.for_model(model).variants]

    def audit(self) -> list[dict[str, Any]]:
        """The audit trail, oldest first: revision, time, actor, action, changes, reason (the
        fleet's, from the store, when there is one)."""
        if self._store is not None:
            return self._store.audit()
        return self._audit.entries()

    def progress(self) -> list[dict[str, Any]]:
        """Per model: the revision and Unix time its current step started and the last canary
        verdict (the fleet's, from the store, when there is one)."""
        if self._store is not None:
            return self._store.progress()
        return [
            {
                "model": model,
                "revision": revision,
                "stepStartedAt": at,
                "lastVerdict": self._verdicts.get(model),
            }
            for model, (revision, at) in sorted(self._steps.items())
        ]

    def refresh(self) -> bool:
        """Adopt the revision another replica committed to the store; True when it changed.

        Without a store there is nothing to adopt. A stored document this replica cannot
        serve (it names a model unknown here) is logged and the running one is kept.
        """
        if self._store is None:
            return False
        with self._lock:
            return self._refresh_locked()

    # -- readiness, feedback and live metrics ---------------------------------------------------

    def set_ready(self, model: str, variant: str, ready: bool) -> None:
        """Mark a variant (un)ready; an unready non-baseline variant's share goes to the baseline.

        May be called before the variant appears in the configuration.
        """
        self._check_model(model)
        with self._lock:
            self._ready[(model, variant)] = ready
            self._plans = {**self._plans, model: self._compile(model)}
            if ready:
                self._progressive.became_ready(model, variant, self._clock())
            self._tick_locked()

    def is_ready(self, model: str, variant: str) -> bool:
        """Whether ``variant`` of ``model`` may receive traffic."""
        return self._ready.get((model, variant), self._ready_by_default)

    def observe(
        self,
        model: str,
        variant: str,
        *,
        ok: bool,
        latency_s: float,
        disagreed: bool | None = None,
    ) -> None:
        """Record one answer (primary or shadow) of a variant, for metrics and canary analysis.

        ``disagreed`` compares the variant's answer with the champion's when both are known.
        """
        counters = self._counter(model, variant)
        counters.requests += 1
        counters.errors += 0 if ok else 1
        counters.latency_sum += latency_s
        if disagreed is not None:
            counters.compared += 1
            counters.disagreements += 1 if disagreed else 0
        now = self._clock()
        self._progressive.observe(
            model, variant, ok=ok, latency_s=latency_s, disagreed=disagreed, now=now
        )
        if now >= self._progressive.next_due():
            self.tick()

    def reward(self, model: str, variant: str, reward: float) -> None:
        """Bandit feedback in [0, 1] for an answer of ``variant`` (updates its Beta posterior)."""
        if not 0.0 <= reward <= 1.0:
            raise InvalidInputError(f"reward must lie in [0, 1], got {reward}")
        self._check_model(model)
        names = [v.name for v in self._config.for_model(model).variants]
        if variant not in names:
            raise InvalidInputError(
                f"{variant!r} is not a variant of {model} (variants: {', '.join(names)})"
            )
        posterior = self._posterior(model, self._config.for_model(model).variant(variant))
        posterior[0] += reward
        posterior[1] += 1.0 - reward

    def flag_drift(self, model: str, variant: str, drifted: bool = True) -> None:
        """Drift input from monitoring: a drifting canary is rolled back at once."""
        self._check_model(model)
        with self._lock:
            self._progressive.flag_drift(model, variant, drifted)
            self._tick_locked()

    def tick(self) -> list[dict[str, Any]]:
        """Run due canary analyses now (also run from ``observe``); returns the decisions."""
        with self._lock:
            return self._tick_locked()

    def decisions(self, model: str | None = None) -> list[dict[str, Any]]:
        """Recent analysis decisions (decision, reason, metrics, weights), oldest first."""
        return [d for d in self._decisions if model is None or d["model"] == model]

    def decision_counts(self) -> dict[tuple[str, str], int]:
        """How many analysis decisions of each kind were made, per (model, decision)."""
        return dict(self._decision_counts)

    def stats(self) -> list[dict[str, Any]]:
        """Per-variant counters and gauges for a metrics exporter.

        Counters (monotone): routed, shadowed, requests, errors, latencySecondsSum, compared,
        disagreements. Gauges: weight (effective %), ready, and for bandit arms alpha/beta.
        """
        out = []
        for model in sorted(set(self._plans) | {m for m, _ in self._counters}):
            routing = self._config.for_model(model)
            plan = self._plans.get(model)
            for variant in sorted({v.name for v in routing.variants} | self._counted(model)):
                c = self._counter(model, variant)
                row: dict[str, Any] = {
                    "model": model,
                    "variant": variant,
                    "routed": c.routed,
                    "shadowed": c.shadowed,
                    "requests": c.requests,
                    "errors": c.errors,
                    "latencySecondsSum": c.latency_sum,
                    "compared": c.compared,
                    "disagreements": c.disagreements,
                    "weight": 0,
                    "ready": self.is_ready(model, variant),
                }
                if plan is not None and variant in plan.names:
                    row["weight"] = plan.weights[plan.names[variant]]
                posterior = self._posteriors.get((model, variant))
                if routing.strategy == "bandit" and posterior is not None:
                    row["alpha"], row["beta"] = posterior[1]
                out.append(row)
        return out

    # -- internals --------------------------------------------------------------------------

    def _check_model(self, model: str) -> None:
        if self._known is not None and model not in self._known:
            raise NotFoundError(f"model {model!r} is not known (known: {', '.join(self._known)})")

    def _default_plan(self, model: str) -> _Plan:
        self._check_model(model)
        with self._lock:
            plan = self._plans.get(model)
            if plan is None:
                plan = self._compile(model)
                self._plans = {**self._plans, model: plan}
            return plan

    def _counter(self, model: str, variant: str) -> _Counters:
        key = (model, variant)
        found = self._counters.get(key)
        if found is None:
            found = self._counters.setdefault(key, _Counters())
        return found

    def _counted(self, model: str) -> set[str]:
        return {v for m, v in self._counters if m == model}

    def _posterior(self, model: str, variant: Variant) -> list[float]:
        # a posterior belongs to what the variant serves: a new target starts from Beta(1, 1)
        known = self._posteriors.get((model, variant.name))
        if known is None or known[0] != variant.target:
            known = (variant.target, [1.0, 1.0])
            self._posteriors[(model, variant.name)] = known
        return known[1]

    def _compile(self, model: str) -> _Plan:
        routing = self._config.for_model(model)
        variants = routing.variants
        names = {v.name: i for i, v in enumerate(variants)}
        baseline = names[routing.baseline]
        unready = {
            i for i, v in enumerate(variants) if i != baseline and not self.is_ready(model, v.name)
        }
        table = policies.gate_unready(
            policies.split_table([v.weight for v in variants]), unready, baseline
        )
        shadow_index, shadow_percent = -1, 0
        if routing.shadow is not None and self._config.mode == "gateway":
            # in mesh mode Istio mirrors the traffic; copying here too would double it
            candidate = names[routing.shadow.variant]
            if candidate not in unready:
                shadow_index, shadow_percent = candidate, routing.shadow.percent
        plain = tuple(RouteDecision(*v.target) for v in variants)
        copy = (variants[shadow_index].target,) if shadow_index >= 0 else ()
        shadowed = tuple(
            d if i == shadow_index else RouteDecision(d.variant, d.alias, d.version, copy)
            for i, d in enumerate(plain)
        )
        arms: tuple[int, ...] = ()
        if routing.strategy == "bandit":
            arms = tuple(i for i, v in enumerate(variants) if v.weight > 0 and i not in unready)
            if len(arms) < 2:
                arms = ()
        only = table[0] if all(i == table[0] for i in table) and not arms else -1
        return _Plan(
            names=names,
            plain=plain,
            shadowed=shadowed,
            table=table,
            only=only,
            arms=arms,
            posteriors=tuple(self._posterior(model, variants[i]) for i in arms),
            shadow_index=shadow_index,
            shadow_percent=shadow_percent,
            counters=tuple(self._counter(model, v.name) for v in variants),
            weights=tuple(policies.effective_weights(table, len(variants))),
        )

    def _install(
        self,
        config: RoutingConfig,
        *,
        actor: str,
        action: str,
        previous: RoutingConfig | None,
        reason: str | None = None,
        inside: Callable[[], None] | None = None,
    ) -> None:
        """Record and apply one change. ``inside`` (the promotion hook) runs only once the
        change is certain to be made (in the store's transaction, with a store); if it
        raises, nothing is changed."""
        now = self._clock()
        wall = self._wall()
        revision = self._revision + 1
        updated_at = datetime.now(UTC).isoformat(timespec="seconds")
        entry: dict[str, Any] = {
            "revision": revision,
            "time": updated_at,
            "actor": actor,
            "action": action,
            "changes": diff(previous, config),
        }
        if reason is not None:
            entry["reason"] = reason
        changed = [
            m
            for m in set(config.models) | (set(previous.models) if previous else set())
            if previous is None
            or previous.models.get(m) != config.models.get(m)
            or previous.mode != config.mode
        ]
        if self._store is not None:
            # the compare-and-set: of two replicas on this revision exactly one commits
            try:
                self._store.commit(
                    expected=self._revision,
                    document=config.to_document(),
                    updated_at=updated_at,
                    entry=entry,
                    changed=dict.fromkeys(changed, wall),
                    inside=inside,
                )
            except RevisionConflictError:
                raise
            except Exception as exc:
                if action != "rollback":
                    if isinstance(exc, MedopsError):
                        raise
                    raise MedopsError(
                        f"routing store cannot be written ({type(exc).__name__})", status_code=503
                    ) from None
                # a rollback protects patients from a failing model: it applies here even
                # when the fleet cannot hear of it; the next refresh adopts the store's state
                # again, and the canary is judged (and rolled back) anew there
                log.error("rollback not shared", extra={"reason": type(exc).__name__})
                self._unshared = True
        else:
            if inside is not None:
                inside()
            # recorded first: a change that cannot be audited is not made, except a rollback,
            # which protects patients from a failing model and so goes ahead regardless
            try:
                self._audit.append(entry)
            except MedopsError as exc:
                if action != "rollback":
                    raise
                log.error("rollback not audited", extra={"reason": exc.message})
        self._revision, self._updated_at, self._config = revision, updated_at, config
        for model in changed:
            self._steps[model] = (revision, wall)
            self._progressive.configure(model, config.models.get(model), now)
        self._plans = {m: self._compile(m) for m in set(self._plans) | set(config.models)}

    def _refresh_locked(self) -> bool:
        """Adopt the store's revision when it differs from the running one."""
        if self._store is None:
            return False
        if self._store.revision() == self._revision and not self._unshared:
            return False
        stored = self._store.load()
        if stored is None:
            return False
        try:
            config = RoutingConfig.from_document(stored.document, known_models=self._known)
        except InvalidInputError as exc:
            log.error("stored routing refused", extra={"reason": exc.message})
            return False
        previous = self._config
        now, wall = self._clock(), self._wall()
        self._unshared = False
        self._revision, self._updated_at, self._config = (
            stored.revision,
            stored.updated_at,
            config,
        )
        for model in set(config.models) | set(previous.models):
            if previous.models.get(model) == config.models.get(model) and (
                previous.mode == config.mode
            ):
                continue
            at = stored.changed_at.get(model, wall)
            self._steps[model] = (stored.revision, at)
            # the step started when the replica that made it committed it, for every replica
            self._progressive.configure(model, config.models.get(model), now - max(0.0, wall - at))
        self._plans = {m: self._compile(m) for m in set(self._plans) | set(config.models)}
        log.info("routing revision adopted", extra={"revision": stored.revision})
        return True

    def _tick_locked(self) -> list[dict[str, Any]]:
        now = self._clock()
        made = []
        for model in self._progressive.due(now):
            canary = self._progressive.canary(model)
            if canary is None:
                continue
            decision = self._progressive.analyse(model, now, ready=self.is_ready(model, canary))
            if decision is None:
                continue
            self._vet_locked(decision)
            try:
                self._apply(decision)
            except RevisionConflictError:
                # another replica took this step (or changed the document) first
                decision["decision"] += "-superseded"
                decision["reason"] += "; another replica committed first"
                with contextlib.suppress(MedopsError):  # the next poll adopts it otherwise
                    self._refresh_locked()
            except MedopsError as exc:
                # on the request path (from observe): record it and retry next interval
                decision["decision"] += "-failed"
                decision["reason"] += f"; not applied: {exc.message}"
            self._decisions.append(decision)
            self._record_verdict(model, decision)
            key = (model, decision["decision"])
            self._decision_counts[key] = self._decision_counts.get(key, 0) + 1
            made.append(decision)
        return made

    def _vet_locked(self, decision: dict[str, Any]) -> None:
        """A start, step or promotion of a variant the vet refuses becomes a rollback; one the
        vet cannot judge now (the registry unreachable) waits for the next interval."""
        if self._vet is None or decision["decision"] not in ("start", "step", "promote"):
            return
        try:
            refusal = self._vet(decision["model"], decision["variant"])
            decision["at"] = self._clock()  # decided once vetted (a registry call away)
        except Exception as exc:  # on the request path, as the hooks: never fail a request
            decision.update(
                decision="wait",
                toWeight=decision["fromWeight"],
                reason=f"{decision['variant']} cannot be vetted now: {_message(exc)}",
            )
            return
        if refusal is not None:
            decision.update(decision="rollback", toWeight=0, reason=refusal)

    def _apply(self, decision: dict[str, Any]) -> None:
        model, variant, kind = decision["model"], decision["variant"], decision["decision"]
        routing = self._config.models[model]
        reason = f"{kind} {variant} to {decision['toWeight']}%: {decision['reason']}"
        if kind in ("start", "step"):
            self._set_model(model, _with_weight(routing, variant, decision["toWeight"]), reason)
        elif kind == "rollback":
            rolled = _with_weight(routing, variant, 0).model_copy(update={"progressive": None})
            self._set_model(model, rolled, reason, action="rollback")
            if self._on_rollback is not None:
                self._call_hook(decision, self._on_rollback, model, variant, decision["reason"])
        elif kind == "promote":
            promote = self._on_promote

            def move_alias() -> None:
                if promote is not None and not self._call_hook(decision, promote, model, variant):
                    raise _HookFailedError("promotion hook failed")

            champion = ModelRouting(
                strategy="single", variants=[Variant(name=CHAMPION, alias=CHAMPION, weight=100)]
            )
            try:
                self._set_model(model, champion, reason, action="promote", inside=move_alias)
            except _HookFailedError:
                return  # already marked failed by _call_hook; retried next interval

    def _call_hook(self, decision: dict[str, Any], hook: Callable[..., None], *args: Any) -> bool:
        try:
            hook(*args)
        except Exception as exc:
            # the hook runs on the request path (from observe): its failure must not fail the
            # request. A failed promotion keeps the canary at 100 % and is retried next interval.
            decision["decision"] += "-failed"
            decision["reason"] += f"; hook failed: {_message(exc)}"
            return False
        return True

    def _set_model(
        self,
        model: str,
        routing: ModelRouting,
        reason: str,
        *,
        action: str = "progressive",
        inside: Callable[[], None] | None = None,
    ) -> None:
        models = {**self._config.models, model: routing}
        config = self._config.model_copy(update={"models": models})
        self._install(
            config,
            actor="progressive",
            action=action,
            previous=self._config,
            reason=reason,
            inside=inside,
        )

    def _record_verdict(self, model: str, decision: dict[str, Any]) -> None:
        verdict = {k: decision[k] for k in ("decision", "fromWeight", "toWeight", "reason")}
        verdict["metrics"] = decision["metrics"]
        self._verdicts[model] = verdict
        if self._store is None:
            return
        try:
            self._store.record_verdict(model, verdict)
        except Exception as exc:  # a verdict is information: losing one must not fail a request
            log.warning("canary verdict not shared", extra={"reason": type(exc).__name__})


def _with_weight(routing: ModelRouting, variant: str, weight: int) -> ModelRouting:
    """The two-variant canary with ``variant`` at ``weight`` and the baseline at the rest."""
    variants = [
        v.model_copy(update={"weight": weight if v.name == variant else 100 - weight})
        for v in routing.variants
    ]
    return routing.model_copy(update={"variants": variants})


def _message(exc: Exception) -> str:
    """What a hook's failure may say: a medops error's message, else only its type."""
    return exc.message if isinstance(exc, MedopsError) else type(exc).__name__
