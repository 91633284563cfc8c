"""Drive the Salesforce emulator with jsforce itself (Node.js): Bulk 2.0 ingest, SOAP convertLead.

Optional check, not part of `make test` (it needs node and an installed jsforce):

    npm install --prefix /tmp/jsforce-check jsforce@3
    .venv/bin/python scripts/check_jsforce.py --node-modules /tmp/jsforce-check/node_modules

(jsforce 3.10.26 pulls undici 8, which needs Node 22; on Node 20 add `"overrides": {"undici":
"^7.0.0"}` to that directory's package.json and install again.)

It starts the emulator in-process, runs `conn.bulk2.loadAndWaitForResults` (insert, update,
upsert, delete) and `conn.soap.convertLead` (plus one call with a revoked session, which must
fail), then checks the records and the CDC events the emulator published. Prints one JSON line;
exit code 0 when every check passed."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamsync.emulators.salesforce import (  # noqa: E402
    SalesforceEmulator,
    SalesforceEmulatorConfig,
)

NODE_SCRIPT = r"""
const jsforce = require('jsforce');
const [instanceUrl, accessToken, leadId] = process.argv.slice(2);
(async () => {
  const conn = new jsforce.Connection({ instanceUrl, accessToken, version: '66.0' });
  const poll = { pollInterval: 50, pollTimeout: 20000 };
  const out = {};
  const ins = await conn.bulk2.loadAndWaitForResults({ object: 'Lead', operation: 'insert',
    input: [{ LastName: 'Js1', Company: 'Node', External_Id__c: 'JS-1' },
            { LastName: 'Js2', Company: 'Node', External_Id__c: 'JS-2' },
            { LastName: 'NoCompany' }], ...poll });
  out.insert = { ok: ins.successfulResults.length, failed: ins.failedResults.length,
                 ids: ins.successfulResults.map((r) => r.sf__Id),
                 error: (ins.failedResults[0] || {}).sf__Error };
  const upd = await conn.bulk2.loadAndWaitForResults({ object: 'Lead', operation: 'update',
    input: out.insert.ids.map((Id) => ({ Id, Title: 'Updated' })), ...poll });
  out.update = { ok: upd.successfulResults.length };
  const ups = await conn.bulk2.loadAndWaitForResults({ object: 'Lead', operation: 'upsert',
    externalIdFieldName: 'External_Id__c',
    input: [{ External_Id__c: 'JS-1', LastName: 'Js1', Company: 'Node', Rating: 'Hot' },
            { External_Id__c: 'JS-3', LastName: 'Js3', Company: 'Node', Rating: 'Hot' }],
    ...poll });
  out.upsert = { created: ups.successfulResults.map((r) => String(r.sf__Created)) };
  const del = await conn.bulk2.loadAndWaitForResults({ object: 'Lead', operation: 'delete',
    input: [{ Id: out.insert.ids[1] }], ...poll });
  out.delete = { ok: del.successfulResults.length };
  const conv = await conn.soap.convertLead({ leadId, convertedStatus: 'Closed - Converted' });
  out.convert = conv;
  const bad = new jsforce.Connection({ instanceUrl, accessToken: '00Dbogus!x', version: '66.0' });
  try {
    await bad.soap.convertLead({ leadId, convertedStatus: 'Closed - Converted' });
    out.badSession = 'no error';
  } catch (err) {
    out.badSession = err.errorCode || err.name;
  }
  console.log(JSON.stringify(out));
})().catch((err) => { console.log(JSON.stringify({ fatal: String(err) })); process.exit(1); });
"""


def _check(out: dict[str, Any], emu: SalesforceEmulator, lead: str) -> list[str]:
    problems: list[str] = []

    def expect(cond: bool, what: str) -> None:
        if not cond:
            problems.append(what)

    ins = out.get("insert", {})
    expect(ins.get("ok") == 2 and ins.get("failed") == 1, f"insert: {ins}")
    expect(str(ins.get("error", "")).startswith("REQUIRED_FIELD_MISSING"), "insert error text")
    expect(out.get("update", {}).get("ok") == 2, f"update: {out.get('update')}")
    expect(out.get("upsert", {}).get("created") == ["false", "true"], f"upsert: {out}")
    expect(out.get("delete", {}).get("ok") == 1, f"delete: {out.get('delete')}")
    conv = out.get("convert", {})
    expect(conv.get("success") is True and conv.get("leadId") == lead, f"convert: {conv}")
    expect(str(conv.get("contactId", "")).startswith("003"), "convert contactId")
    expect(out.get("badSession") == "sf:INVALID_SESSION_ID",
           f"bad session: {out.get('badSession')}")
    origins = [e["ChangeEventHeader"]["changeOrigin"] for e in emu.state.event_log]
    # insert: 2 CREATE; update: 1 merged UPDATE; upsert: UPDATE + CREATE; delete: 1 DELETE
    expect(sum(o.startswith("com/salesforce/api/bulkapi/") for o in origins) == 6,
           f"bulk CDC events: {origins}")
    expect(sum(o.startswith("com/salesforce/api/soap/") for o in origins) == 3,
           f"SOAP CDC events: {origins}")
    return problems


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-modules", default=os.environ.get("NODE_PATH", "node_modules"),
                        help="a node_modules directory holding jsforce")
    args = parser.parse_args()
    node = shutil.which("node")
    modules = Path(args.node_modules).resolve()  # noqa: ASYNC240 (before the server starts)
    if node is None or not (modules / "jsforce").is_dir():
        print(json.dumps({"ok": False, "error": "needs node and jsforce in --node-modules"}))
        return 2
    emu = SalesforceEmulator(SalesforceEmulatorConfig(seed_leads=5))
    await emu.start()
    try:
        lead = emu.state.tables["Lead"].ids[0]
        with tempfile.NamedTemporaryFile("w", suffix=".js", delete=False) as f:
            f.write(NODE_SCRIPT)
        env = {**os.environ, "NODE_PATH": str(modules)}
        proc = await asyncio.create_subprocess_exec(
            node, f.name, emu.instance_url, emu.issue_token(), lead, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
        os.unlink(f.name)
        try:
            out = json.loads(stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            out = {"fatal": stderr.decode()[-2000:]}
        problems = [str(out["fatal"])] if "fatal" in out else _check(out, emu, lead)
    finally:
        await emu.stop()
    print(json.dumps({"ok": not problems, "problems": problems, "jsforce": out}))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
