//! The agent's protocol decoder on whatever the host sends: errors, never a panic or a large
//! allocation before the length is checked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_proto::{read_frame, Request, MAX_FRAME};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut r = &bytes[..];
        // Frames until the bytes run out or one is refused.
        for _ in 0..64 {
            match read_frame(&mut r) {
                Ok(Some(v)) => { let _ = serde_json::from_value::<Request>(v); }
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn arbitrary_json_requests_never_panic(
        op in "[A-Za-z_]{0,20}",
        field in "[a-z_]{0,12}",
        n in any::<i64>(),
        s in ".{0,40}",
    ) {
        for v in [
            serde_json::json!({"op": op, field.clone(): n}),
            serde_json::json!({"op": op, field.clone(): s}),
            serde_json::json!({"op": "create_container", "container_id": s, "process": {field.clone(): n}, "volumes": [{"name": s}]}),
            serde_json::json!({"op": "signal", "container_id": s, "signal": n}),
            serde_json::json!([op, n]),
        ] {
            let _ = serde_json::from_value::<Request>(v);
        }
    }
}

#[test]
fn a_huge_length_prefix_is_refused_before_reading() {
    let mut bytes = (MAX_FRAME as u32 + 1).to_be_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    assert!(read_frame(&mut &bytes[..]).is_err());
}
