use writ::pki::JwkSet;
use writ::verify::{Attempt, RevocationList, Verifier, VerifyError};

/// Builds a verifier from the three published documents: `/trust-bundle`,
/// `/.well-known/jwks.json` and `/revocations` (or the ConfigMaps
/// writ-trust-bundle, writ-jwks, and all of writ-revocations,
/// writ-revocations-1 … -7 joined by `RevocationList::merged`). Rebuild it
/// when they change.
pub fn verifier(
    bundle_pem: &str,
    jwks_json: &str,
    revocations_json: &str,
) -> Result<Verifier, Box<dyn std::error::Error>> {
    let jwks = JwkSet::from_json(jwks_json)?;
    let revocations: RevocationList = serde_json::from_str(revocations_json)?;
    Ok(Verifier::new(bundle_pem, jwks)?.with_revocations(revocations))
}

/// Decides one request: the bearer token, and the client certificate the
/// agent presented on the TLS connection (DER or PEM).
pub fn authorize(verifier: &Verifier, bearer: &str, client_cert: &[u8]) -> Result<String, VerifyError> {
    let attempt =
        Attempt { audience: "deploy-api", action: "k8s:deployments.patch", resource: "k8s:staging/deployments/web" };
    let claims = verifier.verify(bearer, client_cert, &attempt, writ::pki::now_unix())?;
    Ok(format!("{} may patch web for task {}", claims.sub, claims.task.id))
}
