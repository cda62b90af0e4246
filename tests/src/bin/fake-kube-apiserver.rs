//! `fake-kube-apiserver --listen ADDR --control SOCKET [--history N] [--bookmark-interval-ms MS]`:
//! the tests' fake Kubernetes API server as a process (see `iamlet_tests::kube_fake`), so it
//! can run in a test node's network namespace. Prints `{"listen":..,"control":..}` on stdout
//! once both listeners are bound; control is `POST /control` with a JSON `ControlOp` over the
//! unix socket.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "statistics over test measurements: counts to f64 and percentiles back to indices, all far below 2^52"
)]
#![allow(
    clippy::too_many_lines,
    clippy::format_push_string,
    clippy::format_collect,
    reason = "a test scenario, fixture or bench driver reads top to bottom, step by step"
)]
#![allow(
    clippy::missing_panics_doc,
    clippy::unwrap_used,
    reason = "test code fails by panicking at the failing line"
)]

fn main() {
    if let Err(e) = iamlet_tests::kube_fake::run_binary(std::env::args().skip(1).collect()) {
        eprintln!("fake-kube-apiserver: {e:#}");
        std::process::exit(1);
    }
}
