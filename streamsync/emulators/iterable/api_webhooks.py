"""Routes: GET /api/webhooks and POST /api/webhooks (update by id; no create or delete)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .replies import ApiError
from .webhooks import WebhookSettings

if TYPE_CHECKING:
    from .app import IterableEmulator

# ApiWebhookModel field -> (WebhookSettings field, type)
_FIELDS: dict[str, tuple[str, type]] = {
    "endpoint": ("url", str),
    "authType": ("auth_type", str),
    "authToken": ("auth_token", str),
    "enabled": ("enabled", bool),
}


def add_webhook_routes(app: web.Application, emu: IterableEmulator) -> None:
    """Register the webhook routes of one emulator."""

    async def get_webhooks(request: web.Request) -> web.StreamResponse:
        emu.auth(request, None)
        return emu.reply({"webhooks": [emu.webhooks.settings.api_view()]})

    async def update_webhook(request: web.Request) -> web.StreamResponse:
        emu.auth(request, None)
        body = await emu.json_body(request)
        if type(body) is not dict or type(body.get("id")) is not int:
            raise ApiError(400, "BadJsonBody", f"[{request.path}] Invalid JSON body",
                           {"obj.id": "Number value expected"})
        current = emu.webhooks.settings
        if body["id"] != current.webhook_id:
            raise ApiError(400, "BadParams", f"No webhook with id {body['id']}")
        changes: dict[str, Any] = {}
        for name, (attr, kind) in _FIELDS.items():
            if body.get(name) is not None:
                if type(body[name]) is not kind:
                    raise ApiError(400, "BadJsonBody", f"[{request.path}] Invalid JSON body",
                                   {f"obj.{name}": f"{kind.__name__} value expected"})
                changes[attr] = body[name]
        if isinstance(body.get("headers"), list):
            changes["headers"] = {
                str(h.get("key")): str(h.get("value")) for h in body["headers"]
                if isinstance(h, dict)
            }
        updated = dataclasses.replace(current, **changes)
        try:
            updated.check()
        except ValueError as exc:
            raise ApiError(400, "BadParams", str(exc)) from None
        emu.webhooks.settings = updated
        return emu.reply(updated.api_view())

    app.router.add_get("/api/webhooks", get_webhooks, allow_head=False)
    app.router.add_post("/api/webhooks", update_webhook)


__all__ = ["WebhookSettings", "add_webhook_routes"]
