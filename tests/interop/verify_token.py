"""Verifies a Writ capability token and pod certificate with libraries that
are not Writ's: PyJWT (+ cryptography) for the token, using only the
published JWKS, and the SPIFFE project's `spiffe` package for the X.509-SVID.

This is also the Python snippet of docs/verify.md. Usage:

    python3 verify_token.py JWKS TOKEN AUDIENCE CERT KEY BUNDLE TRUST_DOMAIN

Prints the verified claims as JSON and exits 0, or prints why and exits 1.
"""
import base64
import hashlib
import json
import sys

import jwt  # PyJWT
from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import X509Bundle, X509Svid, TrustDomain


def verify(jwks_json, token, audience, cert_pem, key_pem, bundle_pem, trust_domain):
    # 1. The token: ES256 (or EdDSA) signature by a key of the JWKS, exp/nbf/aud.
    kid = jwt.get_unverified_header(token)["kid"]
    keys = {k.key_id: k for k in jwt.PyJWKSet.from_json(jwks_json).keys}
    if kid not in keys:
        raise ValueError(f"unknown kid {kid}")
    claims = jwt.decode(token, keys[kid].key, algorithms=["ES256", "EdDSA"], audience=audience, leeway=30)

    # 2. The certificate: a valid X.509-SVID that chains to the trust bundle.
    svid = X509Svid.parse(cert_pem, key_pem)
    leaf = svid.leaf
    bundle = X509Bundle.parse(TrustDomain(trust_domain), bundle_pem)
    if not any(_issued_by(leaf, ca) for ca in bundle.x509_authorities):
        raise ValueError("certificate does not chain to the trust bundle")

    # 3. The binding: same SPIFFE ID, and cnf.x5t#S256 is this certificate.
    if str(svid.spiffe_id) != claims["sub"]:
        raise ValueError(f"certificate is {svid.spiffe_id}, token is for {claims['sub']}")
    der = leaf.public_bytes(Encoding.DER)
    thumb = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    if thumb != claims["cnf"]["x5t#S256"]:
        raise ValueError("token is bound to another certificate")
    return claims


def _issued_by(leaf, ca):
    try:
        leaf.verify_directly_issued_by(ca)
        return True
    except Exception:
        return False


def main(argv):
    jwks, token, audience, cert, key, bundle, td = argv[1:8]

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    try:
        claims = verify(read(jwks).decode(), read(token).decode().strip(), audience, read(cert), read(key), read(bundle), td)
    except Exception as e:  # report which check failed
        print(f"refused: {type(e).__name__}: {e}")
        return 1
    print(json.dumps(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
