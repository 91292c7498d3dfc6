//! `coffer serve`: the attestation service (MAA-compatible `attest/SevSnpVM`, `attest/SgxEnclave`,
//! `attest/TdxVm`, OpenID metadata, JWKS) and the key broker (admin API, secure key release, audit) over HTTP, in one process.
//!
//! Authorisation is a property of the route: every admin route sits behind one bearer-token layer.
//! Errors become `{"error":{"code","message"}}` in one place ([`ApiError`]).
//!
//! The network is hostile: bodies are bounded per route, every request has a deadline, open
//! connections are capped and must send their headers in time ([`Limits`]), and the CPU queue
//! refuses work it cannot start soon (503 with `Retry-After`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cpu;
pub mod dcap;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_dcap;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use coffer_attest::{
    AttestError, AttestRequest, AttestationService, QuoteRequest, ReferenceValues, TokenSigner,
};
use coffer_kbs::{Authority, KeyKind, ReleasePolicy, Store, StoreError, Trust};
use serde::Deserialize;
use serde_json::{json, Value};

/// How the server is set up.
pub struct ServerConfig {
    /// State directory (token key, admin token, database, master key).
    pub dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Issuer URL; default `http://<bound address>`.
    pub issuer: Option<String>,
    /// Roots for evidence (AMD, plus the development root if known).
    pub roots: coffer_snp::Roots,
    /// Accept emulated evidence and tokens.
    pub allow_emulated: bool,
    /// Reference values for appraisal.
    pub reference: Option<ReferenceValues>,
    /// External token issuers: (issuer, JWKS).
    pub trusted_issuers: Vec<(String, Value)>,
    /// Token lifetime in seconds.
    pub token_lifetime: u64,
    /// Fixed clock (tests only): Unix seconds.
    pub now: Option<u64>,
    /// Intel SGX/TDX attestation (collateral directory); `None`: those routes answer
    /// `not-configured`.
    pub dcap: Option<dcap::DcapConfig>,
    /// Limits on connections, requests and queued work.
    pub limits: Limits,
}

/// Limits on what clients can hold or queue. [`Limits::default`] is what `coffer serve` uses.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections at most; further clients wait in the listen backlog.
    pub max_connections: u32,
    /// Deadline of a request from its headers to its response (body read and work included).
    pub request_timeout: Duration,
    /// Time a connection has to send a request's headers, also the keep-alive idle time (slowloris).
    pub header_read_timeout: Duration,
    /// Threads for CPU work; 0: one per core.
    pub cpu_threads: usize,
    /// CPU jobs waiting for a thread at most; 0: 256 per thread. Beyond, 503 at once.
    pub cpu_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            cpu_threads: 0,
            cpu_queue: 0,
        }
    }
}

/// Largest `attest` body: a report and its certificate chain, base64 twice, are ~15 KiB.
pub const ATTEST_BODY_LIMIT: usize = 1 << 20;
/// Largest body of a release or an admin request (a token, a policy, an imported RSA JWK).
pub const SMALL_BODY_LIMIT: usize = 64 << 10;

/// Shared state of the handlers.
pub struct AppState {
    attest: AttestationService,
    broker: coffer_release::BrokerSigner,
    store: Store,
    trust: Trust,
    admin_token_hash: [u8; 32],
    allow_emulated: bool,
    now: Option<u64>,
    /// Where attest and release do their CPU work.
    cpu: cpu::CpuPool,
    /// The DCAP collateral directory, when configured.
    dcap: Option<Arc<dcap::CollateralDir>>,
}

impl AppState {
    fn now(&self) -> u64 {
        self.now.unwrap_or_else(coffer_snp::time::now)
    }
}

/// Run `f` (file I/O: SQLite commits, key generation) on the blocking pool. CPU work goes to
/// [`cpu::CpuPool`] instead.
async fn blocking<T: Send + 'static>(
    s: &Arc<AppState>,
    what: &'static str,
    f: impl FnOnce(&AppState) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let st = s.clone();
    tokio::task::spawn_blocking(move || f(&st))
        .await
        .map_err(|_| internal(what))
}

fn internal(what: &'static str) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", what)
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds, for `Retry-After` (503s a client should retry).
    retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 503 with `Retry-After: 1`.
    fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<cpu::CpuError> for ApiError {
    fn from(e: cpu::CpuError) -> Self {
        match e {
            cpu::CpuError::Busy => ApiError::unavailable(
                "busy",
                "the server is at capacity; retry after the delay in Retry-After",
            ),
            cpu::CpuError::Failed => internal("task failed"),
        }
    }
}

/// A request body, read within the route's [`DefaultBodyLimit`]; too large is 413 in the JSON
/// error shape.
struct Body(axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|e| {
                let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    "too-large"
                } else {
                    "bad-request"
                };
                ApiError::new(e.status(), code, e.body_text())
            })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not-found", e.to_string())
            }
            StoreError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "exists", e.to_string()),
            StoreError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.to_string())
            }
            // Internals are not for clients: the message stays generic.
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error in the key store",
            ),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A file or directory of the state could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The admin token file is not UTF-8.
    #[error("{}: the admin token is not text", path.display())]
    AdminTokenNotText {
        /// The file.
        path: PathBuf,
    },
    /// The admin token file is empty (an empty bearer token would be let in).
    #[error("{}: the admin token is empty; write a token into it, or delete it to have one generated", path.display())]
    AdminTokenEmpty {
        /// The file.
        path: PathBuf,
    },
    /// Randomness or key generation failed.
    #[error("crypto backend: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    /// The token signing key is unusable.
    #[error(transparent)]
    TokenSigner(#[from] coffer_attest::SigningError),
    /// The broker's release-signing key is unusable.
    #[error("{}: {source}", path.display())]
    BrokerKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: coffer_release::ReleaseError,
    },
    /// A trusted issuer's JWKS is unusable.
    #[error("--trust-issuer {issuer}: {source}")]
    TrustIssuer {
        /// The issuer.
        issuer: String,
        /// Why.
        source: coffer_kbs::JwksError,
    },
    /// The DCAP collateral directory could not be loaded.
    #[error("--dcap-collateral: {0}")]
    DcapCollateral(#[from] dcap::CollateralLoadError),
    /// The key store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The worker threads could not be started.
    #[error("cannot start worker threads: {0}")]
    Workers(#[source] std::io::Error),
}

fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |source| StartError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_or_create(
    path: &std::path::Path,
    make: impl FnOnce() -> Result<Vec<u8>, StartError>,
) -> Result<Vec<u8>, StartError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = make()?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io_err(path))?;
            f.write_all(&bytes)
                .and_then(|_| f.sync_all())
                .map_err(io_err(path))?;
            Ok(bytes)
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Path of the admin token file under the state directory.
pub fn admin_token_path(dir: &std::path::Path) -> PathBuf {
    dir.join("admin-token")
}

/// Path of the broker's release-signing key under the state directory.
pub fn broker_key_path(dir: &std::path::Path) -> PathBuf {
    dir.join("broker-signing-key.pem")
}

impl AppState {
    /// RFC 7638 thumbprint of the key that signs release responses: what policies pin.
    pub fn broker_thumbprint(&self) -> &str {
        self.broker.thumbprint()
    }

    /// The DCAP collateral sets, one line each, when configured.
    pub fn dcap_collateral(&self) -> Option<Vec<String>> {
        self.dcap.as_ref().map(|d| d.describe())
    }
}

/// Build the state: creates keys and token files on first start.
pub fn build_state(cfg: &ServerConfig, issuer: &str) -> Result<Arc<AppState>, StartError> {
    std::fs::create_dir_all(&cfg.dir).map_err(io_err(&cfg.dir))?;
    let admin = read_or_create(&admin_token_path(&cfg.dir), || {
        let mut b = [0u8; 32];
        openssl::rand::rand_bytes(&mut b)?;
        Ok(hex::encode(b).into_bytes())
    })?;
    let admin_path = admin_token_path(&cfg.dir);
    let admin = String::from_utf8(admin).map_err(|_| StartError::AdminTokenNotText {
        path: admin_path.clone(),
    })?;
    // An empty token would let an empty (or absent) bearer token in.
    if admin.trim().is_empty() {
        return Err(StartError::AdminTokenEmpty { path: admin_path });
    }
    let signing = read_or_create(&cfg.dir.join("token-signing-key.pem"), || {
        Ok(TokenSigner::generate_pem()?)
    })?;
    let signer = TokenSigner::from_pem(&signing, issuer, cfg.token_lifetime)?;
    let broker_path = broker_key_path(&cfg.dir);
    let broker_err = |source| StartError::BrokerKey {
        path: broker_path.clone(),
        source,
    };
    let broker = read_or_create(&broker_path, || {
        coffer_release::BrokerSigner::generate_pem().map_err(broker_err)
    })?;
    let broker = coffer_release::BrokerSigner::from_pem(&broker).map_err(broker_err)?;
    let mut trust = Trust::default();
    for (iss, jwks) in std::iter::once((issuer, &signer.jwks()))
        .chain(cfg.trusted_issuers.iter().map(|(i, j)| (i.as_str(), j)))
    {
        trust.add(
            Authority::from_jwks(iss, jwks).map_err(|source| StartError::TrustIssuer {
                issuer: iss.to_string(),
                source,
            })?,
        );
    }
    let verifier = coffer_snp::Verifier::new(cfg.roots.clone(), cfg.allow_emulated);
    let mut attest = AttestationService::new(verifier, cfg.reference.clone(), signer);
    let dcap = match &cfg.dcap {
        Some(d) => {
            let dir = Arc::new(dcap::CollateralDir::open(&d.collateral, d.refresh)?);
            attest = attest.with_dcap(coffer_dcap::Verifier::new(d.roots.clone()), dir.clone());
            Some(dir)
        }
        None => None,
    };
    let store = Store::open(&cfg.dir.join("kbs.sqlite"), &cfg.dir.join("master.key"))?;
    Ok(Arc::new(AppState {
        attest,
        broker,
        store,
        trust,
        admin_token_hash: openssl::sha::sha256(admin.trim().as_bytes()),
        allow_emulated: cfg.allow_emulated,
        now: cfg.now,
        cpu: cpu_pool(&cfg.limits)?,
        dcap,
    }))
}

fn cpu_pool(limits: &Limits) -> Result<cpu::CpuPool, StartError> {
    let threads = match limits.cpu_threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let pending = match limits.cpu_queue {
        0 => threads.saturating_mul(256),
        n => n,
    };
    cpu::CpuPool::new(threads, pending).map_err(StartError::Workers)
}

/// The router, for tests and embedding. Every request has `request_timeout` to be answered.
pub fn app(state: Arc<AppState>, request_timeout: Duration) -> Router {
    let admin = Router::new()
        .route("/keys", post(create_key).get(list_keys))
        .route("/keys/{name}", get(show_key).delete(delete_key))
        .route("/keys/{name}/policy", put(set_policy))
        .route("/audit", get(audit))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let attest_routes = Router::new()
        .route("/attest/SevSnpVM", post(attest))
        .route("/attest/SevSnpVm", post(attest))
        .route("/attest/SgxEnclave", post(attest_sgx))
        .route("/attest/TdxVm", post(attest_tdx))
        .layer(DefaultBodyLimit::max(ATTEST_BODY_LIMIT));
    let small = Router::new()
        .route("/.well-known/openid-configuration", get(openid))
        .route("/certs", get(certs))
        .route("/broker-key", get(broker_key))
        .route("/keys/{name}/release", post(release))
        .merge(admin)
        .layer(DefaultBodyLimit::max(SMALL_BODY_LIMIT));
    Router::new()
        .merge(attest_routes)
        .merge(small)
        .with_state(state)
        .layer(middleware::from_fn_with_state(request_timeout, deadline))
}

/// Answer 503 when the request is not done by its deadline. Dropping the handler cancels it at
/// its next await; CPU work not yet started is skipped (see [`cpu`]).
async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::unavailable(
            "timeout",
            format!("the request was not done within {} s", limit.as_secs()),
        )
        .into_response(),
    }
}

/// A running server.
pub struct Running {
    /// Bound address.
    pub addr: SocketAddr,
    /// Issuer URL.
    pub issuer: String,
    /// Thumbprint of the release-signing key (what policies pin).
    pub broker_key: String,
    /// The DCAP collateral sets found at start, one line each (`None`: not configured).
    pub dcap_collateral: Option<Vec<String>>,
    /// Stops the server when sent (or dropped).
    pub shutdown: tokio::sync::oneshot::Sender<()>,
    /// The server task.
    pub task: tokio::task::JoinHandle<Result<(), std::io::Error>>,
}

/// Bind and start serving in the current runtime.
pub async fn start(cfg: ServerConfig) -> Result<Running, StartError> {
    let listen_err = |source| StartError::Listen {
        addr: cfg.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(listen_err)?;
    let addr = listener.local_addr().map_err(listen_err)?;
    let issuer = cfg
        .issuer
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let state = build_state(&cfg, &issuer)?;
    let broker_key = state.broker_thumbprint().to_string();
    let dcap_collateral = state.dcap_collateral();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let router = app(state, cfg.limits.request_timeout);
    let task = tokio::spawn(serve_connections(listener, router, cfg.limits.clone(), rx));
    Ok(Running {
        addr,
        issuer,
        broker_key,
        dcap_collateral,
        shutdown: tx,
        task,
    })
}

/// Accept connections (at most `max_connections` open) and serve HTTP/1 on each until `stop` fires
/// or its sender is dropped; then stop accepting, let open connections finish their request, and
/// return once all are closed.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), std::io::Error> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let max = limits.max_connections.max(1);
    let open = Arc::new(tokio::sync::Semaphore::new(max as usize));
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(());
    let service = hyper_util::service::TowerToHyperService::new(router);
    loop {
        // A permit per open connection: at the limit, new clients wait in the kernel's backlog.
        let permit = tokio::select! {
            p = open.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
            _ = &mut stop => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionRefused
                    ) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let service = service.clone();
        let mut closing = closing_rx.clone();
        let header_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = closing.changed() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = closing_tx.send(());
    // Each connection holds a permit until it closes.
    let _ = open.acquire_many(max).await;
    Ok(())
}

async fn require_admin(
    State(s): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim();
    // Compare digests in constant time: the token never meets a short-circuiting comparison. An
    // empty token is never one (whatever the state holds).
    let ok = !given.is_empty()
        && openssl::memcmp::eq(&openssl::sha::sha256(given.as_bytes()), &s.admin_token_hash);
    if !ok {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin API: missing or wrong bearer token",
        ));
    }
    Ok(next.run(req).await)
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("invalid JSON body: {e}"),
        )
    })
}

async fn attest(State(s): State<Arc<AppState>>, Body(body): Body) -> Result<Json<Value>, ApiError> {
    let req: AttestRequest = json_body(&body)?;
    let st = s.clone();
    let result = s
        .cpu
        .run(move || st.attest.attest_snp(&req, st.now()))
        .await?;
    token_response(result)
}

async fn attest_sgx(
    State(s): State<Arc<AppState>>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    attest_quote(s, coffer_dcap::Tee::Sgx, &body).await
}

async fn attest_tdx(
    State(s): State<Arc<AppState>>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    attest_quote(s, coffer_dcap::Tee::Tdx, &body).await
}

async fn attest_quote(
    s: Arc<AppState>,
    tee: coffer_dcap::Tee,
    body: &[u8],
) -> Result<Json<Value>, ApiError> {
    let req: QuoteRequest = json_body(body)?;
    let st = s.clone();
    let result = s
        .cpu
        .run(move || st.attest.attest_dcap(tee, &req, st.now()))
        .await?;
    token_response(result)
}

/// `{"token"}`, or the attestation error: 400 with its code; 501 when the server was started
/// without what the route needs; internals stay generic.
fn token_response(result: Result<String, AttestError>) -> Result<Json<Value>, ApiError> {
    match result {
        Ok(token) => Ok(Json(json!({ "token": token }))),
        Err(AttestError::Signing(_)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "token signing failed",
        )),
        Err(e @ AttestError::NotConfigured) => Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            e.code(),
            e.to_string(),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            e.code(),
            e.to_string(),
        )),
    }
}

async fn openid(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(s.attest.signer().openid_configuration())
}

async fn certs(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(s.attest.signer().jwks())
}

/// The public key that signs release responses, and its thumbprint (what a policy pins).
async fn broker_key(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"jwk": s.broker.public_jwk(), "thumbprint": s.broker.thumbprint()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    #[serde(default = "default_kty")]
    kty: String,
    #[serde(default)]
    key_size: Option<u32>,
    /// Import: base64url key bytes (oct-HSM).
    #[serde(default)]
    k: Option<String>,
    /// Import: private RSA JWK (RSA-HSM).
    #[serde(default)]
    jwk: Option<Value>,
    #[serde(default)]
    release_policy: Option<Value>,
}

fn default_kty() -> String {
    "oct-HSM".into()
}

/// A policy as a JSON object, or Key Vault's envelope `{"contentType","data": base64url(JSON)}`.
fn parse_policy(v: &Value) -> Result<ReleasePolicy, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid-policy", m);
    let doc = match v.get("data").and_then(Value::as_str) {
        Some(data) if v.get("version").is_none() => {
            let bytes = coffer_attest::decode_b64(data)
                .ok_or_else(|| bad("release_policy.data is not base64".into()))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| bad(format!("release_policy.data is not JSON: {e}")))?
        }
        _ => v.clone(),
    };
    ReleasePolicy::parse(&doc).map_err(|e| bad(e.to_string()))
}

async fn create_key(
    State(s): State<Arc<AppState>>,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: CreateKey = json_body(&body)?;
    let kind = KeyKind::parse(&req.kty)?;
    let policy = req.release_policy.as_ref().map(parse_policy).transpose()?;
    let material = match (&req.k, &req.jwk) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                "give k or jwk, not both",
            ))
        }
        (Some(k), None) => Some(coffer_attest::decode_b64(k).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid", "k is not base64url")
        })?),
        (None, Some(j)) => {
            let jwk = josekit::jwk::Jwk::from_map(j.as_object().cloned().unwrap_or_default())
                .map_err(|e| {
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("jwk: {e}"))
                })?;
            let pair = josekit::jwk::alg::rsa::RsaKeyPair::from_jwk(&jwk).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("jwk is not a private RSA key: {e}"),
                )
            })?;
            Some(pair.to_der_private_key())
        }
        (None, None) => None,
    };
    let now = s.now();
    let info = blocking(&s, "key creation task failed", move |st| {
        let info = st.store.create(
            &req.name,
            kind,
            req.key_size,
            material,
            policy.as_ref(),
            now,
        )?;
        st.store.audit(
            now,
            &info.name,
            "create",
            true,
            None,
            &format!("{} {} bits", info.kty, info.key_size),
        )?;
        Ok::<_, StoreError>(info)
    })
    .await??;
    Ok((StatusCode::CREATED, Json(json!(info))))
}

async fn list_keys(State(s): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "keys": s.store.list()? })))
}

async fn show_key(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.store.get(&name)?)))
}

async fn delete_key(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let now = s.now();
    blocking(&s, "key deletion task failed", move |st| {
        st.store.delete(&name)?;
        st.store.audit(now, &name, "delete", true, None, "deleted")
    })
    .await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_policy(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let v: Value = json_body(&body)?;
    let policy = parse_policy(&v)?;
    let now = s.now();
    let info = blocking(&s, "policy task failed", move |st| {
        st.store.set_policy(&name, &policy)?;
        st.store
            .audit(now, &name, "policy", true, None, "release policy set")?;
        st.store.get(&name)
    })
    .await??;
    Ok(Json(json!(info)))
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
}

async fn audit(
    State(s): State<Arc<AppState>>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({ "entries": s.store.audit_log(q.limit.unwrap_or(100).min(10_000))? }),
    ))
}

#[derive(Deserialize)]
struct ReleaseRequest {
    target: String,
    /// Echoed in the signed response, binding it to this request (as Key Vault's `nonce`).
    #[serde(default)]
    nonce: String,
}

/// Longest nonce a release request may carry.
const MAX_NONCE: usize = 256;

async fn release(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let req: ReleaseRequest = json_body(&body)?;
    if req.nonce.len() > MAX_NONCE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("nonce longer than {MAX_NONCE} bytes"),
        ));
    }
    let (st, n) = (s.clone(), name.clone());
    let decision = s
        .cpu
        .run(move || decide_release(&st, &n, &req.target, &req.nonce))
        .await??;
    // The audit row is durable before the answer leaves.
    let audit = match &decision {
        Release::Granted { issuer, .. } => Some((true, Some(issuer.clone()), "released".into())),
        Release::Denied {
            issuer,
            why,
            audited: true,
            ..
        } => Some((false, issuer.clone(), why.clone())),
        Release::Denied { audited: false, .. } => None,
    };
    if let Some((granted, issuer, detail)) = audit {
        let now = s.now();
        blocking(&s, "audit task failed", move |st| {
            st.store
                .audit(now, &name, "release", granted, issuer.as_deref(), &detail)
        })
        .await??;
    }
    match decision {
        Release::Granted { jws, .. } => Ok(Json(json!({ "value": jws }))),
        Release::Denied { code, why, .. } => Err(ApiError::new(StatusCode::FORBIDDEN, code, why)),
    }
}

/// What a release request decided, before it is audited.
enum Release {
    Granted {
        issuer: String,
        /// The signed release response (JWS over the wrapped key and its binding).
        jws: String,
    },
    Denied {
        issuer: Option<String>,
        code: &'static str,
        why: String,
        /// False for a bad token naming a key that does not exist: who sends it chooses the name.
        audited: bool,
    },
}

/// Decide a release (CPU work only). `Err` is for requests that decide nothing (unknown key with a
/// valid token, store failure); those are not audited.
fn decide_release(s: &AppState, name: &str, token: &str, nonce: &str) -> Result<Release, ApiError> {
    let now = s.now();
    let deny = |issuer: Option<&str>, code: &'static str, why: String| Release::Denied {
        issuer: issuer.map(str::to_string),
        code,
        why,
        audited: true,
    };
    let key = match s.store.material(name) {
        Ok(m) => Some(m),
        Err(StoreError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let (issuer, claims) = match s.trust.verify(token, now) {
        Ok(v) => v,
        // Known key or not, the same answer: no oracle of key names without a valid token.
        Err(e) => {
            return Ok(Release::Denied {
                issuer: None,
                code: "token",
                why: e.to_string(),
                audited: key.is_some(),
            })
        }
    };
    let Some((kind, material, policy)) = key else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no key named '{name}'"),
        ));
    };
    if claims.get("x-coffer-tee").and_then(Value::as_str) == Some("emulated-snp")
        && !s.allow_emulated
    {
        return Ok(deny(
            Some(&issuer),
            "emulated",
            "the token attests emulated evidence and this server runs without --allow-emulated"
                .into(),
        ));
    }
    let Some(policy) = policy else {
        return Ok(deny(
            Some(&issuer),
            "no-policy",
            format!("key '{name}' has no release policy"),
        ));
    };
    if let Err(why) = policy.evaluate(&issuer, &claims) {
        return Ok(deny(
            Some(&issuer),
            "policy",
            format!("release policy not satisfied: {why}"),
        ));
    }
    let jwk = match coffer_kbs::key_jwk(kind, &material, name) {
        Ok(jwk) => jwk,
        Err(e) => return Ok(deny(Some(&issuer), "internal", e.to_string())),
    };
    let wrapped = match coffer_kbs::wrap_for_token(&claims, &jwk) {
        Ok(w) => w,
        Err(e) => return Ok(deny(Some(&issuer), "wrapping-key", e.to_string())),
    };
    let payload = coffer_release::ReleasePayload {
        key: name.to_string(),
        nonce: nonce.to_string(),
        jti: claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        wrapping_key: wrapped.wrapping_key,
        iat: now,
        value: wrapped.jwe,
    };
    Ok(match s.broker.sign(&payload) {
        Ok(jws) => Release::Granted { issuer, jws },
        Err(e) => deny(Some(&issuer), "internal", e.to_string()),
    })
}
