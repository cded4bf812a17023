#!/usr/bin/python3
"""Receivers for the alert tests, each writing what it gets as one JSON file
per message into OUT_DIR and touching OUT_DIR/ready once it listens.

  alert_receivers.py https OUT_DIR PORT CERT KEY SECRET
      An HTTPS server: every POST is recorded with its path, headers, body,
      and whether X-Lifeboat-Signature is the HMAC-SHA256 of the body under
      SECRET; answered 204.
  alert_receivers.py smtp OUT_DIR PORT CERT KEY USER PASSWORD
      aiosmtpd requiring STARTTLS and then AUTH (PLAIN or LOGIN) as USER with
      PASSWORD; every message is recorded with its envelope and raw text.
"""

import email
import email.policy
import hashlib
import hmac
import http.server
import json
import os
import ssl
import sys
import threading
import time


def record(out_dir, kind, item):
    name = f"{time.time_ns()}-{kind}.json"
    tmp = os.path.join(out_dir, "." + name)
    with open(tmp, "w") as f:
        json.dump(item, f)
    os.rename(tmp, os.path.join(out_dir, name))


def ready(out_dir):
    open(os.path.join(out_dir, "ready"), "w").close()


def https(out_dir, port, cert, key, secret):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            given = self.headers.get("X-Lifeboat-Signature")
            record(out_dir, "https", {
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
                "signature_ok": given is not None and hmac.compare_digest(given, expected),
            })
            self.send_response(204)
            self.end_headers()

        def log_message(self, fmt, *args):
            sys.stderr.write("https: " + (fmt % args) + "\n")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    ready(out_dir)
    server.serve_forever()


def smtp(out_dir, port, cert, key, user, password):
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        sys.stderr.write(f"smtp: auth {mechanism} {'accepted' if ok else 'refused'}\n")
        return AuthResult(success=ok)

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            parts = [
                {"type": part.get_content_type(), "text": part.get_content()}
                for part in message.walk()
                if not part.is_multipart()
            ]
            record(out_dir, "smtp", {
                "subject": str(message["subject"]),
                "content_type": message.get_content_type(),
                "parts": parts,
                "from": envelope.mail_from,
                "to": envelope.rcpt_tos,
                "tls": session.ssl is not None,
                "authenticated": session.authenticated,
            })
            return "250 OK"

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    ready(out_dir)
    threading.Event().wait()


if __name__ == "__main__":
    kind, out_dir, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "https":
        https(out_dir, port, *sys.argv[4:7])
    elif kind == "smtp":
        smtp(out_dir, port, *sys.argv[4:8])
    else:
        sys.exit(f"unknown receiver {kind}")
