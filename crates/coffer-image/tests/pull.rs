//! Pull from a real registry (Debian's docker-registry) on loopback, pushed to by skopeo.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};

use coffer_image::{ImageRef, Store};
use coffer_testkit::Need;

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_registry(dir: &std::path::Path) -> (Registry, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.join("config.yml");
    std::fs::write(&cfg, format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.join("data").display()
    )).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reg = Registry(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (reg, port);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("docker-registry did not start");
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        pull_from_a_loopback_registry_matches_the_layout: Need::Tool("docker-registry"), Need::Tool("skopeo"), coffer_testkit::EXAMPLE_IMAGE;
    ])
}

fn pull_from_a_loopback_registry_matches_the_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let oci = tmp.path().join("hello");
    coffer_testkit::build_example_image(&oci);
    let (_reg, port) = start_registry(tmp.path());
    let reference = format!("127.0.0.1:{port}/coffer/hello:latest");
    let st = Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:latest", oci.display()),
            &format!("docker://{reference}"),
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());

    let store = Store::open(&tmp.path().join("home")).unwrap();
    let pulled = store.pull(&reference, None, None).unwrap();
    assert_eq!(pulled.name, reference);
    let local = store
        .resolve(&ImageRef::parse(&format!("oci:{}:latest", oci.display())).unwrap())
        .unwrap();
    let a = store.measure(&pulled, None).unwrap();
    let b = store.measure(&local, None).unwrap();
    assert_eq!(a, b);
    assert_eq!(store.list().unwrap().len(), 1);

    let err = store
        .pull(&format!("127.0.0.1:{port}/coffer/nope:latest"), None, None)
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(store.pull("not a reference!", None, None).is_err());
}
