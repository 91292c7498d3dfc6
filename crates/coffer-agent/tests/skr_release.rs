//! Key release as the host attacks it: the egress relay answers attestation and release itself,
//! replays an old answer, or changes the request on its way. The TEE must accept only a response
//! signed by the broker key its policy pins and bound to its own request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use coffer_agent::skr::{release_jwk, Broker};
use coffer_release::BrokerSigner;
use coffer_sp::{Evidence, SecureProcessor};
use serde_json::{json, Value};

/// Reports of zeros: what is tested here is the release, not the evidence.
struct StubSp;

impl SecureProcessor for StubSp {
    fn report(&self, _: &[u8; 64]) -> Result<Evidence, coffer_sp::SpError> {
        Ok(Evidence {
            report: vec![0; 1184],
            cert_chain: Some("chain".into()),
        })
    }
}

/// How the fake egress relay answers release requests.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// As the honest broker: signed by the pinned key, bound to the request.
    Honest,
    /// The host's own key, wrapped to the TEE's key, in the old unsigned form.
    Unsigned,
    /// The host's own key, signed with the host's own signing key.
    OwnSigner,
    /// The last honest answer again.
    Replay,
    /// The honest broker's answer to a request whose nonce the relay changed.
    NonceChanged,
}

struct Relay {
    dir: tempfile::TempDir,
    last: Arc<Mutex<Option<String>>>,
}

fn read_request(r: &mut BufReader<std::os::unix::net::UnixStream>) -> (String, Value) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("CONNECT "), "{line}");
    let mut request_line = String::new();
    r.read_line(&mut request_line).unwrap();
    let path = request_line.split_whitespace().nth(1).unwrap().to_string();
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (path, serde_json::from_slice(&body).unwrap())
}

fn respond(conn: &mut std::os::unix::net::UnixStream, status: u16, body: &Value) {
    let b = body.to_string();
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
        b.len()
    );
}

/// A fake egress relay that plays attestation service and key broker.
fn relay(broker: Arc<BrokerSigner>, answer: Answer) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("egress.sock")).unwrap();
    let last: Arc<Mutex<Option<String>>> = Arc::default();
    let last2 = last.clone();
    let runtime_keys: Arc<Mutex<Value>> = Arc::default();
    std::thread::spawn(move || {
        let host_signer = BrokerSigner::from_pem(&BrokerSigner::generate_pem().unwrap()).unwrap();
        for (n, conn) in listener.incoming().enumerate() {
            let mut conn = conn.unwrap();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let (path, body) = read_request(&mut r);
            if path.starts_with("/attest/") {
                // The relay sees the TEE's wrapping key in clear: that is the attack's premise.
                let data = body["runtimeData"]["data"].as_str().unwrap();
                let runtime: Value = serde_json::from_slice(
                    &base64::engine::general_purpose::URL_SAFE
                        .decode(data)
                        .unwrap(),
                )
                .unwrap();
                *runtime_keys.lock().unwrap() = runtime.clone();
                let claims = json!({"jti": format!("jti-{n}"), "x-ms-runtime": runtime});
                let token = format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(claims.to_string()));
                respond(&mut conn, 200, &json!({ "token": token }));
                continue;
            }
            let name = path.split('/').nth(2).unwrap().to_string();
            let token = body["target"].as_str().unwrap();
            let claims: serde_json::Map<String, Value> = serde_json::from_slice(
                &URL_SAFE_NO_PAD
                    .decode(token.split('.').nth(1).unwrap())
                    .unwrap(),
            )
            .unwrap();
            let host_key = json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode([0x66u8; 32])});
            let honest_key = json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode([0x11u8; 32])});
            let key = if answer == Answer::Honest
                || answer == Answer::Replay
                || answer == Answer::NonceChanged
            {
                honest_key
            } else {
                host_key
            };
            let wrapped = coffer_kbs::wrap_for_token(&claims, &key).unwrap();
            let mut nonce = body["nonce"].as_str().unwrap_or_default().to_string();
            if answer == Answer::NonceChanged {
                nonce = "0".repeat(32);
            }
            let payload = coffer_release::ReleasePayload {
                key: name,
                nonce,
                jti: claims["jti"].as_str().unwrap().to_string(),
                wrapping_key: wrapped.wrapping_key,
                iat: 1,
                value: wrapped.jwe.clone(),
            };
            let value = match answer {
                Answer::Unsigned => wrapped.jwe,
                Answer::OwnSigner => host_signer.sign(&payload).unwrap(),
                Answer::Replay if last2.lock().unwrap().is_some() => {
                    last2.lock().unwrap().clone().unwrap()
                }
                _ => broker.sign(&payload).unwrap(),
            };
            *last2.lock().unwrap() = Some(value.clone());
            respond(&mut conn, 200, &json!({ "value": value }));
        }
    });
    Relay { dir, last }
}

impl Relay {
    fn egress(&self) -> PathBuf {
        self.dir.path().join("egress.sock")
    }
}

fn broker_policy(signer: &BrokerSigner) -> Broker {
    Broker::from_policy(&coffer_policy::KeyBrokerPolicy {
        maa_endpoint: "http://127.0.0.1:7070".into(),
        akv_endpoint: "http://127.0.0.1:7070".into(),
        broker_key: signer.thumbprint().into(),
    })
    .unwrap()
}

fn release(egress: &Path, broker: &Broker) -> Result<Value, (u16, String)> {
    let sp: Arc<dyn SecureProcessor> = Arc::new(StubSp);
    release_jwk(&sp, egress, broker, "k1").map(|j| serde_json::from_str(&j).unwrap())
}

fn signer() -> Arc<BrokerSigner> {
    Arc::new(BrokerSigner::from_pem(&BrokerSigner::generate_pem().unwrap()).unwrap())
}

#[test]
fn the_pinned_brokers_signed_answer_releases_the_key() {
    let s = signer();
    let r = relay(s.clone(), Answer::Honest);
    let jwk = release(&r.egress(), &broker_policy(&s)).unwrap();
    assert_eq!(jwk["k"], URL_SAFE_NO_PAD.encode([0x11u8; 32]));
}

#[test]
fn a_relay_answering_with_its_own_unsigned_key_is_refused() {
    let s = signer();
    let r = relay(s.clone(), Answer::Unsigned);
    let (status, why) = release(&r.egress(), &broker_policy(&s)).unwrap_err();
    assert_eq!(status, 502, "{why}");
    assert!(why.contains("refusing the key broker's answer"), "{why}");
    assert!(
        !why.contains("ZmZm"),
        "the host's key must not surface: {why}"
    );
}

#[test]
fn a_relay_signing_with_its_own_key_is_refused() {
    let s = signer();
    let r = relay(s.clone(), Answer::OwnSigner);
    let (_, why) = release(&r.egress(), &broker_policy(&s)).unwrap_err();
    assert!(
        why.contains("not by the key broker the policy names"),
        "{why}"
    );
}

#[test]
fn a_replayed_answer_is_refused() {
    let s = signer();
    let r = relay(s.clone(), Answer::Replay);
    let b = broker_policy(&s);
    release(&r.egress(), &b).unwrap();
    assert!(r.last.lock().unwrap().is_some());
    let (_, why) = release(&r.egress(), &b).unwrap_err();
    assert!(why.contains("answers another request"), "{why}");
}

#[test]
fn an_answer_to_a_changed_nonce_is_refused() {
    let s = signer();
    let r = relay(s.clone(), Answer::NonceChanged);
    let (_, why) = release(&r.egress(), &broker_policy(&s)).unwrap_err();
    assert!(why.contains("its nonce differs"), "{why}");
}
