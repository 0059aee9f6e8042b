"""The connection to an MLflow tracking server, as every module of ``tracking/`` opens it: a client whose calls
fail within seconds, naming the URI, when the server stops answering (:class:`RegistryError`), every
``MLFLOW_*`` setting medmerge makes, and where the tracking URI comes from. The other modules of ``tracking/``
build on this one; it imports none of them but the server's health check."""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager

from medmerge.errors import MedmergeError


class RegistryError(MedmergeError):
    """A registry or tracking operation was refused or failed."""


# MLflow's settings as medmerge wants them (every MLFLOW_* variable is set here, in tracking/); a value the
# user set in the environment wins. MLflow retries a refused connection 7 times with exponential backoff
# (about 4 minutes) and waits 120 s for an answer: a dead server would look like a hung step. These bound
# it to seconds.
ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
                 # MLflow prints a "View run" line each time a run ends: one per candidate would bury the frontier
                 # table; the pipelines print the parent run's URL themselves
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def client(tracking_uri: str):
    """An ``MlflowClient`` for ``tracking_uri`` whose calls raise :class:`RegistryError`, naming the URI,
    when the server does not answer (see :func:`unreachable_as_error`)."""
    import mlflow
    from mlflow import MlflowClient

    for k, v in ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    # MLflow also writes MLFLOW_TRACKING_URI; keep the user's: it says which server they point at (a later
    # run in this process resolves it, and a dead recorded server is told apart from the configured one)
    if user_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_uri
    return _Client(MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri), tracking_uri)


@contextmanager
def unreachable_as_error(tracking_uri: str, what: str = "MLflow call"):
    """Turn a failed MLflow call into ``RegistryError("MLflow tracking server <uri> is not reachable ...")``
    when the server has stopped answering; any other failure (the server answered) goes through as is."""
    from mlflow.exceptions import RestException

    try:
        yield
    except (RestException, MedmergeError):
        raise  # the server answered (not found, bad request, ...), or the error is already ours
    except Exception as exc:
        from medmerge.tracking.server import healthy

        if tracking_uri.startswith(("http://", "https://")) and not healthy(tracking_uri, timeout=5):
            configured = os.environ.get("MLFLOW_TRACKING_URI", "")
            if configured and configured.rstrip("/") != tracking_uri.rstrip("/"):
                # starting the old server again cannot be the advice: the user pointed elsewhere
                advice = (f"MLFLOW_TRACKING_URI names another server, {configured}: make the run config's "
                          f"tracking_uri agree with the server you mean (or unset it) and rerun")
            else:
                advice = ("start it again (medmerge server start) and rerun: the rerun resumes from the "
                          "finished steps and registers no version twice")
            raise RegistryError(f"MLflow tracking server {tracking_uri} is not reachable ({what} failed: "
                                f"{type(exc).__name__}); {advice}") from exc
        raise


class _Client:
    """Delegates to an ``MlflowClient``; each method call goes through :func:`unreachable_as_error`."""

    def __init__(self, inner, tracking_uri: str):
        self._inner, self._uri = inner, tracking_uri

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            with unreachable_as_error(self._uri, f"{name}()"):
                return attr(*args, **kwargs)

        return call


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """``explicit``, else ``MLFLOW_TRACKING_URI``, else the server ``medmerge server start`` runs."""
    import os

    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        from medmerge.tracking.server import status

        info = status()
        uri = info.uri if info else None
    if not uri:
        raise RegistryError("no MLflow tracking URI: set tracking_uri, MLFLOW_TRACKING_URI, or run medmerge server start")
    return uri


def check_reachable(tracking_uri: str) -> None:
    """Fail early, naming the URI, when the tracking server does not answer."""
    from medmerge.tracking.server import healthy

    if tracking_uri.startswith(("http://", "https://")) and not healthy(tracking_uri, timeout=5):
        raise RegistryError(f"MLflow tracking server {tracking_uri} is not reachable (start it: medmerge server start)")
