//! `no_library_backtraces`: with `RUST_BACKTRACE=1` in the environment, library errors (regorus's
//! parser makes one at every alternative it tries) capture no backtrace. Its own test binary:
//! the standard library reads these variables once per process.

#[test]
fn library_errors_capture_no_backtrace_although_rust_backtrace_is_set() {
    std::env::set_var("RUST_BACKTRACE", "1");
    std::env::remove_var("RUST_LIB_BACKTRACE");
    coffer_policy::no_library_backtraces();
    assert_eq!(
        std::env::var("RUST_LIB_BACKTRACE").as_deref(),
        Ok("0"),
        "the variable the standard library reads first"
    );
    assert_eq!(
        std::backtrace::Backtrace::capture().status(),
        std::backtrace::BacktraceStatus::Disabled
    );
}
