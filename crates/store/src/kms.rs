//! Master keys that never sit next to the data: an envelope.
//!
//! The data key (the [`MasterKey`] that encrypts rows) is kept only wrapped by a key
//! management service, in `master.key.kms` in the data directory (JSON: the KMS key
//! that wrapped it, the wrapped bytes, the data key's id). At start it is unwrapped
//! with one KMS call and held in memory. Rotating the wrapping key
//! ([`rewrap`]) unwraps with the old KMS key and wraps with the new one: the data key
//! and every row stay as they are.
//!
//! [`Kms`] speaks AWS KMS's JSON API (`TrentService.Encrypt` / `.Decrypt`) signed with
//! SigV4, to AWS or to anything that speaks it (moto, LocalStack) at
//! `KEYHAVEN_KMS_ENDPOINT`. Credentials come from `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`; the region from
//! `KEYHAVEN_KMS_REGION`, `AWS_REGION` or `AWS_DEFAULT_REGION`.
//!
//! A refused or failed KMS call is an error that names the call and the KMS key, and
//! changes nothing on disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyhaven_core::StoreError;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{KeyRing, MasterKey};

/// The wrapped key's file name in a data directory.
pub const WRAPPED_KEY_FILE: &str = "master.key.kms";

/// The environment variables of the KMS settings.
pub const KMS_KEY_ENV: &str = "KEYHAVEN_KMS_KEY_ID";
/// See [`KMS_KEY_ENV`].
pub const KMS_ENDPOINT_ENV: &str = "KEYHAVEN_KMS_ENDPOINT";
/// See [`KMS_KEY_ENV`].
pub const KMS_REGION_ENV: &str = "KEYHAVEN_KMS_REGION";

/// How long one KMS call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn kms_error(message: String) -> StoreError {
    StoreError::Unavailable(message)
}

/// A client of one KMS (see the module).
pub struct Kms {
    endpoint: String,
    /// The endpoint as errors show it: no user name, password or query.
    shown: String,
    region: String,
    access_key: String,
    secret_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kms")
            .field("endpoint", &self.shown)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Kms {
    /// A client from the environment (see the module); `endpoint` overrides
    /// `KEYHAVEN_KMS_ENDPOINT` and the region's AWS endpoint.
    ///
    /// # Errors
    /// No AWS credentials in the environment.
    pub fn from_env(endpoint: Option<&str>) -> Result<Self, StoreError> {
        let region = env(KMS_REGION_ENV)
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let endpoint = endpoint
            .map(str::to_owned)
            .or_else(|| env(KMS_ENDPOINT_ENV))
            .unwrap_or_else(|| format!("https://kms.{region}.amazonaws.com"));
        let (Some(access_key), Some(secret_key)) =
            (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(kms_error(
                "the KMS needs AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones)".to_owned(),
            ));
        };
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| kms_error(format!("cannot make the KMS client: {e}")))?;
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let shown = match reqwest::Url::parse(&endpoint) {
            Ok(mut u) => {
                let _ = u.set_username("");
                let _ = u.set_password(None);
                u.set_query(None);
                u.to_string().trim_end_matches('/').to_owned()
            }
            Err(_) => "(an endpoint that is not a URL)".to_owned(),
        };
        Ok(Self {
            shown,
            endpoint,
            region,
            access_key,
            secret_key: Zeroizing::new(secret_key),
            session_token: env("AWS_SESSION_TOKEN").map(Zeroizing::new),
            http,
        })
    }

    /// One call of KMS's JSON API, signed with SigV4.
    async fn call(
        &self,
        operation: &str,
        key_id: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, StoreError> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let what = |detail: String| {
            kms_error(format!(
                "KMS {operation} with key {key_id:?} at {}: {detail}",
                self.shown
            ))
        };
        let payload = serde_json::to_vec(body).map_err(|e| what(e.to_string()))?;
        let url = format!("{}/", self.endpoint);
        let target = format!("TrentService.{operation}");
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", target.as_str()),
        ];
        let identity = aws_credential_types::Credentials::new(
            self.access_key.clone(),
            self.secret_key.as_str().to_owned(),
            self.session_token.as_ref().map(|t| t.as_str().to_owned()),
            None,
            "keyhaven",
        )
        .into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("kms")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| what(format!("cannot sign the call: {e}")))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            &url,
            headers.iter().copied(),
            SignableBody::Bytes(&payload),
        )
        .map_err(|e| what(format!("cannot sign the call: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| what(format!("cannot sign the call: {e}")))?
            .into_parts();
        let mut request = http::Request::builder().method("POST").uri(&url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let mut request = request.body(payload).map_err(|e| what(e.to_string()))?;
        instructions.apply_to_request_http1x(&mut request);
        let request = reqwest::Request::try_from(request).map_err(|e| what(e.to_string()))?;
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| what(format!("unreachable ({})", e.without_url())))?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.map_err(|e| {
            what(format!(
                "answered {status} with no JSON ({})",
                e.without_url()
            ))
        })?;
        if !status.is_success() {
            // KMS errors are {"__type": "...Exception", "message": "..."}: no secret.
            let kind = answer["__type"].as_str().unwrap_or("error");
            let kind = kind.rsplit('#').next().unwrap_or(kind);
            let message = answer["message"]
                .as_str()
                .or_else(|| answer["Message"].as_str())
                .unwrap_or("");
            return Err(what(format!("refused ({status}, {kind}) {message}")));
        }
        Ok(answer)
    }

    /// Wraps `key` with the KMS key `key_id`.
    ///
    /// # Errors
    /// The call fails or is refused.
    pub async fn wrap(&self, key_id: &str, key: &MasterKey) -> Result<Vec<u8>, StoreError> {
        let plain = key.to_base64();
        let answer = self
            .call(
                "Encrypt",
                key_id,
                &serde_json::json!({"KeyId": key_id, "Plaintext": plain.as_str()}),
            )
            .await?;
        let blob = answer["CiphertextBlob"].as_str().unwrap_or_default();
        B64.decode(blob).map_err(|_| {
            kms_error(format!(
                "KMS Encrypt with key {key_id:?} answered no CiphertextBlob"
            ))
        })
    }

    /// Unwraps what [`Kms::wrap`] made with `key_id`.
    ///
    /// # Errors
    /// The call fails or is refused, or answers something that is not a key.
    pub async fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<MasterKey, StoreError> {
        let answer = self
            .call(
                "Decrypt",
                key_id,
                &serde_json::json!({"KeyId": key_id, "CiphertextBlob": B64.encode(wrapped)}),
            )
            .await?;
        let plain = Zeroizing::new(answer["Plaintext"].as_str().unwrap_or_default().to_owned());
        MasterKey::from_base64(&plain).map_err(|_| {
            kms_error(format!(
                "KMS Decrypt with key {key_id:?} answered something that is not a 32-byte key"
            ))
        })
    }
}

/// The wrapped key file.
#[derive(Debug, Serialize, Deserialize)]
struct WrappedFile {
    /// The format, 1.
    version: u32,
    /// The KMS key that wrapped it.
    kms_key_id: String,
    /// The wrapped data key, base64.
    wrapped: String,
    /// The data key's id (`k...`), to check the unwrapped key against.
    key_id: String,
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{}: {e}", path.display()).into())
}

fn read_wrapped(path: &Path) -> Result<Option<WrappedFile>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| file_error(path, format!("not a wrapped key file ({e})"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_error(path, e)),
    }
}

/// Writes the wrapped key file atomically (a new 0600 file, then a rename; with
/// `create_new`, a hard link that fails when the file exists, so that of two
/// processes making the first key at once one wins and the other reads its key,
/// as the plain key file does). Returns whether the file was written.
fn write_wrapped(path: &Path, content: &WrappedFile, create_new: bool) -> Result<bool, StoreError> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(content).map_err(|e| file_error(path, e))?;
    let suffix = keyhaven_core::random_hex::<8>().map_err(|e| file_error(path, e))?;
    let tmp = path.with_extension(format!("kms.{suffix}.tmp"));
    let written = crate::files::create_new_private_file(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    let placed = written.and_then(|()| {
        if !create_new {
            return std::fs::rename(&tmp, path).map(|()| true);
        }
        let linked = match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            // A file system without hard links: check, then rename (not atomic).
            Err(_) if path.exists() => Ok(false),
            Err(_) => return std::fs::rename(&tmp, path).map(|()| true),
        };
        let _ = std::fs::remove_file(&tmp);
        linked
    });
    placed.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_error(path, format!("cannot write it: {e}"))
    })
}

/// The data key a wrapped key file holds: unwrapped with the KMS key that wrapped
/// it, and checked against the id the file names.
async fn open(path: &Path, file: &WrappedFile, kms: &Kms) -> Result<MasterKey, StoreError> {
    let wrapped = B64
        .decode(&file.wrapped)
        .map_err(|_| file_error(path, "its wrapped key is not base64"))?;
    let key = kms.unwrap(&file.kms_key_id, &wrapped).await?;
    if key.id() != file.key_id {
        return Err(file_error(
            path,
            format!(
                "the KMS unwrapped key {} where the file names {}",
                key.id(),
                file.key_id
            ),
        ));
    }
    Ok(key)
}

/// Wraps `key` with the KMS key `kms_key_id`, checks that the KMS gives it back,
/// then writes the wrapped key file at `path` (its directory made if need be, mode
/// 0700); nothing is made or written when a call fails.
async fn seal(
    path: &Path,
    kms: &Kms,
    kms_key_id: &str,
    key: &MasterKey,
    create_new: bool,
) -> Result<bool, StoreError> {
    let wrapped = kms.wrap(kms_key_id, key).await?;
    if kms.unwrap(kms_key_id, &wrapped).await?.id() != key.id() {
        return Err(kms_error(format!(
            "KMS key {kms_key_id:?} did not give back the key it wrapped; nothing was written"
        )));
    }
    if let Some(dir) = path.parent() {
        crate::files::create_private_dir(dir).map_err(|e| file_error(dir, e))?;
    }
    write_wrapped(
        path,
        &WrappedFile {
            version: 1,
            kms_key_id: kms_key_id.to_owned(),
            wrapped: B64.encode(&wrapped),
            key_id: key.id().to_owned(),
        },
        create_new,
    )
}

/// The key ring of a data directory whose key is wrapped by `kms_key_id`:
/// unwrapped from `master.key.kms`. Without that file, the data key is the plain
/// `master.key`'s primary (moved into the envelope: wrapped, checked by unwrapping,
/// and the plain file removed) or, in a directory with neither, a new key. The file
/// is written only after the KMS wrapped and unwrapped the key.
///
/// # Errors
/// A KMS call fails or is refused (nothing is written then); the file cannot be
/// read or written; the unwrapped key is not the one the file names.
pub async fn ring_from_kms(dir: &Path, kms: &Kms, kms_key_id: &str) -> Result<KeyRing, StoreError> {
    let path = dir.join(WRAPPED_KEY_FILE);
    if let Some(file) = read_wrapped(&path)? {
        if file.kms_key_id != kms_key_id {
            tracing::warn!(
                file_key = %file.kms_key_id,
                configured = %kms_key_id,
                "the data key is wrapped by another KMS key than the one configured; it is unwrapped with the one that wrapped it (run `keyhaven keys rewrap` to move it)"
            );
        }
        return Ok(KeyRing::new(open(&path, &file, kms).await?, []));
    }
    let plain = crate::keys::KeyFile::in_dir(dir);
    let (key, moved) = if plain.path().exists() {
        (plain.only_key()?, true)
    } else {
        (MasterKey::generate()?, false)
    };
    if !seal(&path, kms, kms_key_id, &key, true).await? {
        // Another process made the file meanwhile: its key is the directory's (the
        // one made here was never used).
        let file = read_wrapped(&path)?
            .ok_or_else(|| file_error(&path, "it was made by another process and is gone again"))?;
        return Ok(KeyRing::new(open(&path, &file, kms).await?, []));
    }
    if moved {
        match std::fs::remove_file(plain.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_error(plain.path(), e)),
        }
        tracing::info!(path = %path.display(), "the master key moved into the KMS envelope; the plain key file was removed");
    } else {
        tracing::info!(path = %path.display(), kms_key = %kms_key_id, "a new data key, wrapped by the KMS");
    }
    Ok(KeyRing::new(key, []))
}

/// Wraps the data key of `dir` with the KMS key `new_kms_key_id` instead of the one
/// that wraps it now: one unwrap with the old, one wrap (and a check) with the new,
/// then the file is replaced. No row is re-encrypted.
///
/// # Errors
/// There is no wrapped key in `dir`; a KMS call fails or is refused (the file is
/// unchanged then).
pub async fn rewrap(dir: &Path, kms: &Kms, new_kms_key_id: &str) -> Result<PathBuf, StoreError> {
    let path = dir.join(WRAPPED_KEY_FILE);
    let file = read_wrapped(&path)?.ok_or_else(|| {
        file_error(
            &path,
            "there is no wrapped key to rewrap; start keyhaven with KEYHAVEN_KMS_KEY_ID first",
        )
    })?;
    let key = open(&path, &file, kms).await?;
    seal(&path, kms, new_kms_key_id, &key, false).await?;
    Ok(path)
}
