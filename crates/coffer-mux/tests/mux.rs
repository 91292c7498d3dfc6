//! The multiplexer over a socket pair: concurrency, ordering, half close, a dropped pipe, and
//! arbitrary bytes into the frame decoder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use coffer_mux::{read_frame, Mux, Side};
use proptest::prelude::*;

fn pair() -> (Mux, Mux, UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    let host = Mux::new(a.try_clone().unwrap(), a.try_clone().unwrap(), Side::Host);
    let guest = Mux::new(b.try_clone().unwrap(), b.try_clone().unwrap(), Side::Guest);
    (host, guest, a, b)
}

/// Guest side: echo every stream back until it ends.
fn echo_server(guest: Mux) {
    std::thread::spawn(move || {
        while let Ok(s) = guest.accept() {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 10_000];
                loop {
                    match (&s).read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if (&s).write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown_write();
            });
        }
    });
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

#[test]
fn eight_streams_each_echo_one_mebibyte_in_order() {
    let (host, guest, _a, _b) = pair();
    echo_server(guest);
    let t0 = Instant::now();
    let threads: Vec<_> = (0..8u8)
        .map(|i| {
            let host = host.clone();
            std::thread::spawn(move || {
                let s = host.open("echo").unwrap();
                let data = pattern(i, 1 << 20);
                let w = s.clone();
                let sent = data.clone();
                // Writing and reading at once: the echo's window would stall a writer alone.
                let writer = std::thread::spawn(move || {
                    for chunk in sent.chunks(7_777) {
                        (&w).write_all(chunk).unwrap();
                    }
                    w.shutdown_write().unwrap();
                });
                let mut back = Vec::new();
                (&s).read_to_end(&mut back).unwrap();
                writer.join().unwrap();
                assert_eq!(back.len(), data.len(), "stream {i}");
                assert!(back == data, "stream {i}: bytes out of order or altered");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    eprintln!("8 x 1 MiB echoed in {:?}", t0.elapsed());
}

#[test]
fn a_stream_nobody_reads_stalls_only_itself() {
    let (host, guest, _a, _b) = pair();
    let stalled = host.open("sink").unwrap();
    let _kept = guest.accept().unwrap(); // accepted, never read
                                         // Fill its window: the writer blocks, in its own thread.
    let w = stalled.clone();
    std::thread::spawn(move || {
        let _ = (&w).write_all(&vec![0u8; 4 << 20]);
    });
    std::thread::sleep(Duration::from_millis(100));
    echo_server(guest);
    let s = host.open("echo").unwrap();
    (&s).write_all(b"still moving").unwrap();
    s.shutdown_write().unwrap();
    let mut back = String::new();
    (&s).read_to_string(&mut back).unwrap();
    assert_eq!(back, "still moving");
}

#[test]
fn closing_one_side_ends_the_other_sides_reads_and_both_sides_can_open() {
    let (host, guest, _a, _b) = pair();
    let h = host.open("x").unwrap();
    let g = guest.accept().unwrap();
    assert_eq!(g.service(), "x");
    (&h).write_all(b"hello").unwrap();
    drop(h);
    let mut got = Vec::new();
    (&g).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello");
    // Writing to a stream whose peer is gone neither blocks nor fails the pipe.
    (&g).write_all(&vec![1u8; 1 << 20]).unwrap();
    // The guest opens toward the host too.
    let g2 = guest.open("from-guest").unwrap();
    let h2 = host.accept().unwrap();
    assert_eq!(h2.service(), "from-guest");
    (&g2).write_all(b"up").unwrap();
    g2.shutdown_write().unwrap();
    let mut s = String::new();
    (&h2).read_to_string(&mut s).unwrap();
    assert_eq!(s, "up");
}

#[test]
fn a_dropped_pipe_fails_every_stream_without_hanging() {
    let (host, guest, a, b) = pair();
    let h = host.open("x").unwrap();
    let g = guest.accept().unwrap();
    (&h).write_all(b"partial").unwrap();
    let mut buf = [0u8; 7];
    (&g).read_exact(&mut buf).unwrap();
    // A writer blocked on a full window (nobody reads `g`), and a reader waiting on another
    // stream that gets no data: both must wake with an error. Separate streams, so the reader
    // cannot drain the writer's data and let it finish before the pipe goes.
    let (h2, g2) = (host.open("y").unwrap(), guest.accept().unwrap());
    let w = h.clone();
    let writer = std::thread::spawn(move || (&w).write_all(&vec![0u8; 8 << 20]));
    let r = g2.clone();
    let reader = std::thread::spawn(move || {
        let mut sink = Vec::new();
        (&r).read_to_end(&mut sink)
    });
    std::thread::sleep(Duration::from_millis(100));
    // The guest's end of the pipe goes away (the VM died).
    b.shutdown(std::net::Shutdown::Both).unwrap();
    drop(b);
    let t0 = Instant::now();
    assert!(writer.join().unwrap().is_err());
    assert!(reader.join().unwrap().is_err());
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(host.accept().is_err());
    assert!(host.open("z").is_err() || host.closed().is_some());
    drop((a, g, h2));
}

#[test]
fn a_unix_socket_forward_carries_each_connection_as_a_stream() {
    let (host, guest, _a, _b) = pair();
    echo_server(guest);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let fwd = coffer_mux::unix::Forward::start(host, &sock, "agent").unwrap();
    for i in 0..3 {
        let mut c = UnixStream::connect(&sock).unwrap();
        let msg = format!("connection {i}");
        c.write_all(msg.as_bytes()).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = String::new();
        c.read_to_string(&mut back).unwrap();
        assert_eq!(back, msg);
    }
    drop(fwd);
    assert!(!sock.exists());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn the_decoder_takes_any_bytes_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut r = &bytes[..];
        // Every frame it returns fits the limits; it stops at the first error.
        while let Ok(Some(f)) = read_frame(&mut r) {
            prop_assert!(f.payload.len() <= coffer_mux::MAX_PAYLOAD);
        }
    }

    #[test]
    fn a_huge_length_is_refused_before_allocating(id in any::<u32>(), kind in 0u8..4, len in 65_537u32..) {
        let mut h = id.to_be_bytes().to_vec();
        h.push(kind);
        h.extend_from_slice(&len.to_be_bytes());
        prop_assert!(read_frame(&mut &h[..]).is_err());
    }

    #[test]
    fn garbage_on_the_pipe_closes_the_mux_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (a, mut b) = UnixStream::pair().unwrap();
        let m = Mux::new(a.try_clone().unwrap(), a, Side::Host);
        b.write_all(&bytes).unwrap();
        drop(b);
        // Whatever the peer sent, the pipe's end ends accept (Open frames may come first).
        let t0 = Instant::now();
        while m.accept().is_ok() {
            prop_assert!(t0.elapsed() < Duration::from_secs(5));
        }
    }
}
