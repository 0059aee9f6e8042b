"""MLflow's own rules for the names and URIs a run configuration gives (the preflight asks here, so that
MLflow stays reached only from ``medmerge/tracking/``)."""

from __future__ import annotations

UNITY_CATALOG = ("databricks-uc", "uc")   # MLflow's client refuses to track to these


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
