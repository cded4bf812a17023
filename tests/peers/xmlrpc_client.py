#!/usr/bin/env python3
"""Drives Lifeboat's XML-RPC API (/RPC2) with Python's own xmlrpc.client,
as an operator's script would, and prints what every call answered as one
JSON document; the Rust test (tests/tests/xmlrpc.rs) checks it against the
REST API.

    xmlrpc_client.py CONFIG.json

CONFIG names the controller (url, ca), the credentials (user, password,
token, scoped user), and the objects to call on (host, vm, hidden_vm).
Each answer is {"ok": value} or {"fault": code, "message": text}; jobs are
polled through job.get until they finish.
"""

import http.client
import json
import ssl
import sys
import time
import xmlrpc.client


def main():
    cfg = json.load(open(sys.argv[1]))
    ctx = ssl.create_default_context(cafile=cfg["ca"])
    host = cfg["url"].split("//", 1)[1]

    def proxy(user=None, password=None, token=None):
        url = f"https://{host}/RPC2"
        if user is not None:
            url = f"https://{user}:{password}@{host}/RPC2"
        headers = [("Authorization", f"Bearer {token}")] if token else []
        return xmlrpc.client.ServerProxy(url, context=ctx, headers=headers, allow_none=True)

    def call(server, method, *args):
        try:
            return {"ok": getattr(server, method)(*args)}
        except xmlrpc.client.Fault as f:
            return {"fault": f.faultCode, "message": f.faultString}
        except xmlrpc.client.ProtocolError as e:
            return {"protocol_error": e.errcode, "message": e.errmsg}

    def finished(server, job):
        deadline = time.time() + 180
        while time.time() < deadline:
            got = server.job.get(job["job"])
            if got["state"] in ("succeeded", "failed"):
                return got
            time.sleep(0.2)
        raise SystemExit(f"job {job} did not finish")

    admin = proxy(cfg["user"], cfg["password"])
    out = {}

    # Credentials: none, wrong, a token.
    out["no_credentials"] = call(proxy(), "host.list")
    out["wrong_password"] = call(proxy(cfg["user"], "wrong-" + cfg["password"]), "host.list")
    out["bad_token"] = call(proxy(token="not-a-token"), "host.list")
    token = proxy(token=cfg["token"])
    out["token_host_list"] = call(token, "host.list")

    # Introspection.
    out["listMethods"] = call(admin, "system.listMethods")
    out["methodHelp"] = call(admin, "system.methodHelp", "vm.power")
    out["methodSignature"] = call(admin, "system.methodSignature", "metrics.get")
    out["methodHelp_unknown"] = call(admin, "system.methodHelp", "no.such")
    out["version"] = call(admin, "lifeboat.version")

    # Reads.
    out["host.list"] = call(admin, "host.list")
    out["host.get"] = call(admin, "host.get", cfg["host"])
    out["vm.list"] = call(admin, "vm.list", {"name": cfg["vm_name"]})
    out["vm.list_all"] = call(admin, "vm.list")
    out["vm.get"] = call(admin, "vm.get", cfg["vm"])

    # Jobs: a backup, its listing, a verify, a restore as a new VM, power.
    backup = admin.vm.backup(cfg["vm"], {"mode": "full"})
    out["vm.backup"] = {"ok": backup}
    out["vm.backup_done"] = {"ok": finished(admin, backup)}
    out["job.get"] = call(admin, "job.get", backup["job"])
    out["job.list"] = call(admin, "job.list", {"vm": cfg["vm"]})
    backups = admin.backup.list(cfg["vm"])
    out["backup.list"] = {"ok": backups}
    ref = backups[0]["id"]
    verify = admin.backup.verify(ref)
    out["backup.verify_done"] = {"ok": finished(admin, verify)}
    # The tiny VM has no guest agent: a boot verification needs a serial line.
    out["backup.bootVerify_no_agent"] = call(admin, "backup.bootVerify", ref, {})
    restore = admin.backup.restore(ref, {"as_new": {"name": cfg["restore_name"]}})
    out["backup.restore_done"] = {"ok": finished(admin, restore)}
    power = admin.vm.power(cfg["vm"], "start")
    out["vm.power_done"] = {"ok": finished(admin, power)}
    out["event.list"] = call(admin, "event.list", {})
    out["alert.list"] = call(admin, "alert.list", {"limit": 10})
    out["metrics.get_host"] = call(admin, "metrics.get", "host:" + cfg["host"], "cpu", "hour")
    out["metrics.get_vm"] = call(admin, "metrics.get", "vm:" + cfg["vm"], "memory_used", "day", "max")

    # Bad arguments.
    out["unknown_method"] = call(admin, "vm.explode")
    out["too_few"] = call(admin, "vm.get")
    out["too_many"] = call(admin, "host.list", 1)
    out["wrong_type"] = call(admin, "vm.get", True)
    out["path_escape"] = call(admin, "host.get", "../vms")
    out["no_such_vm"] = call(admin, "vm.get", "00000000-0000-4000-8000-000000000000")
    out["bad_action"] = call(admin, "vm.power", cfg["vm"], "explode")
    out["bad_object"] = call(admin, "metrics.get", "disk:" + cfg["vm"], "cpu", "hour")
    out["bad_metric"] = call(admin, "metrics.get", "vm:" + cfg["vm"], "nope", "hour")
    out["bad_option"] = call(admin, "vm.backup", cfg["vm"], {"mode": "sideways"})
    out["base64_option"] = call(admin, "vm.backup", cfg["vm"], {"mode": xmlrpc.client.Binary(b"x")})

    # A scoped viewer: the hidden VM does not exist, writes are refused.
    scoped = proxy(cfg["scoped_user"], cfg["scoped_password"])
    out["scoped_vm.get_hidden"] = call(scoped, "vm.get", cfg["hidden_vm"])
    out["scoped_backup.list_hidden"] = call(scoped, "backup.list", cfg["hidden_vm"])
    out["scoped_vm.list"] = call(scoped, "vm.list")
    out["scoped_vm.power"] = call(scoped, "vm.power", cfg["vm"], "pause")

    # Raw bodies no client library would send.
    def raw(body, content_type="text/xml", method="POST", auth=True, cookie=None):
        conn = http.client.HTTPSConnection(host, context=ctx, timeout=30)
        headers = {"Content-Type": content_type}
        if auth:
            import base64
            pair = f"{cfg['user']}:{cfg['password']}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        if cookie:
            headers["Cookie"] = cookie
        try:
            conn.request(method, "/RPC2", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as e:
            return {"error": str(e)}
        result = {"status": resp.status}
        if resp.status == 200:
            try:
                xmlrpc.client.loads(data)
                result["ok"] = True
            except xmlrpc.client.Fault as f:
                result["fault"] = f.faultCode
                result["message"] = f.faultString
        return result

    lol = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
           + "".join(f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1) if i > 1 else "&lol;") * 10}">' for i in range(1, 10))
           + ']><methodCall><methodName>&lol9;</methodName></methodCall>')
    out["raw_entities"] = raw(lol)
    xxe = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
           '<methodCall><methodName>host.get</methodName><params><param><value>&xxe;</value></param></params></methodCall>')
    out["raw_external_entity"] = raw(xxe)
    deep = ("<methodCall><methodName>vm.list</methodName><params><param>"
            + "<value><array><data>" * 5000 + "</data></array></value>" * 5000
            + "</param></params></methodCall>")
    out["raw_deep"] = raw(deep)
    big = ("<methodCall><methodName>vm.list</methodName><params><param><value>"
           + "x" * 400_000 + "</value></param></params></methodCall>")
    out["raw_big"] = raw(big)
    out["raw_huge"] = raw("x" * 1_500_000)
    out["raw_not_xml"] = raw("this is not xml")
    out["raw_plain_text"] = raw(xmlrpc.client.dumps((), "host.list"), content_type="text/plain")
    out["raw_get"] = raw(None, method="GET")
    out["raw_cookie_only"] = raw(xmlrpc.client.dumps((), "host.list"), auth=False,
                                 cookie=cfg["cookie"])
    out["raw_good"] = raw(xmlrpc.client.dumps((), "host.list"))

    json.dump(out, sys.stdout, default=str)


if __name__ == "__main__":
    main()
