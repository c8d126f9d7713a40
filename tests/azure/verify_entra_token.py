#!/usr/bin/python3
"""Checks an Entra ID token the way Azure Database for PostgreSQL does; run by pam_exec
(expose_authtok).

Arguments: SIGNING_KEY_HEX TENANT RECORD_DIR. The token arrives on stdin (NUL-terminated), the
role in PAM_USER. The role's object id (what pgaadauth_create_principal_with_oid mapped) is read
from RECORD_DIR/oids ("role object-id" lines). Accepted only when the token is an HS256 JWT
signed with the fake Entra ID's key, for the resource https://ossrdbms-aad.database.windows.net
and the server's tenant, unexpired, and its oid is the role's. Each decision is appended to
RECORD_DIR/verifier.log ("role: accepted" or "role: <why refused>", the reasons named as
Azure's: "oid mismatch", "An error occurred while validating the access token"); each token
seen to RECORD_DIR/tokens.txt, so the test can check none is logged. A file
RECORD_DIR/reject_next refuses the next token whatever it is (once). Standard library only.
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time

RESOURCE = "https://ossrdbms-aad.database.windows.net"


def b64(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def check(token, role, key, tenant, oids):
    parts = token.split(".")
    if len(parts) != 3:
        return "An error occurred while validating the access token (not a JWT)"
    expected = hmac.new(key, (parts[0] + "." + parts[1]).encode(), hashlib.sha256).digest()
    try:
        signature = b64(parts[2])
        claims = json.loads(b64(parts[1]))
    except ValueError:
        return "An error occurred while validating the access token (malformed)"
    if not hmac.compare_digest(expected, signature):
        return "An error occurred while validating the access token (signature)"
    if claims.get("aud") != RESOURCE:
        return "An error occurred while validating the access token (audience)"
    if claims.get("tid") != tenant:
        return "An error occurred while validating the access token (tenant)"
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
        return "An error occurred while validating the access token (expired)"
    if role not in oids:
        return f"role {role} is not an Entra principal"
    if claims.get("oid") != oids[role]:
        return f"oid mismatch: token oid {claims.get('oid')}, role oid {oids[role]}"
    return None


def main():
    key, tenant, record = bytes.fromhex(sys.argv[1]), sys.argv[2], sys.argv[3]
    token = sys.stdin.buffer.read().split(b"\0")[0].decode("utf-8", "replace").strip()
    with open(os.path.join(record, "tokens.txt"), "a") as f:
        f.write(token + "\n")
    role = os.environ.get("PAM_USER", "")
    oids = {}
    with open(os.path.join(record, "oids")) as f:
        for line in f:
            if line.strip():
                name, oid = line.split()
                oids[name] = oid
    try:
        os.remove(os.path.join(record, "reject_next"))
        why = "rejected on purpose"
    except FileNotFoundError:
        why = check(token, role, key, tenant, oids)
    with open(os.path.join(record, "verifier.log"), "a") as f:
        f.write(f"{role}: {why or 'accepted'}\n")
    sys.exit(1 if why else 0)


main()
