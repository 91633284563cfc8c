"""Control API under /__emulator__/: faults, sessions, CometD, bus, writes, bursts and state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from . import actions
from .errors import SalesforceError
from .rest import json_response

if TYPE_CHECKING:
    from .app import SalesforceEmulator

CONTROL_PREFIX = "/__emulator__"


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(text="control API expects a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="control API expects a JSON object")
    return body


class ControlApi:
    """JSON endpoints that drive the emulator from outside (demo, benchmarks, other tools)."""

    def __init__(self, emu: SalesforceEmulator) -> None:
        self.emu = emu

    def register(self, app: web.Application) -> None:
        p = CONTROL_PREFIX
        r = app.router
        r.add_get(p + "/state", self.state)
        r.add_get(p + "/counters", self.counters)
        r.add_post(p + "/counters/reset", self.reset_counters)
        r.add_get(p + "/events", self.events)
        r.add_get(p + "/records/{sobject}/{id}", self.get_record)
        r.add_post(p + "/records/{sobject}", self.create)
        r.add_patch(p + "/records/{sobject}/{id}", self.update)
        r.add_delete(p + "/records/{sobject}/{id}", self.delete)
        r.add_post(p + "/records/{sobject}/{id}/undelete", self.undelete)
        r.add_post(p + "/convert-lead", self.convert_lead)
        r.add_post(p + "/mass-update", self.mass_update)
        r.add_post(p + "/campaign-members", self.add_member)
        r.add_post(p + "/campaign-members/remove", self.remove_member)
        r.add_patch(p + "/campaign-members/{id}", self.member_status)
        r.add_delete(p + "/campaign-members/{id}", self.delete_member)
        r.add_post(p + "/opportunities/{id}/stage", self.stage)
        r.add_post(p + "/opt-out", self.opt_out)
        r.add_post(p + "/opt-in", self.opt_in)
        r.add_post(p + "/burst", self.burst)
        r.add_get(p + "/burst", self.burst_status)
        r.add_get(p + "/faults", self.get_faults)
        r.add_post(p + "/faults", self.add_fault)
        r.add_delete(p + "/faults", self.clear_faults)
        r.add_post(p + "/latency", self.latency)
        r.add_post(p + "/sessions/expire", self.expire_sessions)
        r.add_post(p + "/sessions/revoke", self.revoke_sessions)
        r.add_post(p + "/cometd/forget", self.forget_clients)
        r.add_post(p + "/cometd/disconnect", self.push_disconnect)
        r.add_post(p + "/bus/purge", self.purge)
        r.add_post(p + "/bus/gap", self.gap)

    async def state(self, request: web.Request) -> web.Response:
        return json_response(self.emu.snapshot())

    async def counters(self, request: web.Request) -> web.Response:
        return json_response(self.emu.counters())

    async def reset_counters(self, request: web.Request) -> web.Response:
        self.emu.reset_counters()
        return json_response(self.emu.counters())

    async def events(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "100"))
        log = list(self.emu.state.event_log)[-limit:]
        return json_response(log)

    async def get_record(self, request: web.Request) -> web.Response:
        rec = self.emu.state.record(request.match_info["sobject"], request.match_info["id"])
        if rec is None:
            raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
        return json_response(rec)

    async def create(self, request: web.Request) -> web.Response:
        body = await _body(request)
        sf_id = self.emu.state.create(request.match_info["sobject"], body,
                                      origin=str(request.query.get("origin", "")))
        return json_response({"id": sf_id}, 201)

    async def update(self, request: web.Request) -> web.Response:
        body = await _body(request)
        self.emu.state.update(request.match_info["sobject"], request.match_info["id"], body,
                              origin=str(request.query.get("origin", "")))
        return web.Response(status=204)

    async def delete(self, request: web.Request) -> web.Response:
        self.emu.state.delete(request.match_info["sobject"], request.match_info["id"])
        return web.Response(status=204)

    async def undelete(self, request: web.Request) -> web.Response:
        self.emu.state.undelete(request.match_info["sobject"], request.match_info["id"])
        return web.Response(status=204)

    async def convert_lead(self, request: web.Request) -> web.Response:
        body = await _body(request)
        lead_id = body.get("leadId")
        if not isinstance(lead_id, str):
            raise web.HTTPBadRequest(text="leadId is required")
        out = self.emu.state.convert_lead(
            lead_id, converted_status=str(body.get("convertedStatus", "Closed - Converted")),
            account_id=body.get("accountId"), origin=str(body.get("origin", "")))
        return json_response(out)

    async def mass_update(self, request: web.Request) -> web.Response:
        body = await _body(request)
        sobject = str(body.get("sobject", ""))
        values = body.get("values")
        if not sobject or not isinstance(values, dict):
            raise web.HTTPBadRequest(text="sobject and values are required")
        ids = body.get("ids")
        if ids is None:
            ids = self.emu.select_ids(sobject, str(body.get("where", "")),
                                      int(body.get("limit", 10_000)))
        n = self.emu.state.mass_update(sobject, list(ids), values,
                                       origin=str(body.get("origin", "")))
        return json_response({"updated": n})

    # -- a sales user's actions (empty change origin) -----------------------------------------
    async def add_member(self, request: web.Request) -> web.Response:
        body = await _body(request)
        campaign, person = _member_keys(body)
        status = body.get("status")
        member = actions.add_campaign_member(self.emu.state, campaign, person,
                                             None if status is None else str(status))
        return json_response({"id": member}, 201)

    async def remove_member(self, request: web.Request) -> web.Response:
        campaign, person = _member_keys(await _body(request))
        return json_response({"id": actions.remove_campaign_member(self.emu.state, campaign,
                                                                   person)})

    async def member_status(self, request: web.Request) -> web.Response:
        status = (await _body(request)).get("status")
        if not isinstance(status, str):
            raise web.HTTPBadRequest(text="status is required")
        actions.set_member_status(self.emu.state, request.match_info["id"], status)
        return web.Response(status=204)

    async def delete_member(self, request: web.Request) -> web.Response:
        actions.delete_campaign_member(self.emu.state, request.match_info["id"])
        return web.Response(status=204)

    async def stage(self, request: web.Request) -> web.Response:
        stage = (await _body(request)).get("stageName")
        if not isinstance(stage, str):
            raise web.HTTPBadRequest(text="stageName is required")
        sf_id = request.match_info["id"]
        actions.set_stage(self.emu.state, sf_id, stage)
        rec = self.emu.state.record("Opportunity", sf_id) or {}
        return json_response({k: rec.get(k) for k in (
            "Id", "StageName", "IsClosed", "IsWon", "Probability", "ForecastCategoryName")})

    async def opt_out(self, request: web.Request) -> web.Response:
        return await self._consent(request, True)

    async def opt_in(self, request: web.Request) -> web.Response:
        return await self._consent(request, False)

    async def _consent(self, request: web.Request, opted_out: bool) -> web.Response:
        body = await _body(request)
        record_id = body.get("id")
        fields = body.get("fields", ["HasOptedOutOfEmail"])
        if not isinstance(record_id, str) or not isinstance(fields, list) \
                or not all(isinstance(f, str) for f in fields):
            raise web.HTTPBadRequest(text="id (a Lead or Contact id) and fields (a list of "
                                          "field names) are expected")
        obj = actions.set_opt_out(self.emu.state, record_id, opted_out, tuple(fields))
        return json_response({"sobject": obj, "id": record_id, "fields": fields,
                              "value": opted_out})

    async def burst(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            info = self.emu.start_burst(
                str(body.get("sobject", "Lead")), int(body.get("count", 100)),
                float(body.get("rate_per_s", 100.0)),
                per_transaction=int(body.get("per_transaction", 1)),
                field=body.get("field"))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return json_response(info, 202)

    async def burst_status(self, request: web.Request) -> web.Response:
        return json_response(self.emu.burst_status())

    async def get_faults(self, request: web.Request) -> web.Response:
        return json_response(self.emu.faults.to_json())

    async def add_fault(self, request: web.Request) -> web.Response:
        body = await _body(request)
        action = body.get("action")
        path = body.get("path")
        count = int(body.get("count", 1))
        method = body.get("method")
        if not isinstance(path, str):
            raise web.HTTPBadRequest(text="path is required")
        f = self.emu.faults
        try:
            if action == "fail":
                rule = f.fail_next(path, count, status=int(body.get("status", 500)),
                                   body=body.get("body"),
                                   content_type=str(body.get("content_type",
                                                             "application/json")),
                                   method=method)
            elif action == "hang":
                seconds = body.get("seconds")
                rule = f.hang_next(path, count,
                                   seconds=float(seconds) if seconds is not None else None,
                                   method=method)
            elif action == "drop":
                rule = f.drop_next(path, count, method=method)
            else:
                raise web.HTTPBadRequest(text="action must be fail, hang or drop")
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return json_response(rule.to_json(), 201)

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.emu.faults.clear()
        return web.Response(status=204)

    async def latency(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            self.emu.faults.set_latency(float(body.get("latency_ms", 0.0)),
                                        float(body.get("per_record_ms", 0.0)))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return json_response(self.emu.faults.to_json())

    async def expire_sessions(self, request: web.Request) -> web.Response:
        return json_response({"expired": self.emu.sessions.expire_all()})

    async def revoke_sessions(self, request: web.Request) -> web.Response:
        return json_response({"revoked": self.emu.sessions.revoke_all()})

    async def forget_clients(self, request: web.Request) -> web.Response:
        return json_response({"forgotten": self.emu.forget_cometd_clients()})

    async def push_disconnect(self, request: web.Request) -> web.Response:
        return json_response({"disconnected": self.emu.push_cometd_disconnect()})

    async def purge(self, request: web.Request) -> web.Response:
        self.emu.bus.purge()
        return json_response({"latest_replay_id": self.emu.bus.latest_replay_id})

    async def gap(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            replay_id = self.emu.publish_gap(str(body.get("entity", "Lead")),
                                             str(body.get("changeType", "GAP_UPDATE")),
                                             [str(i) for i in body.get("recordIds", [])])
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return json_response({"replayId": replay_id}, 201)


def _member_keys(body: dict[str, Any]) -> tuple[str, str]:
    """(campaignId, leadId or contactId) of a campaign-member control call."""
    campaign = body.get("campaignId")
    people = [body[k] for k in ("leadId", "contactId") if body.get(k) is not None]
    if not isinstance(campaign, str) or len(people) != 1 or not isinstance(people[0], str):
        raise web.HTTPBadRequest(text="campaignId and exactly one of leadId or contactId are "
                                      "required")
    return campaign, people[0]
