//! The secure key release API inside the group, on `127.0.0.1:<port>` of the sandbox's network
//! namespace (so only the group's containers reach it), with the routes and bodies of Azure's SKR
//! sidecar: `GET /status`, `POST /attest/raw`, `POST /attest/maa`, `POST /key/release`.
//!
//! The sandbox has no network of its own; calls to the attestation service and key broker leave
//! through the launcher's egress relay (a Unix socket in the I/O directory), so the host sees and
//! may answer them. Only the endpoints the measured policy names are called, and a released key
//! is accepted only in a response signed by the broker key the policy pins and bound to this
//! request (nonce, token `jti`, the fresh wrapping key): see `coffer-release`. The key itself is
//! wrapped to a fresh RSA-2048 key that never leaves the TEE.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use coffer_release::Endpoint;

use coffer_sp::SecureProcessor;

/// What the SKR server needs.
pub struct Skr {
    /// The secure processor.
    pub sp: Arc<dyn SecureProcessor>,
    /// The launcher's egress relay.
    pub egress: PathBuf,
    /// The attestation service and key broker the policy allows; `None`: only local routes.
    pub broker: Option<Broker>,
}

/// An attestation service and key broker as the measured policy names them.
#[derive(Debug, Clone)]
pub struct Broker {
    /// Where to attest.
    pub maa: Endpoint,
    /// Where to ask for keys.
    pub akv: Endpoint,
    /// RFC 7638 thumbprint of the key that signs the broker's release responses.
    pub signing_key: String,
}

/// Why the SKR API or a broker could not be set up from the policy.
#[derive(Debug, thiserror::Error)]
pub enum SkrSetupError {
    /// The policy's broker settings are malformed.
    #[error(transparent)]
    Setting(#[from] coffer_policy::SettingError),
    /// An endpoint does not parse.
    #[error(transparent)]
    Endpoint(#[from] coffer_release::ReleaseError),
    /// The runtime or the listener.
    #[error("SKR API on 127.0.0.1:{port}: {source}")]
    Io {
        /// The port of the group's localhost.
        port: u16,
        /// The error.
        source: std::io::Error,
    },
}

impl Broker {
    /// From the policy's strings, checked.
    pub fn from_policy(p: &coffer_policy::KeyBrokerPolicy) -> Result<Self, SkrSetupError> {
        p.check("key broker")?;
        Ok(Broker {
            maa: Endpoint::parse(&p.maa_endpoint)?,
            akv: Endpoint::parse(&p.akv_endpoint)?,
            signing_key: p.broker_key.clone(),
        })
    }
}

struct SkrError(StatusCode, String);

impl IntoResponse for SkrError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn bad(m: impl Into<String>) -> SkrError {
    SkrError(StatusCode::BAD_REQUEST, m.into())
}

fn internal(m: impl Into<String>) -> SkrError {
    SkrError(StatusCode::INTERNAL_SERVER_ERROR, m.into())
}

/// Serve on 127.0.0.1:`port` (blocks; run it on its own thread).
pub fn serve(skr: Skr, port: u16) -> Result<(), SkrSetupError> {
    let io = |source| SkrSetupError::Io { port, source };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(io)?;
        let app = Router::new()
            .route(
                "/status",
                get(|| async { Json(json!({"message": "Status OK"})) }),
            )
            .route("/attest/raw", post(attest_raw))
            .route("/attest/maa", post(attest_maa))
            .route("/key/release", post(key_release))
            .with_state(Arc::new(skr));
        axum::serve(listener, app).await.map_err(io)
    })
}

/// A report whose REPORT_DATA is SHA-256(runtime data) (as Azure's SKR sidecar binds it).
fn report_for(
    sp: &Arc<dyn SecureProcessor>,
    runtime: &[u8],
) -> Result<coffer_sp::Evidence, SkrError> {
    let mut rd = [0u8; 64];
    rd[..32].copy_from_slice(&openssl::sha::sha256(runtime));
    sp.report(&rd).map_err(|e| internal(e.to_string()))
}

#[derive(Deserialize)]
struct RawReq {
    runtime_data: String,
}

async fn attest_raw(
    State(s): State<Arc<Skr>>,
    Json(r): Json<RawReq>,
) -> Result<Json<Value>, SkrError> {
    let runtime = coffer_release::decode_b64(&r.runtime_data)
        .ok_or_else(|| bad("runtime_data is not base64"))?;
    let ev = tokio::task::spawn_blocking(move || report_for(&s.sp, &runtime))
        .await
        .map_err(|e| internal(e.to_string()))??;
    Ok(Json(json!({"report": hex::encode(ev.report)})))
}

#[derive(Deserialize)]
struct MaaReq {
    maa_endpoint: String,
    runtime_data: String,
}

async fn attest_maa(
    State(s): State<Arc<Skr>>,
    Json(r): Json<MaaReq>,
) -> Result<Json<Value>, SkrError> {
    let runtime = coffer_release::decode_b64(&r.runtime_data)
        .ok_or_else(|| bad("runtime_data is not base64"))?;
    let broker = allowed(&s, &r.maa_endpoint, None)?;
    let token =
        tokio::task::spawn_blocking(move || maa_token(&s.sp, &s.egress, &broker.maa, &runtime))
            .await
            .map_err(|e| internal(e.to_string()))??;
    Ok(Json(json!({"token": token})))
}

#[derive(Deserialize)]
struct ReleaseReq {
    maa_endpoint: String,
    akv_endpoint: String,
    kid: String,
    #[serde(default)]
    access_token: Option<String>,
}

async fn key_release(
    State(s): State<Arc<Skr>>,
    Json(r): Json<ReleaseReq>,
) -> Result<Json<Value>, SkrError> {
    let broker = allowed(&s, &r.maa_endpoint, Some(&r.akv_endpoint))?;
    let key = tokio::task::spawn_blocking(move || {
        release(&s.sp, &s.egress, &broker, &r.kid, r.access_token.as_deref())
    })
    .await
    .map_err(|e| internal(e.to_string()))??;
    Ok(Json(json!({"key": key})))
}

/// The policy's broker, if the request names its endpoints (a container cannot send the group's
/// evidence or key requests anywhere else).
fn allowed(s: &Skr, maa: &str, akv: Option<&str>) -> Result<Broker, SkrError> {
    let forbidden = |m: String| SkrError(StatusCode::FORBIDDEN, m);
    let b = s.broker.clone().ok_or_else(|| {
        forbidden("the policy names no attestation service or key broker for the SKR API".into())
    })?;
    let maa = Endpoint::parse(maa).map_err(|e| bad(e.to_string()))?;
    if maa != b.maa {
        return Err(forbidden(format!(
            "maa_endpoint {maa} is not the one the policy allows ({})",
            b.maa
        )));
    }
    if let Some(akv) = akv {
        let akv = Endpoint::parse(akv).map_err(|e| bad(e.to_string()))?;
        if akv != b.akv {
            return Err(forbidden(format!(
                "akv_endpoint {akv} is not the one the policy allows ({})",
                b.akv
            )));
        }
    }
    Ok(b)
}

/// Largest answer read from the attestation service (a token with a certificate chain).
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

/// Attest at the MAA-compatible endpoint; returns the token.
fn maa_token(
    sp: &Arc<dyn SecureProcessor>,
    egress: &Path,
    endpoint: &Endpoint,
    runtime: &[u8],
) -> Result<String, SkrError> {
    let ev = report_for(sp, runtime)?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE.encode(b);
    let chain = ev
        .cert_chain
        .ok_or_else(|| internal("the secure processor gave no certificate chain"))?;
    let evidence = json!({"SnpReport": b64(&ev.report), "VcekCertChain": b64(chain.as_bytes())});
    let body = json!({"report": b64(evidence.to_string().as_bytes()), "runtimeData": {"data": b64(runtime), "dataType": "JSON"}});
    let (status, v) = http_post(
        egress,
        endpoint,
        "/attest/SevSnpVM?api-version=2020-10-01",
        &body,
        None,
        MAX_TOKEN_RESPONSE,
    )?;
    if status != 200 {
        return Err(SkrError(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            format!("attestation failed: {v}"),
        ));
    }
    v["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| internal("attestation service returned no token"))
}

/// Release key `kid` to this TEE from the policy's broker: fresh RSA key, attestation, release,
/// signature and binding check, unwrap. Returns the key as a JWK (JSON text), or an HTTP status
/// and the reason.
pub fn release_jwk(
    sp: &Arc<dyn SecureProcessor>,
    egress: &Path,
    broker: &Broker,
    kid: &str,
) -> Result<String, (u16, String)> {
    release(sp, egress, broker, kid, None).map_err(|e| (e.0.as_u16(), e.1))
}

/// The `jti` claim of a token, read without checking it (the broker checks the token; the TEE
/// only needs to know which token its answer must name).
fn token_jti(token: &str) -> String {
    token
        .split('.')
        .nth(1)
        .and_then(coffer_release::decode_b64)
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["jti"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn release(
    sp: &Arc<dyn SecureProcessor>,
    egress: &Path,
    broker: &Broker,
    kid: &str,
    access_token: Option<&str>,
) -> Result<String, SkrError> {
    use josekit::jwk::KeyPair as _;
    if kid.is_empty()
        || kid.len() > 127
        || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(bad("kid must be a key name"));
    }
    let pair =
        josekit::jwk::alg::rsa::RsaKeyPair::generate(2048).map_err(|e| internal(e.to_string()))?;
    let mut public = pair.to_jwk_public_key();
    public.set_key_operations(vec!["encrypt"]);
    let component = |k: &str| {
        public
            .parameter(k)
            .and_then(Value::as_str)
            .and_then(coffer_release::decode_b64)
            .ok_or_else(|| internal("the fresh wrapping key has no modulus"))
    };
    let wrapping_key = coffer_release::rsa_thumbprint(&component("n")?, &component("e")?);
    let runtime = json!({"keys": [Value::Object(public.as_ref().clone())]}).to_string();
    let token = maa_token(sp, egress, &broker.maa, runtime.as_bytes())?;
    let mut nonce = [0u8; 16];
    openssl::rand::rand_bytes(&mut nonce).map_err(|e| internal(e.to_string()))?;
    let nonce = hex::encode(nonce);
    let (status, v) = http_post(
        egress,
        &broker.akv,
        &format!("/keys/{kid}/release?api-version=7.4"),
        &json!({"target": token, "nonce": nonce}),
        access_token,
        coffer_release::MAX_RESPONSE,
    )?;
    if status != 200 {
        let why = v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        let code = if status == 403 {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY)
        };
        return Err(SkrError(code, format!("key release refused: {why}")));
    }
    let signed = v["value"].as_str().ok_or_else(|| {
        SkrError(
            StatusCode::BAD_GATEWAY,
            "key broker returned no value".into(),
        )
    })?;
    let jti = token_jti(&token);
    let expect = coffer_release::Expected {
        key: kid,
        nonce: &nonce,
        jti: &jti,
        wrapping_key: &wrapping_key,
    };
    let jwe = coffer_release::verify(signed, &broker.signing_key, &expect).map_err(|e| {
        SkrError(
            StatusCode::BAD_GATEWAY,
            format!("refusing the key broker's answer: {e}"),
        )
    })?;
    let decrypter = josekit::jwe::RSA_OAEP_256
        .decrypter_from_jwk(&pair.to_jwk_private_key())
        .map_err(|e| internal(e.to_string()))?;
    let (plain, _) = josekit::jwe::deserialize_compact(&jwe, &decrypter)
        .map_err(|e| internal(format!("unwrapping the key: {e}")))?;
    String::from_utf8(plain).map_err(|_| internal("released key is not UTF-8 JSON"))
}

/// HTTP/1.1 POST through the egress relay (plain HTTP: the answers that matter are signed).
/// Everything read is bounded: the relay may answer anything.
fn http_post(
    egress: &Path,
    endpoint: &Endpoint,
    path: &str,
    body: &Value,
    bearer: Option<&str>,
    limit: usize,
) -> Result<(u16, Value), SkrError> {
    let hostport = endpoint.host_port();
    if let Some(t) = bearer {
        if t.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(bad("access_token contains spaces or control characters"));
        }
    }
    let mut conn =
        UnixStream::connect(egress).map_err(|e| internal(format!("egress relay: {e}")))?;
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(60)));
    conn.write_all(format!("CONNECT {hostport}\n").as_bytes())
        .map_err(|e| internal(e.to_string()))?;
    let payload = body.to_string();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{payload}",
        payload.len()
    );
    conn.write_all(req.as_bytes())
        .map_err(|e| internal(e.to_string()))?;
    let response = coffer_encfs::source::read_response(BufReader::new(conn), limit)
        .map_err(|e| SkrError(StatusCode::BAD_GATEWAY, format!("{hostport}: {e}")))?;
    let (status, bytes) = (response.status, response.body);
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, v))
}
