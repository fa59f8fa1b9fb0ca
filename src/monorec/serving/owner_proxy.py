"""A replica's hand-off of what only the owner does: lifecycle and admin calls, catalogue and user writes,
users' events (see :mod:`monorec.deployment.replica`). A client may send any call to any process of the
deployment; this ASGI middleware forwards those calls to the owner's URL and returns its answer unchanged
(status, body, content type), tokens included, so the owner checks them. The rest stays in the replica."""

from __future__ import annotations

import json
from typing import Any

import httpx

__all__ = ["OwnerProxy", "OwnerTrials", "owner_route"]

_ADMIN_PREFIXES = ("/v1/admin/", "/v1/events")
_WRITE_PREFIXES = ("/v1/entities/", "/v1/users/")
_FORWARDED_HEADERS = ("authorization", "content-type", "x-request-id")


def owner_route(method: str, path: str) -> bool:
    """Whether ``method path`` is the owner's: admin and events always, entities and users when writing."""
    if path.startswith(_ADMIN_PREFIXES):
        return True
    return method in ("PUT", "POST", "DELETE", "PATCH") and path.startswith(_WRITE_PREFIXES)


class OwnerProxy:
    """ASGI middleware: the owner's routes go to ``owner_url``; an owner that cannot be reached is a 503
    naming it (the replica itself is fine: its readiness does not change)."""

    def __init__(self, app: Any, owner_url: str, timeout_s: float = 30.0) -> None:
        self.app = app
        self.owner_url = owner_url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.owner_url, timeout=timeout_s)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not owner_route(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:  # the body limit sits outside this middleware: what arrives here is bounded
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k.decode("latin-1").lower() in _FORWARDED_HEADERS
        }
        query = scope.get("query_string", b"").decode("latin-1")
        url = scope["path"] + (f"?{query}" if query else "")
        try:
            answer = await self._client.request(scope["method"], url, content=bytes(body), headers=headers)
            status, content = answer.status_code, answer.content
            content_type = answer.headers.get("content-type", "application/json")
        except httpx.HTTPError as exc:
            status, content_type = 503, "application/json"
            detail = f"the deployment's owner at {self.owner_url} cannot be reached ({type(exc).__name__}); retry"
            content = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type.encode("latin-1"))],
            }
        )
        await send({"type": "http.response.body", "body": content})


class OwnerTrials:
    """A replica's way to end the owner's trial: its trial guard (``serving.trial_watch``) measures the
    candidate on this replica's share of the traffic and, on a breach, asks the owner to abort, as the
    owner's own guard would (``POST /v1/admin/trial/abort``, with the admin token)."""

    def __init__(self, owner_url: str, token: str | None, timeout_s: float = 30.0) -> None:
        self.owner_url, self.token, self.timeout_s = owner_url.rstrip("/"), token, timeout_s

    def abort(self, reason: str) -> None:
        """Raises ``httpx.HTTPError`` when the owner cannot be reached or refuses (the guard logs it)."""
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        answer = httpx.post(
            f"{self.owner_url}/v1/admin/trial/abort", params={"reason": reason}, headers=headers, timeout=self.timeout_s
        )
        if answer.status_code != 409:  # 409: no trial runs any more (ended meanwhile)
            answer.raise_for_status()
