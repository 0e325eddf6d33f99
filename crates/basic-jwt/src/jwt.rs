//! Reading and checking JWTs: structure, times (`exp` required, `nbf`, `iat`), and
//! signatures with an HMAC secret, a PEM public key or a JWKS, refusing `alg: none`
//! and algorithm confusion (a key only verifies the algorithms of its own family).

use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keyhaven_core::SchemeError;
use serde_json::{Map, Value};

/// How much clock difference is tolerated on `exp` and `nbf`.
pub(crate) const LEEWAY_SECS: i64 = 30;

/// The times of a JWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwtTimes {
    /// `exp`: when it stops being valid.
    pub expires_at: DateTime<Utc>,
    /// `nbf`: not valid before.
    pub not_before: Option<DateTime<Utc>>,
    /// `iat`: when it was issued.
    pub issued_at: Option<DateTime<Utc>>,
}

fn b64(part: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()
}

fn time(claims: &Map<String, Value>, name: &str) -> Result<Option<DateTime<Utc>>, SchemeError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .and_then(|secs| DateTime::from_timestamp(secs as i64, 0))
            .map(Some)
            .ok_or_else(|| SchemeError::Rejected {
                message: format!("the JWT's {name} claim is not a time"),
            }),
    }
}

/// Reads a JWT without checking its signature: it must have three parts, a JSON
/// header whose `alg` is not `none`, and JSON claims with an `exp` later than `now`.
///
/// # Errors
/// [`SchemeError::Rejected`] saying which rule the token breaks (never quoting it).
pub fn inspect(
    token: &str,
    now: DateTime<Utc>,
) -> Result<(Map<String, Value>, JwtTimes), SchemeError> {
    let malformed = |why: &str| SchemeError::Rejected {
        message: format!("the server's token is not a valid JWT: {why}"),
    };
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(malformed("it does not have three dot-separated parts"));
    }
    let header: Map<String, Value> = b64(parts[0])
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| malformed("its header is not base64url JSON"))?;
    match header.get("alg").and_then(Value::as_str) {
        None => return Err(malformed("its header has no alg")),
        Some(alg) if alg.eq_ignore_ascii_case("none") => {
            return Err(SchemeError::Rejected {
                message: "the server's JWT is unsigned (alg none), which is refused".into(),
            });
        }
        Some(_) => {}
    }
    let claims: Map<String, Value> = b64(parts[1])
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| malformed("its claims are not base64url JSON"))?;
    let expires_at = time(&claims, "exp")?.ok_or_else(|| SchemeError::Rejected {
        message: "the server's JWT has no exp claim, so keyhaven cannot tell when to log in again"
            .into(),
    })?;
    let leeway = chrono::Duration::seconds(LEEWAY_SECS);
    // Checked: a time at the edge of what a date can hold must not overflow (an
    // `exp` that far ahead has not expired; an `nbf` that far back has begun).
    if expires_at
        .checked_add_signed(leeway)
        .is_some_and(|limit| limit <= now)
    {
        return Err(SchemeError::Rejected {
            message: format!(
                "the server's JWT expired already (exp {})",
                expires_at.to_rfc3339()
            ),
        });
    }
    let not_before = time(&claims, "nbf")?;
    if let Some(nbf) = not_before.filter(|nbf| {
        nbf.checked_sub_signed(leeway)
            .is_some_and(|start| start > now)
    }) {
        return Err(SchemeError::Rejected {
            message: format!("the server's JWT is not valid before {}", nbf.to_rfc3339()),
        });
    }
    let issued_at = time(&claims, "iat")?;
    Ok((
        claims,
        JwtTimes {
            expires_at,
            not_before,
            issued_at,
        },
    ))
}

/// What verifies a JWT's signature.
#[derive(Debug, Clone)]
pub enum Verifier {
    /// Structure and times only.
    Unverified,
    /// An HMAC secret: HS256, HS384 or HS512 only.
    Hmac(Vec<u8>),
    /// A PEM public key: RSA (RS*, PS*), EC (ES*) or Ed25519 (EdDSA), per its type.
    Pem(String),
    /// A JSON Web Key Set, already fetched.
    Jwks(jsonwebtoken::jwk::JwkSet),
}

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];
const ED: &[Algorithm] = &[Algorithm::EdDSA];

/// The decoding key of a PEM public key and the algorithms its family allows.
pub(crate) fn pem_key(pem: &str) -> Result<(DecodingKey, &'static [Algorithm]), SchemeError> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
        return Ok((k, RSA));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
        return Ok((k, EC));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem.as_bytes()) {
        return Ok((k, ED));
    }
    Err(SchemeError::invalid(
        "auth_config.public_key_pem",
        "is not a PEM public key (RSA, EC P-256/P-384 or Ed25519)",
    ))
}

/// Checks a JWT's signature (and `exp`, `nbf`, and `iss`/`aud` when given).
///
/// # Errors
/// [`SchemeError::Rejected`]: a bad signature, an algorithm outside the key's
/// family, `alg: none`, an unknown `kid`, a wrong issuer or audience.
pub fn verify(
    token: &str,
    verifier: &Verifier,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<(), SchemeError> {
    let refuse = |message: String| SchemeError::Rejected { message };
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| refuse("the server's JWT header cannot be read".into()))?;
    let (key, allowed): (DecodingKey, &[Algorithm]) = match verifier {
        Verifier::Unverified => return Ok(()),
        Verifier::Hmac(secret) => (DecodingKey::from_secret(secret), HMAC),
        Verifier::Pem(pem) => pem_key(pem)?,
        Verifier::Jwks(set) => {
            let jwk = match &header.kid {
                Some(kid) => set.find(kid),
                None if set.keys.len() == 1 => set.keys.first(),
                None => None,
            }
            .ok_or_else(|| {
                refuse(format!(
                    "no key of the JWKS matches the JWT's kid {:?}",
                    header.kid
                ))
            })?;
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|_| refuse("the JWKS key cannot be used".into()))?;
            let family: &[Algorithm] = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => RSA,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => EC,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => ED,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => HMAC,
                _ => {
                    return Err(refuse(
                        "the JWKS key is of a kind keyhaven does not verify".into(),
                    ));
                }
            };
            (key, family)
        }
    };
    if !allowed.contains(&header.alg) {
        return Err(refuse(format!(
            "the JWT says it is signed with {:?}, which this key cannot verify (algorithm confusion is refused)",
            header.alg
        )));
    }
    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.leeway = LEEWAY_SECS as u64;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp"]);
    match issuer {
        Some(iss) => validation.set_issuer(&[iss]),
        None => validation.iss = None,
    }
    match audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
        .map(|_| ())
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            refuse(match e.kind() {
                K::InvalidSignature => "the JWT's signature does not verify".into(),
                K::ExpiredSignature => "the JWT expired".into(),
                K::ImmatureSignature => "the JWT is not valid yet".into(),
                K::InvalidIssuer => "the JWT's issuer is not the configured one".into(),
                K::InvalidAudience => "the JWT's audience is not the configured one".into(),
                K::InvalidAlgorithm => "the JWT's algorithm does not fit the key".into(),
                K::MissingRequiredClaim(c) => format!("the JWT has no {c} claim"),
                _ => "the JWT cannot be verified".into(),
            })
        })
}
