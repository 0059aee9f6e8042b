"""MLflow's own rules for the names and URIs a run configuration gives (the preflight asks here, so that
MLflow stays reached only from ``medmerge/tracking/``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

UNITY_CATALOG = ("databricks-uc", "uc")   # MLflow's client refuses to track to these
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable: where a run logs when nothing else says


def configured_tracking_uri(environ: Mapping[str, str] | None = None) -> str | None:
    """The tracking URI the environment names (``MLFLOW_TRACKING_URI``), or None."""
    env = os.environ if environ is None else environ
    return env.get(TRACKING_URI_ENV) or None


def tracking_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a process started elsewhere (cron, systemd) needs to log where this one does:
    ``{"MLFLOW_TRACKING_URI": uri}``; empty when the environment names none, or when the URI carries
    credentials (``user:password@host``), which never go into a command line or a unit file."""
    uri = configured_tracking_uri(environ)
    if uri is None or "@" in uri.split("://", 1)[-1].split("/", 1)[0]:
        return {}
    return {TRACKING_URI_ENV: uri}


def model_name_problem(name: str) -> str | None:
    """Why MLflow would refuse ``name`` for a registered model (empty, '/', ':', '%', a path that
    normalises to another name such as ``a/../b`` or ``..``), or None. The file store's rule is the strictest
    (the SQL and REST stores allow '%'); a name must work with every store."""
    from mlflow.exceptions import MlflowException

    try:
        from mlflow.store.model_registry.file_store import _validate_model_name
    except ImportError:   # a later MLflow without the file store
        from mlflow.utils.validation import _validate_model_name
    try:
        _validate_model_name(name)
    except MlflowException as exc:
        return exc.message
    return None


def tracking_schemes() -> list[str]:
    """The tracking-URI schemes this MLflow takes ('' is a local path), plugins included."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    return [s for s in _tracking_store_registry._registry if s not in UNITY_CATALOG]


def tracking_scheme_problem(uri: str) -> str | None:
    """Why MLflow has no tracking store for ``uri``'s scheme, or None (MLflow's own lookup)."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    from mlflow.utils.uri import get_uri_scheme

    known = ", ".join(s for s in tracking_schemes() if s)
    try:
        scheme = uri if uri in ("databricks", *UNITY_CATALOG) else get_uri_scheme(uri)
    except Exception:
        return f"tracking URI {uri!r} cannot be parsed; MLflow takes {known}, or a local path"
    if scheme in UNITY_CATALOG:
        return f"tracking URI {uri!r}: MLflow cannot track runs to Unity Catalog; use one of {known}"
    try:
        _tracking_store_registry.get_store_builder(uri)
    except Exception:
        return f"tracking URI {uri!r}: unknown scheme {scheme!r}; MLflow takes {known}, or a local path"
    return None
