//! TEMPORARY placeholder until the verification library lands.
use serde::{Deserialize, Serialize};
/// Default skew.
pub const DEFAULT_SKEW_SECS: i64 = 30;
/// List.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RevocationList {
    pub version: u64,
    pub tokens: Vec<RevokedToken>,
    pub certificates: Vec<RevokedCertificate>,
}
/// T.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RevokedToken {
    pub jti: String,
    pub expires_at: i64,
}
/// C.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RevokedCertificate {
    pub serial: String,
    pub expires_at: i64,
}
/// V.
pub fn verify_signed(
    _t: &str,
    _j: &crate::pki::jwks::JwkSet,
    _n: i64,
    _s: i64,
) -> Result<crate::pki::token::Claims, String> {
    Err("x".into())
}
