"""A Python agent's side of the Writ token exchange, with `requests` and the
pod's own certificate: exchanges a grant token for a per-call token for one
audience and one capability (RFC 8693). This is the snippet of
docs/exchange.md. Usage:

    python3 exchange_agent.py CREDENTIALS_DIR ENDPOINT GRANT AUDIENCE ACTION RESOURCE

Prints the token response as JSON and exits 0, or prints the OAuth error and exits 1.
"""
import json
import sys

import requests


def per_call_token(creds, endpoint, grant, audience, action, resource, context=None):
    with open(f"{creds}/grant.{grant}.jwt") as f:
        grant_token = f.read().strip()
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": grant_token,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "resource": audience,
        "scope": f"{action} {resource}",
    }
    if context is not None:
        form["writ_context"] = json.dumps(context)
    # Per request: requests lets REQUESTS_CA_BUNDLE override a Session's `verify`.
    r = requests.post(
        f"{endpoint}/token",
        data=form,
        cert=(f"{creds}/tls.crt", f"{creds}/tls.key"),  # mutual TLS with the pod's SVID
        verify=f"{creds}/ca.crt",  # the Writ CA
        timeout=5,
    )
    if r.status_code != 200:
        raise PermissionError(f"{r.json().get('error')}: {r.json().get('error_description')}")
    return r.json()


def main(argv):
    creds, endpoint, grant, audience, action, resource = argv[1:7]
    try:
        response = per_call_token(creds, endpoint, grant, audience, action, resource, {"tool": "interop"})
    except PermissionError as e:
        print(f"refused: {e}")
        return 1
    print(json.dumps(response))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
