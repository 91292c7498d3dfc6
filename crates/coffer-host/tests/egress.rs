//! The egress relay: the only way out of a group, to the destinations its policy names.

use std::io::{Read, Write};

#[test]
fn the_egress_relay_goes_only_to_the_policys_destinations() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    other.set_nonblocking(true).unwrap();
    let socket = dir.path().join("egress.sock");
    let _relay = coffer_host::launch::Egress::start(
        &socket,
        vec![allowed.local_addr().unwrap().to_string()],
    )
    .unwrap();
    let connect = |addr: std::net::SocketAddr| {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        writeln!(s, "CONNECT {addr}").unwrap();
        s.write_all(b"ping").unwrap();
        s
    };
    let mut refused = connect(other.local_addr().unwrap());
    let mut buf = [0u8; 1];
    // The relay hangs up without connecting anywhere.
    assert_eq!(refused.read(&mut buf).unwrap(), 0);
    assert!(matches!(other.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
    let _ok = connect(allowed.local_addr().unwrap());
    let (mut conn, _) = allowed.accept().unwrap();
    let mut got = [0u8; 4];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
}
