"""Settings read from text (the service's worker hand-over, `serve run key=value` arguments) go
through the one key check, `humanaes.config_keys`: a misspelt key is an error naming it and the
valid ones, never ignored or a TypeError."""

from __future__ import annotations

from typing import Any

import pytest

from humanaes.errors import ConfigError
from humanaes.serve.settings import ServeSettings


def test_service_settings_round_trip_and_refuse_unknown_keys() -> None:
    settings = ServeSettings(max_batch=4, timeout_s=2.5, api_keys=("k1",), cors_origins=("https://a.example",))
    assert ServeSettings.from_json(settings.to_json()) == settings
    text = settings.to_json().replace('"max_batch"', '"max_bach"')
    with pytest.raises(ConfigError, match=r"^unknown service settings key 'max_bach'; valid keys: api_keys, cors_origins, "
                                          r"max_batch, max_files"):
        ServeSettings.from_json(text)


def test_serve_run_arguments_are_checked_and_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    from humanaes.distributed import serve as dserve

    built: dict[str, Any] = {}
    monkeypatch.setattr(dserve, "build_application", lambda model, **kw: built.update(model=model, **kw) or "app")
    monkeypatch.delenv("HUMANAES_API_KEYS", raising=False)
    args = {"model": "humanaes-mini", "threads": "2", "max_replicas": "3", "num_cpus": "0.5", "max_batch": "4",
            "timeout_s": "7.5"}
    assert dserve.app_builder(args) == "app"
    assert built["model"] == "humanaes-mini"
    assert built["load_options"] == {"threads": 2, "device": "cpu"}
    assert (built["replicas"].max_replicas, built["replicas"].num_cpus) == (3, 0.5)
    assert built["settings"] == ServeSettings(max_batch=4, timeout_s=7.5)
    assert args["model"] == "humanaes-mini"  # the caller's mapping is left alone

    with pytest.raises(ConfigError, match=r"^unknown serve run argument keys 'max_replica', 'api_keys'; valid keys: "
                                          r"device, dtype, max_batch, .*, model, .*, threads"):
        dserve.app_builder({"max_replica": "3", "api_keys": "secret", "model": "x"})
    with pytest.raises(ConfigError, match=r"serve run argument max_replicas='three' must be a whole number"):
        dserve.app_builder({"max_replicas": "three"})
