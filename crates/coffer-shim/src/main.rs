//! `containerd-shim-coffer-v2`: containerd runs it as runtime `io.containerd.coffer.v2`.

fn main() {
    coffer_policy::no_library_backtraces();
    containerd_shim::run::<coffer_shim::service::Service>(
        coffer_shim::RUNTIME_ID,
        Some(coffer_shim::service::config()),
    );
}
