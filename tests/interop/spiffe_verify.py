"""Verifies a Writ capability token as a SPIFFE JWT-SVID, and the pod's
credential files as SPIFFE Filesystem Delivery, with the SPIFFE project's
`spiffe` package (py-spiffe) only; then the three checks that are Writ's own
(certificate binding, capability, revocation list) in a few lines.

This is also the README's Python snippet. Usage:

    python3 spiffe_verify.py SPIFFE_BUNDLE TOKEN AUDIENCE CREDENTIAL_FOLDER \
        TRUST_DOMAIN REVOCATIONS ACTION RESOURCE

SPIFFE_BUNDLE is `/spiffe-bundle` (or the ConfigMap `writ-spiffe-bundle`),
CREDENTIAL_FOLDER the pod's `$SPIFFE_CREDENTIAL_FOLDER`, REVOCATIONS
`/revocations`. Prints the verified claims as JSON and exits 0, or prints why
and exits 1.
"""
import base64
import hashlib
import json
import os
import sys

import jwt  # PyJWT, which py-spiffe uses
import pem  # which py-spiffe uses
from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import JwtBundle, JwtSvid, TrustDomain, X509Bundle, X509Svid


def verify(spiffe_bundle, token, audience, folder, trust_domain, revocations, action, resource):
    td = TrustDomain(trust_domain)
    # 1. The token is a JWT-SVID: ES256 signature by a jwt-svid key of the SPIFFE bundle, aud, exp.
    jwt_keys = {"keys": [k for k in json.loads(spiffe_bundle)["keys"] if k["use"] == "jwt-svid"]}
    svid_token = JwtSvid.parse_and_validate(token, JwtBundle.parse(td, json.dumps(jwt_keys).encode()), {audience})
    claims = jwt.decode(svid_token.token, options={"verify_signature": False})  # verified just above

    # 2. The pod's X.509-SVID from its credential folder, chaining to the trust domain's bundle.
    with open(os.path.join(folder, "credential-bundle.private-key.pem"), "rb") as f:
        blocks = pem.parse(f.read())  # the PRIVATE KEY, then the chain, leaf first
    svid = X509Svid.parse(b"".join(b.as_bytes() for b in blocks[1:]), blocks[0].as_bytes())
    with open(os.path.join(folder, f"{trust_domain}.spiffe-trust-bundle.pem"), "rb") as f:
        bundle = X509Bundle.parse(td, f.read())
    if not any(_issued_by(svid.leaf, ca) for ca in bundle.x509_authorities):
        raise ValueError("certificate does not chain to the trust bundle")
    if svid.spiffe_id != svid_token.spiffe_id:
        raise ValueError(f"certificate is {svid.spiffe_id}, token is for {svid_token.spiffe_id}")

    # 3. Writ's checks: the token is bound to this certificate, grants the attempt, is not revoked.
    thumb = base64.urlsafe_b64encode(hashlib.sha256(svid.leaf.public_bytes(Encoding.DER)).digest()).rstrip(b"=")
    if thumb.decode() != claims["cnf"]["x5t#S256"]:
        raise ValueError("token is bound to another certificate")
    if {"action": action, "resource": resource} not in claims["cap"]:
        raise ValueError(f"token does not grant {action} on {resource}")
    if claims["jti"] in {t["jti"] for t in json.loads(revocations)["tokens"]}:
        raise ValueError(f"token {claims['jti']} has been revoked")
    serial = format(svid.leaf.serial_number, "x")
    if serial in {c["serial"] for c in json.loads(revocations)["certificates"]}:
        raise ValueError(f"certificate {serial} has been revoked")
    return claims


def _issued_by(leaf, ca):
    try:
        leaf.verify_directly_issued_by(ca)
        return True
    except Exception:
        return False


def main(argv):
    bundle, token, audience, folder, td, revocations, action, resource = argv[1:9]

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    try:
        claims = verify(read(bundle), read(token).decode().strip(), audience, folder, td, read(revocations), action, resource)
    except Exception as e:  # report which check failed
        print(f"refused: {type(e).__name__}: {e}")
        return 1
    print(json.dumps(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
