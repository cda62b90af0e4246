//! `fake-kube-apiserver --listen ADDR --control SOCKET [--history N] [--bookmark-interval-ms MS]`:
//! the tests' fake Kubernetes API server as a process (see `iamlet_tests::kube_fake`), so it
//! can run in a test node's network namespace. Prints `{"listen":..,"control":..}` on stdout
//! once both listeners are bound; control is `POST /control` with a JSON `ControlOp` over the
//! unix socket.

fn main() {
    if let Err(e) = iamlet_tests::kube_fake::run_binary(std::env::args().skip(1).collect()) {
        eprintln!("fake-kube-apiserver: {e:#}");
        std::process::exit(1);
    }
}
