//! The secure key release API inside the group, on `127.0.0.1:<port>` of the sandbox's network
//! namespace (so only the group's containers reach it), with the routes and bodies of Azure's SKR
//! sidecar: `GET /status`, `POST /attest/raw`, `POST /attest/maa`, `POST /key/release`.
//!
//! The sandbox has no network of its own; calls to the attestation service and key broker leave
//! through the launcher's egress relay (a Unix socket in the I/O directory). The host sees only
//! what it could see anyway: the token and the JWE, which is wrapped to a key that never leaves
//! the TEE. Each release uses a fresh RSA-2048 key.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::sp::SecureProcessor;

/// What the SKR server needs.
pub struct Skr {
    /// The secure processor.
    pub sp: Arc<dyn SecureProcessor>,
    /// The launcher's egress relay.
    pub egress: PathBuf,
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
pub fn serve(skr: Skr, port: u16) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("SKR API on 127.0.0.1:{port}: {e}"))?;
        let app = Router::new()
            .route(
                "/status",
                get(|| async { Json(json!({"message": "Status OK"})) }),
            )
            .route("/attest/raw", post(attest_raw))
            .route("/attest/maa", post(attest_maa))
            .route("/key/release", post(key_release))
            .with_state(Arc::new(skr));
        axum::serve(listener, app).await.map_err(|e| e.to_string())
    })
}

fn report_for(skr: &Skr, runtime: &[u8]) -> Result<crate::sp::Evidence, SkrError> {
    let mut rd = [0u8; 64];
    rd[..32].copy_from_slice(&openssl::sha::sha256(runtime));
    skr.sp.report(&rd).map_err(|e| internal(e.to_string()))
}

#[derive(Deserialize)]
struct RawReq {
    runtime_data: String,
}

async fn attest_raw(
    State(s): State<Arc<Skr>>,
    Json(r): Json<RawReq>,
) -> Result<Json<Value>, SkrError> {
    let runtime = coffer_attest::decode_b64(&r.runtime_data)
        .ok_or_else(|| bad("runtime_data is not base64"))?;
    let ev = tokio::task::spawn_blocking(move || report_for(&s, &runtime))
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
    let runtime = coffer_attest::decode_b64(&r.runtime_data)
        .ok_or_else(|| bad("runtime_data is not base64"))?;
    let token = tokio::task::spawn_blocking(move || maa_token(&s, &r.maa_endpoint, &runtime))
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
    let key = tokio::task::spawn_blocking(move || release(&s, &r))
        .await
        .map_err(|e| internal(e.to_string()))??;
    Ok(Json(json!({"key": key})))
}

/// Attest at the MAA-compatible endpoint; returns the token.
fn maa_token(s: &Skr, endpoint: &str, runtime: &[u8]) -> Result<String, SkrError> {
    let ev = report_for(s, runtime)?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE.encode(b);
    let chain = ev
        .cert_chain
        .ok_or_else(|| internal("the secure processor gave no certificate chain"))?;
    let evidence = json!({"SnpReport": b64(&ev.report), "VcekCertChain": b64(chain.as_bytes())});
    let body = json!({"report": b64(evidence.to_string().as_bytes()), "runtimeData": {"data": b64(runtime), "dataType": "JSON"}});
    let (status, v) = http_post(
        &s.egress,
        endpoint,
        "/attest/SevSnpVM?api-version=2020-10-01",
        &body,
        None,
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

/// Release key `kid` to this TEE: fresh RSA key, attestation, release, unwrap. Returns the key
/// as a JWK (JSON text), or an HTTP status and the reason.
pub fn release_jwk(
    s: &Skr,
    maa: &str,
    akv: &str,
    kid: &str,
    access_token: Option<&str>,
) -> Result<String, (u16, String)> {
    let r = ReleaseReq {
        maa_endpoint: maa.into(),
        akv_endpoint: akv.into(),
        kid: kid.into(),
        access_token: access_token.map(str::to_string),
    };
    release(s, &r).map_err(|e| (e.0.as_u16(), e.1))
}

fn release(s: &Skr, r: &ReleaseReq) -> Result<String, SkrError> {
    use josekit::jwk::KeyPair as _;
    if r.kid.is_empty()
        || !r
            .kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(bad("kid must be a key name"));
    }
    let pair =
        josekit::jwk::alg::rsa::RsaKeyPair::generate(2048).map_err(|e| internal(e.to_string()))?;
    let mut public = pair.to_jwk_public_key();
    public.set_key_operations(vec!["encrypt"]);
    let runtime = json!({"keys": [Value::Object(public.as_ref().clone())]}).to_string();
    let token = maa_token(s, &r.maa_endpoint, runtime.as_bytes())?;
    let (status, v) = http_post(
        &s.egress,
        &r.akv_endpoint,
        &format!("/keys/{}/release?api-version=7.4", r.kid),
        &json!({"target": token}),
        r.access_token.as_deref(),
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
    let jwe = v["value"]
        .as_str()
        .ok_or_else(|| internal("key broker returned no value"))?;
    let decrypter = josekit::jwe::RSA_OAEP_256
        .decrypter_from_jwk(&pair.to_jwk_private_key())
        .map_err(|e| internal(e.to_string()))?;
    let (plain, _) = josekit::jwe::deserialize_compact(jwe, &decrypter)
        .map_err(|e| internal(format!("unwrapping the key: {e}")))?;
    String::from_utf8(plain).map_err(|_| internal("released key is not UTF-8 JSON"))
}

/// HTTP/1.1 POST through the egress relay (plain HTTP only; no TLS inside the emulated group).
fn http_post(
    egress: &std::path::Path,
    endpoint: &str,
    path: &str,
    body: &Value,
    bearer: Option<&str>,
) -> Result<(u16, Value), SkrError> {
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    if endpoint.starts_with("https://") {
        return Err(bad(
            "https endpoints are not reachable from the emulated group (use http:// on loopback)",
        ));
    }
    let mut conn =
        UnixStream::connect(egress).map_err(|e| internal(format!("egress relay: {e}")))?;
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
    let mut reader = BufReader::new(conn);
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .map_err(|e| internal(format!("reading from {hostport}: {e}")))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| internal(format!("{hostport}: not an HTTP response")))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    loop {
        let mut h = String::new();
        reader
            .read_line(&mut h)
            .map_err(|e| internal(e.to_string()))?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok();
        }
    }
    let mut bytes = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader
                .read_line(&mut size)
                .map_err(|e| internal(e.to_string()))?;
            let n = usize::from_str_radix(size.trim(), 16).map_err(|_| internal("bad chunk"))?;
            if n == 0 {
                break;
            }
            let mut chunk = vec![0u8; n + 2];
            reader
                .read_exact(&mut chunk)
                .map_err(|e| internal(e.to_string()))?;
            bytes.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        bytes.resize(n, 0);
        reader
            .read_exact(&mut bytes)
            .map_err(|e| internal(e.to_string()))?;
    } else {
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| internal(e.to_string()))?;
    }
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, v))
}
