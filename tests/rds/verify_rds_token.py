#!/usr/bin/python3
"""Checks an RDS IAM auth token the way Amazon RDS does; run by pam_exec (expose_authtok).

Arguments: HOST:PORT REGION ACCESS_KEY_ID SECRET_ACCESS_KEY RECORD_DIR. The token arrives on
stdin (NUL-terminated), the database user in PAM_USER. Exit 0 accepts, anything else refuses.
Each decision is appended to RECORD_DIR/verifier.log; each token seen to RECORD_DIR/tokens.txt
so the test can check the relay never logs it. Standard library only.
"""
import datetime
import hashlib
import hmac
import os
import sys
import urllib.parse


def main():
    endpoint, region, key_id, secret, record = sys.argv[1:6]
    token = sys.stdin.buffer.read().split(b"\0")[0].decode("utf-8", "replace").strip()
    with open(os.path.join(record, "tokens.txt"), "a") as f:
        f.write(token + "\n")
    user = os.environ.get("PAM_USER", "")
    why = check(token, user, endpoint, region, key_id, secret)
    with open(os.path.join(record, "verifier.log"), "a") as f:
        f.write(f"{user}: {why or 'accepted'}\n")
    sys.exit(1 if why else 0)


def encode(s):
    return urllib.parse.quote(s, safe="-_.~")


def check(token, user, endpoint, region, key_id, secret):
    authority, sep, query = token.partition("/?")
    if not sep:
        return "not a presigned URL without scheme"
    if authority != endpoint:
        return f"signed for host {authority}, not {endpoint}"
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as e:
        return f"bad query: {e}"
    params = dict(pairs)
    if len(params) != len(pairs):
        return "repeated query parameter"
    if params.get("Action") != "connect":
        return "Action is not connect"
    if params.get("DBUser") != user:
        return f"DBUser {params.get('DBUser')!r} is not the user logging in"
    if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        return "wrong algorithm"
    if params.get("X-Amz-SignedHeaders") != "host":
        return "signed headers are not host"
    try:
        expires = int(params["X-Amz-Expires"])
        signed_at = datetime.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc
        )
    except (KeyError, ValueError):
        return "missing or bad X-Amz-Expires / X-Amz-Date"
    if not 0 < expires <= 900:
        return f"X-Amz-Expires {expires} is over 900"
    now = datetime.datetime.now(datetime.timezone.utc)
    age = (now - signed_at).total_seconds()
    if age > expires or age < -300:
        return "expired or signed in the future"
    date = params["X-Amz-Date"][:8]
    scope = f"{date}/{region}/rds-db/aws4_request"
    if params.get("X-Amz-Credential") != f"{key_id}/{scope}":
        return f"credential {params.get('X-Amz-Credential')!r} is not {key_id}/{scope}"
    canonical_query = "&".join(
        f"{encode(k)}={encode(v)}"
        for k, v in sorted(pairs)
        if k != "X-Amz-Signature"
    )
    canonical = "\n".join(
        [
            "GET",
            "/",
            canonical_query,
            f"host:{endpoint}",
            "",
            "host",
            hashlib.sha256(b"").hexdigest(),
        ]
    )
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            params["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secret).encode()
    for part in (date, region, "rds-db", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, params.get("X-Amz-Signature", "")):
        return "signature does not match"
    return None


main()
