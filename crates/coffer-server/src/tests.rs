//! The router and the accept loop against hostile clients: bounded bodies, queue and connections,
//! deadlines, admin tokens, appraisal defaults, malformed input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::body::Body as HttpBody;
use axum::http::{HeaderMap, Method};
use base64::Engine as _;
use coffer_snp_emu::{EmulatedSp, ReportRequest};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tower::ServiceExt as _;

use super::*;

pub(super) struct Fixture {
    dir: tempfile::TempDir,
    state: Arc<AppState>,
    router: Router,
}

/// One emulated secure processor for all tests (its RSA-4096 root takes seconds to make), copied
/// into each test's home.
fn emulator_into(home: &std::path::Path) {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    static SHARED: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        EmulatedSp::open_or_create(d.path()).unwrap();
        d
    });
    copy(
        &EmulatedSp::state_dir(shared.path()),
        &EmulatedSp::state_dir(home),
    );
}

pub(super) fn config(
    dir: &std::path::Path,
    limits: Limits,
    reference: Option<ReferenceValues>,
) -> ServerConfig {
    emulator_into(dir);
    let (ark, ask, asvk) = EmulatedSp::existing_root(dir).unwrap().unwrap();
    let roots = coffer_snp::Roots::amd()
        .unwrap()
        .with_emulated(ark, ask, asvk)
        .unwrap();
    ServerConfig {
        dir: dir.join("serve"),
        listen: "127.0.0.1:0".parse().unwrap(),
        issuer: None,
        roots,
        allow_emulated: true,
        reference,
        trusted_issuers: Vec::new(),
        token_lifetime: 3600,
        now: None,
        dcap: None,
        limits,
    }
}

fn fixture_with(limits: Limits, reference: Option<ReferenceValues>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let timeout = limits.request_timeout;
    let state = build_state(&config(dir.path(), limits, reference), "http://coffer.test").unwrap();
    let router = app(state.clone(), timeout);
    Fixture { dir, state, router }
}

pub(super) fn fixture() -> Fixture {
    fixture_with(Limits::default(), None)
}

impl Fixture {
    fn admin(&self) -> String {
        std::fs::read_to_string(admin_token_path(&self.dir.path().join("serve")))
            .unwrap()
            .trim()
            .to_string()
    }

    pub(super) async fn call(
        &self,
        method: Method,
        uri: &str,
        body: impl Into<Vec<u8>>,
        bearer: Option<&str>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(HttpBody::from(body.into())).unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, parts.headers, v)
    }

    /// An attest body with emulated evidence (no runtime data).
    fn attest_body(&self, vmpl: u32, policy: u64) -> Vec<u8> {
        let sp = EmulatedSp::open_or_create(self.dir.path()).unwrap();
        let made = sp
            .report(&ReportRequest {
                vmpl,
                policy,
                ..Default::default()
            })
            .unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE.encode(b);
        let evidence = json!({"SnpReport": b64(made.report.bytes()), "VcekCertChain": b64(made.chain_pem.as_bytes())});
        json!({"report": b64(evidence.to_string().as_bytes()), "nonce": 42})
            .to_string()
            .into_bytes()
    }

    async fn audit_entries(&self) -> Vec<Value> {
        let (st, _, v) = self
            .call(Method::GET, "/audit", "", Some(&self.admin()))
            .await;
        assert_eq!(st, StatusCode::OK);
        v["entries"].as_array().unwrap().clone()
    }

    /// Occupy the only CPU worker until the returned sender is dropped or sent to.
    async fn occupy_cpu(&self) -> std::sync::mpsc::Sender<()> {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let st = self.state.clone();
        tokio::spawn(async move {
            st.cpu
                .run(move || {
                    started_tx.send(()).unwrap();
                    let _ = release_rx.recv();
                })
                .await
        });
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        release_tx
    }
}

const DEFAULT_POLICY: u64 = 0x30000;
const DEBUG_POLICY: u64 = 0x30000 | 1 << 19;

#[tokio::test]
async fn emulated_evidence_gets_a_token() {
    let f = fixture();
    let (st, _, v) = f
        .call(
            Method::POST,
            "/attest/SevSnpVM",
            f.attest_body(0, DEFAULT_POLICY),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn debug_guest_is_refused_by_default() {
    let f = fixture();
    let (st, _, v) = f
        .call(
            Method::POST,
            "/attest/SevSnpVM",
            f.attest_body(0, DEBUG_POLICY),
            None,
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("debug-guest")),
        "{v}"
    );
}

#[tokio::test]
async fn debug_guest_is_accepted_when_allowed() {
    let rv = ReferenceValues {
        allow_debug: true,
        ..Default::default()
    };
    let f = fixture_with(Limits::default(), Some(rv));
    let (st, _, v) = f
        .call(
            Method::POST,
            "/attest/SevSnpVM",
            f.attest_body(0, DEBUG_POLICY),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn vmpl_other_than_0_is_refused_by_default() {
    let f = fixture();
    let (st, _, v) = f
        .call(
            Method::POST,
            "/attest/SevSnpVM",
            f.attest_body(2, DEFAULT_POLICY),
            None,
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("vmpl")),
        "{v}"
    );
}

#[tokio::test]
async fn vmpl_up_to_the_allowed_one_is_accepted() {
    let rv = ReferenceValues {
        max_vmpl: 2,
        ..Default::default()
    };
    let f = fixture_with(Limits::default(), Some(rv));
    let (st, _, v) = f
        .call(
            Method::POST,
            "/attest/SevSnpVM",
            f.attest_body(2, DEFAULT_POLICY),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, _, v) = f
        .call(
            Method::POST,
            "/attest/SevSnpVM",
            f.attest_body(3, DEFAULT_POLICY),
            None,
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("vmpl")),
        "{v}"
    );
}

/// Whoever sends a bad token chooses the key name: for a key that does not exist, nothing is
/// written; the answer is the same as for a key that exists.
#[tokio::test]
async fn bad_token_for_an_unknown_key_is_not_audited() {
    let f = fixture();
    let name = format!("no-such-key{}", "%0A".repeat(500));
    let uri = format!("/keys/{name}/release");
    let (st, _, v) = f
        .call(Method::POST, &uri, r#"{"target":"x.y.z"}"#, None)
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("token")),
        "{v}"
    );
    assert_eq!(f.audit_entries().await, Vec::<Value>::new());
}

#[tokio::test]
async fn bad_token_for_a_known_key_is_audited() {
    let f = fixture();
    let (st, _, _) = f
        .call(Method::POST, "/keys", r#"{"name":"k"}"#, Some(&f.admin()))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _, _) = f
        .call(
            Method::POST,
            "/keys/k/release",
            r#"{"target":"x.y.z"}"#,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let entries = f.audit_entries().await;
    let releases: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "release")
        .collect();
    assert_eq!(releases.len(), 1);
    assert_eq!(releases[0]["allowed"], false);
}

#[tokio::test]
async fn release_body_over_64_kib_is_413() {
    let f = fixture();
    let body = format!(r#"{{"target":"{}"}}"#, "a".repeat(SMALL_BODY_LIMIT));
    let (st, _, v) = f.call(Method::POST, "/keys/k/release", body, None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too-large")),
        "{v}"
    );
}

#[tokio::test]
async fn admin_body_over_64_kib_is_413() {
    let f = fixture();
    let body = format!(r#"{{"name":"{}"}}"#, "a".repeat(SMALL_BODY_LIMIT));
    let (st, _, v) = f.call(Method::POST, "/keys", body, Some(&f.admin())).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too-large")),
        "{v}"
    );
}

#[tokio::test]
async fn attest_body_over_1_mib_is_413() {
    let f = fixture();
    let body = format!(r#"{{"report":"{}"}}"#, "a".repeat(ATTEST_BODY_LIMIT));
    let (st, _, v) = f.call(Method::POST, "/attest/SevSnpVM", body, None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too-large")),
        "{v}"
    );
}

/// One thread, room for one queued job: with both taken, a request is refused at once with 503
/// and `Retry-After`.
#[tokio::test]
async fn full_cpu_queue_answers_503_with_retry_after() {
    let limits = Limits {
        cpu_threads: 1,
        cpu_queue: 1,
        ..Limits::default()
    };
    let f = fixture_with(limits, None);
    let release = f.occupy_cpu().await;
    let st = f.state.clone();
    let mut queued = std::pin::pin!(st.cpu.run(|| ()));
    tokio::select! { biased; _ = &mut queued => unreachable!(), _ = async {} => {} }
    let body = f.attest_body(0, DEFAULT_POLICY);
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        f.call(Method::POST, "/attest/SevSnpVM", body, None),
    )
    .await
    .expect("a full queue answers at once");
    let (st, headers, v) = answer;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("busy")),
        "{v}"
    );
    assert_eq!(headers[header::RETRY_AFTER], "1");
    drop(release);
    queued.await.unwrap();
}

#[tokio::test]
async fn request_past_its_deadline_answers_503() {
    let limits = Limits {
        cpu_threads: 1,
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let f = fixture_with(limits, None);
    let release = f.occupy_cpu().await;
    let body = f.attest_body(0, DEFAULT_POLICY);
    let (st, headers, v) = tokio::time::timeout(
        Duration::from_secs(10),
        f.call(Method::POST, "/attest/SevSnpVM", body, None),
    )
    .await
    .expect("the deadline answers");
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("timeout")),
        "{v}"
    );
    assert_eq!(headers[header::RETRY_AFTER], "1");
    drop(release);
}

/// Even if the state held the digest of an empty token, an empty bearer token is not one.
#[tokio::test]
async fn empty_bearer_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = build_state(
        &config(dir.path(), Limits::default(), None),
        "http://coffer.test",
    )
    .unwrap();
    Arc::get_mut(&mut state).unwrap().admin_token_hash = openssl::sha::sha256(b"");
    let f = Fixture {
        router: app(state.clone(), Duration::from_secs(30)),
        state,
        dir,
    };
    for bearer in [None, Some(""), Some("  ")] {
        let (st, _, _) = f.call(Method::GET, "/keys", "", bearer).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{bearer:?}");
    }
}

#[test]
fn empty_admin_token_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Limits::default(), None);
    std::fs::create_dir_all(&cfg.dir).unwrap();
    let path = admin_token_path(&cfg.dir);
    std::fs::write(&path, " \n").unwrap();
    let err = build_state(&cfg, "http://coffer.test").err().unwrap();
    assert!(
        matches!(&err, StartError::AdminTokenEmpty { path: p } if *p == path),
        "{err}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

/// Arbitrary bytes, and corruptions of valid bodies, into every route with a body: a 4xx (or
/// success, for a corruption that still means something), never a 5xx or a panic.
#[tokio::test]
async fn malformed_bodies_get_4xx_on_every_route() {
    let f = fixture();
    let admin = f.admin();
    let (st, _, _) = f
        .call(Method::POST, "/keys", r#"{"name":"k"}"#, Some(&admin))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let routes: [(Method, &str, Option<&str>); 5] = [
        (Method::POST, "/attest/SevSnpVM", None),
        (Method::POST, "/attest/SevSnpVm", None),
        (Method::POST, "/keys/k/release", None),
        (Method::POST, "/keys", Some(&admin)),
        (Method::PUT, "/keys/k/policy", Some(&admin)),
    ];
    let mut fixed: Vec<Vec<u8>> = [
        "",
        "null",
        "[]",
        "{}",
        "\"x\"",
        "1e999999",
        "-0",
        "{\"target\":1}",
        "{\"report\":null}",
        "{\"report\":\"\"}",
        "{\"report\":\"e30\"}",
        "{\"name\":\"\"}",
        "{\"name\":\"a/b\"}",
        "{\"name\":\"x\",\"kty\":\"RSA\",\"key_size\":1}",
        "{\"name\":\"x\",\"jwk\":1}",
        "{\"name\":\"x\",\"k\":\"!!\"}",
        "{\"data\":\"!!\"}",
        "{\"version\":\"9\"}",
        "{\"target\":\"a.b.c\",\"nonce\":1}",
        "\u{feff}{}",
        "{\"a\":\"\\ud800\"}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fixed.push("[".repeat(100_000).into_bytes());
    fixed.push(vec![0xff, 0xfe, 0x00, 0x80]);
    // xorshift: reproducible noise without a dependency.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..200 {
        let len = (next() % 300) as usize;
        fixed.push((0..len).map(|_| next() as u8).collect());
    }
    for (method, uri, bearer) in &routes {
        for body in &fixed {
            let (st, _, v) = f.call(method.clone(), uri, body.clone(), *bearer).await;
            assert!(
                st.is_client_error(),
                "{method} {uri} {:?}: {st} {v}",
                String::from_utf8_lossy(body)
            );
        }
    }
    // Corruptions of a valid attest body: one byte changed at a time.
    let valid = f.attest_body(0, DEFAULT_POLICY);
    for _ in 0..100 {
        let mut body = valid.clone();
        let i = (next() % body.len() as u64) as usize;
        body[i] = next() as u8;
        let (st, _, v) = f.call(Method::POST, "/attest/SevSnpVM", body, None).await;
        assert!(!st.is_server_error(), "byte {i}: {st} {v}");
    }
}

async fn started(limits: Limits) -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().unwrap();
    let running = start(config(dir.path(), limits, None)).await.unwrap();
    (dir, running)
}

/// Read until the server closes the connection; the bytes read.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    out
}

/// A client that sends part of its headers and then nothing is disconnected after the
/// header-read timeout (slowloris).
#[tokio::test]
async fn slow_headers_are_cut_off() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (_dir, running) = started(limits).await;
    let mut s = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    s.write_all(b"GET /certs HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut s))
        .await
        .expect("the server closes a connection that does not finish its headers");
}

/// With one connection allowed, a second client is served only once the first one is gone.
#[tokio::test]
async fn connections_beyond_the_limit_wait() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let (_dir, running) = started(limits).await;
    let first = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    // Let the server accept the first connection.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    second
        .write_all(b"GET /certs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond the connection limit");
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut second))
        .await
        .expect("served once the first connection closed");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// Shutdown stops accepting and the server task ends.
#[tokio::test]
async fn shutdown_ends_the_server() {
    let (_dir, running) = started(Limits::default()).await;
    let idle = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    running.shutdown.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running.task)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    drop(idle);
}
