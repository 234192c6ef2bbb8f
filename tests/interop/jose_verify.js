// Verifies a Writ capability token with `jose` (panva/jose) only: the keys
// are found from the issuer through OpenID Connect Discovery; then the
// certificate binding, the capability and the revocation list in a few lines
// of Node's own crypto.
//
// This is also the README's Node snippet. Usage (Node 20.19 or later; trust
// the operator's CA for HTTPS with NODE_EXTRA_CA_CERTS=trust-bundle.pem):
//
//     node jose_verify.js ISSUER TOKEN AUDIENCE CERT TRUST_BUNDLE ACTION RESOURCE
//
// Prints the verified claims as JSON and exits 0, or prints why and exits 1.
const crypto = require('node:crypto');
const fs = require('node:fs');
const { createRemoteJWKSet, jwtVerify } = require('jose');

async function verify(issuer, token, audience, certPem, bundlePem, action, resource) {
  // 1. The token: keys from the issuer's discovery document; signature, iss, aud, exp and nbf.
  const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
  const jwks = createRemoteJWKSet(new URL(discovery.jwks_uri));
  const { payload: claims } = await jwtVerify(token, jwks, {
    issuer: discovery.issuer, audience, algorithms: discovery.id_token_signing_alg_values_supported,
  });

  // 2. The certificate: issued by a CA of the trust bundle, valid now, for the token's subject.
  const cert = new crypto.X509Certificate(certPem);
  const cas = bundlePem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g)
    .map((pem) => new crypto.X509Certificate(pem));
  if (!cas.some((ca) => cert.checkIssued(ca) && cert.verify(ca.publicKey))) {
    throw new Error('certificate does not chain to the trust bundle');
  }
  if (Date.now() < Date.parse(cert.validFrom) || Date.now() > Date.parse(cert.validTo)) {
    throw new Error('certificate is not valid now');
  }
  if (cert.subjectAltName !== `URI:${claims.sub}`) {
    throw new Error(`certificate is ${cert.subjectAltName}, token is for ${claims.sub}`);
  }

  // 3. Writ's checks: the token is bound to this certificate, grants the attempt, is not revoked.
  if (crypto.createHash('sha256').update(cert.raw).digest('base64url') !== claims.cnf['x5t#S256']) {
    throw new Error('token is bound to another certificate');
  }
  if (!claims.cap.some((c) => c.action === action && c.resource === resource)) {
    throw new Error(`token does not grant ${action} on ${resource}`);
  }
  const revoked = await (await fetch(`${issuer}/revocations`)).json();
  const serial = cert.serialNumber.toLowerCase().replace(/^0+(?=.)/, '');
  if (revoked.tokens.some((t) => t.jti === claims.jti) || revoked.certificates.some((c) => c.serial === serial)) {
    throw new Error(`token ${claims.jti} or its certificate has been revoked`);
  }
  return claims;
}

async function main([issuer, tokenFile, audience, certFile, bundleFile, action, resource]) {
  const read = (f) => fs.readFileSync(f, 'utf8');
  try {
    const claims = await verify(issuer, read(tokenFile).trim(), audience, read(certFile), read(bundleFile), action, resource);
    console.log(JSON.stringify(claims));
    return 0;
  } catch (e) { // report which check failed
    console.log(`refused: ${e.code || e.name}: ${e.message}`);
    return 1;
  }
}

main(process.argv.slice(2)).then((code) => process.exit(code));
