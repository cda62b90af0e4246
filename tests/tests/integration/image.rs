//! The OCI image `cargo xtask image` builds (`target/image/iamlet-<version>.tar`, given as
//! `IAMLET_IMAGE`; `cargo xtask test` builds it and sets that), unpacked and run for real
//! with runc:
//!
//! * the archive names the image the Helm chart deploys by default (`image.repository`, and
//!   `image.tag` or the chart's `appVersion`) and the rendered manifests name;
//! * its config runs `iamlet` as uid 65532, and its labels carry the version and the source
//!   revision, which the binary inside reports too (`iamlet --version` in a container);
//! * the root filesystem holds exactly the files its contents list names (the agent, its
//!   libraries, `mount`, the CA bundle, `/etc` basics, copyright files), owned by 65532
//!   except `/` and `/tmp`, each readable by "other";
//! * `mount`, which the agent runs when a node has no bpffs, runs in it, and so does
//!   `iamlet inspect` (found on the image's `PATH`, as `kubectl exec` finds it);
//! * `iamlet doctor` runs in it and reports what a container without a node lacks.
//!
//! Without `IAMLET_IMAGE` the tests print `SKIPPED`; with `IAMLET_TESTS_STRICT=1` they fail.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use iamlet_tests::process::{run_with_timeout, workspace_root, DEFAULT_TIMEOUT};
use iamlet_tests::{skip_unless_privileged, OciBundle};

/// The image's user and group.
const IMAGE_UID: u32 = 65532;
/// Where the agent sits in the image.
const AGENT_PATH: &str = "/usr/local/bin/iamlet";
/// The list of the image's files, in the image.
const CONTENTS_PATH: &str = "usr/share/iamlet/image-contents.tsv";
/// How long a program in a container may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The archive under test, or `None` (after printing why) when there is none to test.
fn image_archive() -> Option<PathBuf> {
    let Some(path) = std::env::var_os("IAMLET_IMAGE").map(PathBuf::from) else {
        let reason = "IAMLET_IMAGE is not set (`cargo xtask image` builds the archive; \
                      `cargo xtask test` sets it)";
        assert!(
            std::env::var_os("IAMLET_TESTS_STRICT").is_none_or(|v| v != "1"),
            "image test cannot run (IAMLET_TESTS_STRICT=1): {reason}"
        );
        eprintln!("SKIPPED: {reason}");
        return None;
    };
    assert!(
        path.is_file(),
        "IAMLET_IMAGE={} is not a file",
        path.display()
    );
    Some(path)
}

/// A command's stdout; panics with its output when it fails.
fn stdout_of(cmd: &mut Command) -> String {
    run_with_timeout(cmd, DEFAULT_TIMEOUT)
        .and_then(iamlet_tests::RunOutput::ensure_success)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .stdout
}

/// The image's config (`skopeo inspect --config`).
fn image_config(archive: &Path) -> serde_json::Value {
    let text = stdout_of(
        Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci-archive:{}", archive.display())),
    );
    serde_json::from_str(&text).expect("skopeo prints the config as JSON")
}

/// One label of the image's config.
fn label(config: &serde_json::Value, key: &str) -> String {
    config["config"]["Labels"][key]
        .as_str()
        .unwrap_or_else(|| panic!("the image has no label {key}: {config}"))
        .to_owned()
}

/// A top-level string value of a YAML file of the chart, by dotted path.
fn chart_value(file: &str, path: &str) -> String {
    let file = workspace_root().join("deploy/helm/iamlet").join(file);
    let text = std::fs::read_to_string(&file).expect("the chart's file");
    let mut value: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    for key in path.split('.') {
        value = value[key].clone();
    }
    value
        .as_str()
        .unwrap_or_else(|| panic!("{path} in {} is not a string", file.display()))
        .to_owned()
}

#[test]
fn archive_is_the_charts_default_image() {
    let Some(archive) = image_archive() else {
        return;
    };
    let index: serde_json::Value = serde_json::from_str(&stdout_of(
        Command::new("tar")
            .arg("-xOf")
            .arg(&archive)
            .arg("index.json"),
    ))
    .expect("index.json of the archive");
    let manifests = index["manifests"]
        .as_array()
        .expect("an index of manifests");
    assert_eq!(manifests.len(), 1, "one image in the archive: {index}");
    let name = manifests[0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap_or_else(|| panic!("the image in the archive has no name: {index}"));

    let version = env!("CARGO_PKG_VERSION");
    let app_version = chart_value("Chart.yaml", "appVersion");
    assert_eq!(
        app_version, version,
        "the chart's appVersion must be the workspace version"
    );
    let tag = Some(chart_value("values.yaml", "image.tag"))
        .filter(|t| !t.is_empty())
        .unwrap_or(app_version);
    let chart_image = format!("{}:{tag}", chart_value("values.yaml", "image.repository"));
    assert_eq!(
        name, chart_image,
        "the chart's default image is what `cargo xtask image` builds"
    );
    let manifests = std::fs::read_to_string(workspace_root().join("deploy/manifests/iamlet.yaml"))
        .expect("the rendered manifests");
    assert!(
        manifests.contains(&format!("image: \"{name}\"")),
        "deploy/manifests/iamlet.yaml runs {name}"
    );
    let size = std::fs::metadata(&archive).expect("the archive").len();
    eprintln!(
        "{}: {name}, {size} bytes ({:.1} MiB)",
        archive.display(),
        size as f64 / 1_048_576.0
    );
}

#[test]
fn agent_runs_from_the_image() {
    skip_unless_privileged!();
    let Some(archive) = image_archive() else {
        return;
    };
    let config = image_config(&archive);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(label(&config, "org.opencontainers.image.version"), version);
    assert_eq!(label(&config, "org.opencontainers.image.title"), "iamlet");
    let revision = label(&config, "org.opencontainers.image.revision");
    assert!(
        revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()),
        "the revision label is a full commit id: {revision:?}"
    );
    if let Ok(out) = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace_root())
        .output()
    {
        if out.status.success() {
            assert_eq!(
                revision,
                String::from_utf8_lossy(&out.stdout).trim(),
                "the image is of the commit checked out (rebuild it: cargo xtask image)"
            );
        }
    }
    let created = label(&config, "org.opencontainers.image.created");
    assert_eq!(config["created"].as_str(), Some(created.as_str()));
    assert_eq!(
        config["config"]["User"].as_str(),
        Some(format!("{IMAGE_UID}:{IMAGE_UID}").as_str())
    );
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!([AGENT_PATH])
    );

    let mut bundle = OciBundle::unpack(&archive).unwrap_or_else(|e| panic!("{e:#}"));
    let user = &bundle.spec()["process"]["user"];
    assert_eq!(user["uid"], IMAGE_UID, "runs as the image's user: {user}");
    assert_eq!(user["gid"], IMAGE_UID, "runs as the image's group: {user}");
    // Before any container runs: runc makes mount points (`/proc`, `/dev`, ...) in it.
    check_rootfs(&bundle.rootfs());

    let mut argv = bundle.entrypoint();
    assert_eq!(argv, [AGENT_PATH]);
    argv.push("--version".to_owned());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = bundle
        .run(&argv, RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("runc run: iamlet --version -> {}", out.stdout.trim());
    assert!(out.success(), "{out}");
    assert_eq!(
        out.stdout.trim(),
        format!("iamlet {version} (revision {})", &revision[..12]),
        "the binary in the image reports the labelled version and revision"
    );

    // The agent runs `mount -t bpf bpf /sys/fs/bpf` on a node without bpffs.
    let out = bundle
        .run(&["mount", "--version"], RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.success(), "mount runs in the image: {out}");
    eprintln!("runc run: mount --version -> {}", out.stdout.trim());

    // `kubectl exec ... -- iamlet inspect` runs in the image: here no agent answers (the
    // container has a network namespace of its own, with only a loopback).
    let out = bundle
        .run(&["iamlet", "inspect", "--timeout", "1"], RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr.contains("no iamlet agent answers"), "{out}");
    eprintln!("runc run: iamlet inspect -> {}", out.stderr.trim());
}

/// The root filesystem holds exactly the files its contents list names, owned and readable
/// as the image promises.
fn check_rootfs(rootfs: &Path) {
    let contents =
        std::fs::read_to_string(rootfs.join(CONTENTS_PATH)).expect("the image's contents list");
    let mut listed = BTreeSet::new();
    let mut packages = BTreeSet::new();
    for line in contents.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 3, "path, package, version: {line:?}");
        listed.insert(PathBuf::from(fields[0]));
        if fields[1] != "-" {
            packages.insert(format!("{}={}", fields[1], fields[2]));
        }
    }
    let mut found = BTreeSet::new();
    let mut bytes = 0;
    walk(rootfs, &mut |path, meta| {
        let in_image = Path::new("/").join(path.strip_prefix(rootfs).expect("below the rootfs"));
        let root_owned = in_image == Path::new("/") || in_image == Path::new("/tmp");
        let owner = if root_owned { 0 } else { IMAGE_UID };
        assert_eq!(
            (meta.uid(), meta.gid()),
            (owner, owner),
            "owner of {}",
            in_image.display()
        );
        assert_eq!(
            meta.mode() & 0o6000,
            0,
            "no set-id bit on {}",
            in_image.display()
        );
        if meta.is_file() {
            assert_eq!(
                meta.mode() & 0o004,
                0o004,
                "{} readable",
                in_image.display()
            );
            bytes += meta.len();
            found.insert(in_image);
        } else if meta.is_dir() {
            assert_eq!(
                meta.mode() & 0o005,
                0o005,
                "{} searchable",
                in_image.display()
            );
        }
    });
    assert_eq!(
        found, listed,
        "the image holds exactly the files its contents list names"
    );
    for package in ["libc6=", "libgcc-s1=", "ca-certificates=", "mount="] {
        assert!(
            packages.iter().any(|p| p.starts_with(package)),
            "{package} in {packages:?}"
        );
    }
    let bundle = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt"))
        .expect("the CA bundle");
    let certificates = bundle.matches("-----BEGIN CERTIFICATE-----").count();
    assert!(certificates > 100, "{certificates} CA certificates");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("/etc/passwd");
    assert!(
        passwd.contains(&format!(":x:{IMAGE_UID}:{IMAGE_UID}:")),
        "{passwd}"
    );
    eprintln!(
        "rootfs: {} files, {bytes} bytes; packages: {}",
        found.len(),
        packages.into_iter().collect::<Vec<_>>().join(" ")
    );
}

/// Calls `visit` on `dir` and everything below it (symlinks not followed).
fn walk(dir: &Path, visit: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let meta = std::fs::symlink_metadata(dir).expect("metadata");
    visit(dir, &meta);
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            walk(&entry.expect("entry").path(), visit);
        }
    }
}

#[test]
fn doctor_runs_from_the_image() {
    skip_unless_privileged!();
    let Some(archive) = image_archive() else {
        return;
    };
    let mut bundle = OciBundle::unpack(&archive).unwrap_or_else(|e| panic!("{e:#}"));
    let help = bundle
        .run(&[AGENT_PATH, "doctor", "--help"], RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(help.success(), "iamlet doctor --help: {help}");
    assert!(help.stdout.contains("Usage: iamlet doctor"), "{help}");
    let out = bundle
        .run(&[AGENT_PATH, "doctor"], RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("runc run: iamlet doctor -> {out}");
    // A container of its own has no agent, no pods cgroup and no pins: problems (exit 1),
    // each named in the report.
    assert_eq!(
        out.status.code(),
        Some(1),
        "doctor runs and finds problems in a container without a node: {out}"
    );
    assert!(out.stdout.contains("FAIL"), "{out}");
    assert!(out.stdout.contains("problems"), "{out}");
}
