"""The MLflow server's REST API, asked the way a user's script would (the end-to-end tests share it)."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request


def api(uri: str, endpoint: str, **params) -> dict:
    """GET ``/api/2.0/mlflow/<endpoint>?params`` (list values repeat the key)."""
    url = f"{uri}/api/2.0/mlflow/{endpoint}"
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def api_post(uri: str, endpoint: str, body: dict) -> dict:
    """POST a JSON body to ``/api/2.0/mlflow/<endpoint>``."""
    req = urllib.request.Request(f"{uri}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())
