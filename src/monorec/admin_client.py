"""The admin API of a running server, for the command line: while ``monorec serve`` owns a deployment folder
(its lock), ``monorec versions``, ``stream status``, ``deploy``, ``switch``, ``rollback`` and ``retire`` ask
the server instead of opening the folder. The server announces its address in the folder
(``server.json``, see :mod:`monorec.deployment.ownership`); the token is ``MONOREC_ADMIN_TOKEN``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from monorec.errors import DeployError, MonorecError

__all__ = ["TOKEN_ENV", "AdminClient", "ServerError"]

TOKEN_ENV = "MONOREC_ADMIN_TOKEN"


class ServerError(MonorecError):
    """The running server refused a call or could not be reached."""


class AdminClient:
    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        if not token:
            raise ServerError(
                f"the deployment is served by {url}; set {TOKEN_ENV} to its admin token to operate it from here"
            )
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            r = self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise ServerError(f"the server at {self.url} does not answer: {exc}") from None
        if r.status_code == 401:
            raise ServerError(f"the server at {self.url} refused the token in {TOKEN_ENV}")
        if r.status_code == 409:
            raise DeployError(str(r.json().get("detail")))
        if r.status_code >= 400:
            raise ServerError(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r.json()

    def versions(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/admin/versions")["deployed"])

    def stream_status(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/admin/stream"))

    def switch(self, version: str) -> None:
        self._call("POST", "/v1/admin/switch", {"version": version})

    def rollback(self) -> str:
        return str(self._call("POST", "/v1/admin/rollback")["serving"])

    def retire(self, version: str) -> None:
        self._call("POST", "/v1/admin/retire", {"version": version})

    def trial(self, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """A trial call: ``start`` (with ``body``), ``status``, ``promote`` or ``abort``."""
        if action == "status":
            return dict(self._call("GET", "/v1/admin/trial"))
        path = "/v1/admin/trial" if action == "start" else f"/v1/admin/trial/{action}"
        return dict(self._call("POST", path, body))

    def deploy(self, version: str, poll_s: float = 1.0, timeout_s: float = 3600.0) -> dict[str, Any]:
        """Starts the deploy in the server and waits for it to end; returns the version's row.

        Raises:
            DeployError: the server refused it, or the deploy failed.
        """
        self._call("POST", "/v1/admin/deploy", {"version": version})
        deadline = time.monotonic() + timeout_s
        while True:
            job = self._call("GET", "/v1/admin/versions")["deploy"]
            if job["state"] == "failed":
                raise DeployError(f"deploying {version} failed in the server: {job['error']}")
            if job["state"] == "done":
                return next(r for r in self.versions() if r["version"] == version)
            if time.monotonic() > deadline:
                raise ServerError(f"deploying {version} did not end within {timeout_s:.0f}s")
            time.sleep(poll_s)

    def close(self) -> None:
        self._http.close()
