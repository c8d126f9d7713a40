#!/usr/bin/python3
"""Checks an RDS IAM auth token the way Amazon RDS does; run by pam_exec (expose_authtok).

Arguments: HOST:PORT REGION ACCESS_KEY_ID SECRET_ACCESS_KEY RECORD_DIR. The token arrives on
stdin (NUL-terminated), the database user in PAM_USER. Exit 0 accepts, anything else refuses.
Each decision is appended to RECORD_DIR/verifier.log (an accepted token with its age: how long
before the verifier's now it was signed); each token seen to RECORD_DIR/tokens.txt so the test
can check the relay never logs it. Standard library only.

The test steers it with files in RECORD_DIR:
- clock_offset: seconds added to the verifier's clock ("AWS's time"), to play a relay whose
  clock is off (600: the relay is ten minutes behind);
- reject_next: refuse the next token whatever it is (once; the file is removed), to play a
  token the database refused.
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
    try:
        with open(os.path.join(record, "clock_offset")) as f:
            offset = int(f.read().strip())
    except FileNotFoundError:
        offset = 0
    now = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset)
    try:
        os.remove(os.path.join(record, "reject_next"))
        why = "rejected on purpose"
    except FileNotFoundError:
        why = check(token, user, endpoint, region, key_id, secret, now)
    with open(os.path.join(record, "verifier.log"), "a") as f:
        f.write(f"{user}: {why or 'accepted, age ' + str(age_of(token, now)) + ' s'}\n")
    sys.exit(1 if why else 0)


def age_of(token, now):
    """Seconds between the token's X-Amz-Date and now (only called on accepted tokens)."""
    date = dict(urllib.parse.parse_qsl(token.partition("/?")[2]))["X-Amz-Date"]
    signed_at = datetime.datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(
        tzinfo=datetime.timezone.utc
    )
    return round((now - signed_at).total_seconds())


def encode(s):
    return urllib.parse.quote(s, safe="-_.~")


def check(token, user, endpoint, region, key_id, secret, now):
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
    age = (now - signed_at).total_seconds()
    if age > expires:
        return f"expired: signed {round(age)} s ago"
    if age < -300:
        return f"signed {round(-age)} s in the future"
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
