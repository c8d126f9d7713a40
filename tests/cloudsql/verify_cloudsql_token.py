#!/usr/bin/python3
"""Checks a Cloud SQL IAM login token the way Cloud SQL does; run by pam_exec (expose_authtok).

Argument: the fake Google's URL. The token arrives on stdin (NUL-terminated), the database user
in PAM_USER. The token is accepted only if the fake's /tokeninfo (as Google's) says it is
unexpired, was issued for exactly PAM_USER's service account (the user name plus
".gserviceaccount.com", as Cloud SQL names IAM users) and carries the sqlservice.login scope.
Unlike a role password, every unexpired token is accepted, as on Cloud SQL, so a token that was
just replaced by its successor still logs in. Exit 0 accepts, anything else refuses. Standard
library only.
"""
import json
import os
import sys
import urllib.parse
import urllib.request

LOGIN_SCOPE = "https://www.googleapis.com/auth/sqlservice.login"


def main():
    url = sys.argv[1]
    token = sys.stdin.buffer.read().split(b"\0")[0].decode("utf-8", "replace").strip()
    user = os.environ.get("PAM_USER", "")
    query = urllib.parse.urlencode({"access_token": token})
    # No proxy: the fake listens on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/tokeninfo?{query}", timeout=10) as answer:
            info = json.load(answer)
    except Exception:
        sys.exit(1)
    ok = (
        info.get("email") == user + ".gserviceaccount.com"
        and LOGIN_SCOPE in info.get("scope", "").split()
        and int(info.get("expires_in", "0")) > 0
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
