"""The scoring service (`humanaes.serve.create_app`) as a Ray Serve application.

Each replica builds the same FastAPI app as `humanaes serve` -- the same routes, result schema,
micro-batcher and per-replica limits -- around a model it loads once, before it reports ready
(so Serve never routes to a replica without a model). Ray Serve adds replicas, autoscaling and a
cluster-wide admission limit:

- `max_ongoing_requests` per replica: what Serve's router sends to one replica at a time (keep it
  at or below the app's own `max_queue`, so the app's 429 rarely fires behind Serve's);
- `max_queued_requests`: requests waiting in Serve for a replica; beyond it Serve answers at once
  with **429 and `Retry-After`** (`BackpressureConfig`), the same overload contract as the
  single-machine service;
- autoscaling between `min_replicas` and `max_replicas` on `target_ongoing_requests`.

Run it with Ray Serve's CLI (arguments are strings, converted here):

    serve run humanaes.distributed.serve:app_builder model=humanaes-mini min_replicas=1 max_replicas=4

or from Python with `serve.run(build_application(...))`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from humanaes.config_keys import check_known_keys
from humanaes.errors import ConfigError, HumanAesError


@dataclass(frozen=True)
class ReplicaSettings:
    """How Ray Serve runs the service (see the module docstring)."""

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 4.0
    max_ongoing_requests: int = 8
    max_queued_requests: int = 32
    retry_after_s: float = 1.0
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise HumanAesError(f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got "
                                f"{self.min_replicas} and {self.max_replicas}")
        if self.max_ongoing_requests < 1 or self.max_queued_requests < 1:
            raise HumanAesError("max_ongoing_requests and max_queued_requests must be at least 1")
        if self.num_cpus < 0 or self.num_gpus < 0 or self.retry_after_s < 0:
            raise HumanAesError("num_cpus, num_gpus and retry_after_s must be 0 or more")

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments of `serve.deployment` for these settings."""
        from ray.serve.config import AutoscalingConfig, BackpressureConfig

        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "backpressure_config": BackpressureConfig(status_code=429, retry_after_s=self.retry_after_s),
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }
        if self.min_replicas == self.max_replicas:
            options["num_replicas"] = self.max_replicas
        else:
            options["autoscaling_config"] = AutoscalingConfig(
                min_replicas=self.min_replicas, max_replicas=self.max_replicas,
                target_ongoing_requests=self.target_ongoing_requests,
            )
        return options


def _build_replica_app(model: str | None, settings_json: str | None, load_options: dict[str, Any]) -> Any:
    """Runs on each replica: load the model (before the replica is ready), build the app."""
    import humanaes
    from humanaes.serve import ServeSettings, create_app

    scorer = humanaes.load(model, **load_options)  # a "threads" option forces that many CPU threads
    settings = ServeSettings.from_json(settings_json) if settings_json else ServeSettings()
    return create_app(scorer, settings=settings)


def build_application(
    model: str | None = None,
    *,
    settings: Any = None,
    replicas: ReplicaSettings | None = None,
    load_options: Mapping[str, Any] | None = None,
    name: str = "HumanAesService",
) -> Any:
    """A Ray Serve application serving `model` (None: the bundled one) with `humanaes.serve`'s app.

    settings: a `humanaes.serve.ServeSettings` (per-replica limits); replicas: how Serve runs
    it; load_options: `humanaes.load` keywords (device, dtype, threads).
    """
    try:
        from ray import serve
    except ImportError:
        raise HumanAesError("the Ray Serve deployment needs Ray: pip install 'humanaes[ray,serve]'") from None
    replicas = replicas or ReplicaSettings()
    options = dict(load_options or {"device": "cuda" if replicas.num_gpus else "cpu"})

    @serve.ingress()
    class HumanAesService:
        """One replica: the humanaes FastAPI app around a model loaded in the constructor."""

        def __init__(self, model: str | None, settings_json: str | None, load_options: dict[str, Any]):
            self._app = _build_replica_app(model, settings_json, load_options)

        def __serve_build_asgi_app__(self) -> Any:
            return self._app

    deployment = serve.deployment(name=name, **replicas.deployment_options())(HumanAesService)
    return deployment.bind(model, settings.to_json() if settings else None, options)


#: `app_builder` arguments that are `humanaes.load` options rather than settings fields
_LOAD_ARGUMENTS = ("model", "device", "dtype", "threads")
#: ServeSettings fields that come from elsewhere (HUMANAES_API_KEYS), not from `serve run`
_NOT_ARGUMENTS = ("api_keys", "cors_origins")


def _number_fields(cls: type) -> dict[str, type]:
    """The int/float fields of settings dataclass `cls` (string annotations resolved)."""
    kinds = {"int": int, "float": float, int: int, float: float}
    return {f.name: kinds[f.type] for f in dataclasses.fields(cls) if f.name not in _NOT_ARGUMENTS and f.type in kinds}


def _number(key: str, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"serve run argument {key}={text!r} must be {what}") from None


def app_builder(args: Mapping[str, str]) -> Any:
    """`serve run humanaes.distributed.serve:app_builder key=value ...`: model, device, dtype,
    threads, the ReplicaSettings fields, and the service limits (max_batch, max_queue, ...)."""
    from humanaes.serve import ServeSettings, load_api_keys

    replica_fields, service_fields = _number_fields(ReplicaSettings), _number_fields(ServeSettings)
    check_known_keys(args, [*_LOAD_ARGUMENTS, *replica_fields, *service_fields], "serve run argument")
    model = args.get("model")
    load_options: dict[str, Any] = {k: args[k] for k in ("device", "dtype") if k in args}
    if "threads" in args:
        load_options["threads"] = _number("threads", args["threads"], int)
    replica_values = {k: _number(k, v, replica_fields[k]) for k, v in args.items() if k in replica_fields}
    service_values = {k: _number(k, v, service_fields[k]) for k, v in args.items() if k in service_fields}
    load_options.setdefault("device", "cpu" if not replica_values.get("num_gpus") else "cuda")
    return build_application(
        # API keys from HUMANAES_API_KEYS where `serve run` runs; they travel in the settings
        model, settings=ServeSettings(**service_values, api_keys=load_api_keys(None)), replicas=ReplicaSettings(**replica_values),
        load_options=load_options,
    )
