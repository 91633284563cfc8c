"""Command line: run the Salesforce emulator and print one JSON line describing it."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from ..cli_args import OneLineParser, cannot_listen, count, non_negative, port
from .app import SalesforceEmulator, SalesforceEmulatorConfig, dumps_line

PROG = "python -m streamsync.emulators.salesforce"


def build_parser() -> argparse.ArgumentParser:
    d = SalesforceEmulatorConfig()
    p = OneLineParser(prog=PROG,
                                description="Run the Salesforce emulator until SIGTERM/SIGINT.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=8001, help="0 picks a free port")
    p.add_argument("--seed-accounts", type=count, default=d.seed_accounts)
    p.add_argument("--seed-contacts", type=count, default=d.seed_contacts)
    p.add_argument("--seed-leads", type=count, default=d.seed_leads)
    p.add_argument("--seed-users", type=count, default=d.seed_users)
    p.add_argument("--seed-queues", type=count, default=d.seed_queues)
    p.add_argument("--seed-opportunities", type=count, default=d.seed_opportunities,
                   help="each with 1-2 contact roles (needs accounts and contacts)")
    p.add_argument("--seed-campaigns", type=count, default=d.seed_campaigns)
    p.add_argument("--seed-campaign-members", type=count, default=d.seed_campaign_members,
                   help="leads and contacts spread over the campaigns")
    p.add_argument("--cdc-entities", default=",".join(d.cdc_entities),
                   help="comma-separated objects selected for Change Data Capture")
    p.add_argument("--seed", type=int, default=d.seed_value, help="random seed of the data")
    p.add_argument("--latency-ms", type=non_negative, default=d.latency_ms)
    p.add_argument("--per-record-ms", type=non_negative, default=d.per_record_ms)
    p.add_argument("--client-id", default=d.client_id)
    p.add_argument("--client-secret", default=d.client_secret)
    p.add_argument("--username", default=d.username)
    p.add_argument("--password", default=d.password)
    p.add_argument("--refresh-token", default=d.refresh_token)
    p.add_argument("--api-version", default=d.api_version)
    p.add_argument("--session-lifetime-s", type=non_negative, default=d.session_lifetime_s)
    p.add_argument("--daily-api-max", type=count, default=d.daily_api_max)
    p.add_argument("--jwt-public-key", type=Path, default=None,
                   help="PEM public key or certificate that verifies JWT bearer assertions")
    p.add_argument("--long-poll-s", type=non_negative, default=d.long_poll_s)
    p.add_argument("--reconnect-timeout-s", type=non_negative, default=d.reconnect_timeout_s)
    p.add_argument("--daily-delivery-limit", type=count, default=d.daily_delivery_limit)
    p.add_argument("--retention-s", type=non_negative, default=d.retention_s)
    p.add_argument("--retention-count", type=count, default=d.retention_count)
    p.add_argument("--long-running-s", type=non_negative, default=d.long_running_s,
                   help="requests this old count against --max-long-running")
    p.add_argument("--max-long-running", type=count, default=d.max_long_running)
    p.add_argument("--tls", action="store_true", help="serve HTTPS with a self-signed cert")
    p.add_argument("--tls-dir", default=None, help="where to write the certificate")
    return p


def config_from_args(args: argparse.Namespace) -> SalesforceEmulatorConfig:
    return SalesforceEmulatorConfig(
        seed_accounts=args.seed_accounts, seed_contacts=args.seed_contacts,
        seed_leads=args.seed_leads, seed_users=args.seed_users, seed_queues=args.seed_queues,
        seed_opportunities=args.seed_opportunities, seed_campaigns=args.seed_campaigns,
        seed_campaign_members=args.seed_campaign_members,
        cdc_entities=tuple(e.strip() for e in args.cdc_entities.split(",") if e.strip()),
        seed_value=args.seed, latency_ms=args.latency_ms, per_record_ms=args.per_record_ms,
        client_id=args.client_id, client_secret=args.client_secret, username=args.username,
        password=args.password, refresh_token=args.refresh_token,
        api_version=args.api_version, session_lifetime_s=args.session_lifetime_s,
        daily_api_max=args.daily_api_max,
        jwt_public_key_pem=args.jwt_public_key.read_bytes() if args.jwt_public_key else None,
        long_poll_s=args.long_poll_s, reconnect_timeout_s=args.reconnect_timeout_s,
        daily_delivery_limit=args.daily_delivery_limit, retention_s=args.retention_s,
        retention_count=args.retention_count, long_running_s=args.long_running_s,
        max_long_running=args.max_long_running, tls=args.tls, tls_dir=args.tls_dir)


async def serve(config: SalesforceEmulatorConfig, host: str, port_: int) -> int:
    try:
        emu = SalesforceEmulator(config)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        await emu.start(host=host, port=port_)
    except OSError as exc:
        await emu.stop()
        return cannot_listen(PROG, host, port_, exc)
    print(dumps_line(emu.info()), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await emu.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(config, args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
