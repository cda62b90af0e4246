//! Request paths: normalisation, the routes iamlet answers itself, and the passthrough
//! allow-list.
//!
//! Every path is normalised before anything looks at it (percent-decoding, empty and `.`
//! segments dropped, `..` resolved without climbing above the root), so `//latest/meta-data/
//! ./iam/../iam/` is the same as `/latest/meta-data/iam/`. The credential paths of the real
//! service (`meta-data/iam/...`, `meta-data/identity-credentials/...`) are answered by iamlet
//! or refused; they are never forwarded, whatever the allow-list says.

use regex::RegexSet;

/// A request path after normalisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalPath {
    /// Segments, without empty ones.
    pub segments: Vec<String>,
    /// Whether the original path ended in `/`.
    pub trailing_slash: bool,
}

impl NormalPath {
    /// The path as text, starting with `/`.
    pub fn render(&self) -> String {
        let mut s = String::from("/");
        s.push_str(&self.segments.join("/"));
        if self.trailing_slash && !self.segments.is_empty() {
            s.push('/');
        }
        s
    }

    /// The path below the version segment (`meta-data/instance-id`), as text.
    pub fn below_version(&self) -> String {
        let mut s = self.segments.get(1..).unwrap_or_default().join("/");
        if self.trailing_slash && self.segments.len() > 1 {
            s.push('/');
        }
        s
    }
}

/// Normalises a request path (without query). `None` for paths that do not decode to UTF-8
/// or contain NUL or control characters.
pub fn normalize(raw: &str) -> Option<NormalPath> {
    let decoded = percent_decode(raw)?;
    if decoded.chars().any(|c| c.is_control()) {
        return None;
    }
    let mut segments: Vec<String> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s.to_owned()),
        }
    }
    let trailing_slash = decoded.ends_with('/') || decoded.ends_with("/.");
    Some(NormalPath {
        segments,
        trailing_slash,
    })
}

fn percent_decode(raw: &str) -> Option<String> {
    if !raw.contains('%') {
        return Some(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether a first segment is an API version of the metadata service (`latest`, `1.0`,
/// `2021-07-15`).
pub fn is_version(seg: &str) -> bool {
    if seg == "latest" || seg == "1.0" {
        return true;
    }
    let b = seg.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// What a normalised path asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/<v>/api/token`.
    Token,
    /// `/<v>/meta-data/iam` (a listing).
    IamListing,
    /// `/<v>/meta-data/iam/info`.
    IamInfo,
    /// `/<v>/meta-data/iam/security-credentials[/]`; `extended` for
    /// `security-credentials-extended`.
    RoleList { extended: bool },
    /// `/<v>/meta-data/iam/security-credentials/<role>`.
    RoleCredentials { role: String, extended: bool },
    /// Any other credential path of the real service: never forwarded.
    Forbidden,
    /// `/iamlet/whoami`.
    Whoami,
    /// Everything else: a candidate for passthrough.
    Other,
}

/// Classifies a normalised path.
pub fn route(path: &NormalPath) -> Route {
    let s: Vec<&str> = path.segments.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["iamlet", "whoami"] => Route::Whoami,
        [v, "api", "token"] if is_version(v) => Route::Token,
        [v, "meta-data", "iam"] if is_version(v) => Route::IamListing,
        [v, "meta-data", "iam", "info"] if is_version(v) => Route::IamInfo,
        [v, "meta-data", "iam", kind] if is_version(v) && is_creds(kind) => Route::RoleList {
            extended: *kind != "security-credentials",
        },
        [v, "meta-data", "iam", kind, role] if is_version(v) && is_creds(kind) => {
            Route::RoleCredentials {
                role: (*role).to_owned(),
                extended: *kind != "security-credentials",
            }
        }
        [v, "meta-data", "iam", ..] if is_version(v) => Route::Forbidden,
        [v, "meta-data", "identity-credentials", ..] if is_version(v) => Route::Forbidden,
        // Anything that names a credential path at any depth, e.g. under an unknown version.
        segs if segs
            .iter()
            .any(|x| *x == "iam" || x.starts_with("identity-credentials")) =>
        {
            Route::Forbidden
        }
        _ => Route::Other,
    }
}

fn is_creds(seg: &str) -> bool {
    seg == "security-credentials" || seg == "security-credentials-extended"
}

/// The default passthrough allow-list: instance identity basics. Matched against the path
/// below the version, e.g. `meta-data/placement/region`.
pub const DEFAULT_ALLOW: &[&str] = &[
    r"meta-data/(ami-id|instance-id|instance-type|hostname|local-hostname|local-ipv4|mac|reservation-id|availability-zone|instance-life-cycle)",
    r"meta-data/placement(/.*)?",
    r"meta-data/network(/.*)?",
    r"dynamic/instance-identity/document",
];

/// Which paths may be forwarded to the real metadata service.
#[derive(Clone, Debug)]
pub struct AllowList {
    set: RegexSet,
}

impl AllowList {
    /// An allow-list of regexes, each anchored at both ends.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, regex::Error> {
        let anchored: Vec<String> = patterns
            .iter()
            .map(|p| format!("^(?:{})$", p.as_ref()))
            .collect();
        Ok(AllowList {
            set: RegexSet::new(anchored)?,
        })
    }

    /// Whether the normalised path may be forwarded. Credential paths never may.
    pub fn allows(&self, path: &NormalPath) -> bool {
        let Some(first) = path.segments.first() else {
            return false;
        };
        if !is_version(first) || route(path) != Route::Other {
            return false;
        }
        self.set.is_match(&path.below_version())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> NormalPath {
        normalize(p).expect("normalises")
    }

    #[test]
    fn normalisation() {
        assert_eq!(
            n("//latest/meta-data/./iam/../iam/").render(),
            "/latest/meta-data/iam/"
        );
        assert_eq!(
            n("/latest/meta-data/%69am/info").render(),
            "/latest/meta-data/iam/info"
        );
        assert_eq!(n("/../../latest").render(), "/latest");
        assert_eq!(n("/").render(), "/");
        assert_eq!(
            n("/latest/meta-data/iam/.").render(),
            "/latest/meta-data/iam/"
        );
        assert!(normalize("/latest/%ff").is_none());
        assert!(normalize("/latest/%0a").is_none());
        assert!(normalize("/latest/%zz").is_none());
        assert_eq!(
            n("/latest/meta-data/placement/").below_version(),
            "meta-data/placement/"
        );
    }

    #[test]
    fn routes() {
        let r = |p: &str| route(&n(p));
        assert_eq!(r("/latest/api/token"), Route::Token);
        assert_eq!(r("/2021-07-15/api/token"), Route::Token);
        assert_eq!(r("/latest/meta-data/iam"), Route::IamListing);
        assert_eq!(r("/latest/meta-data/iam/"), Route::IamListing);
        assert_eq!(r("/latest/meta-data/iam/info"), Route::IamInfo);
        assert_eq!(
            r("/latest/meta-data/iam/security-credentials"),
            Route::RoleList { extended: false }
        );
        assert_eq!(
            r("/2016-09-02/meta-data/iam/security-credentials/"),
            Route::RoleList { extended: false }
        );
        assert_eq!(
            r("/latest/meta-data/iam/security-credentials/web"),
            Route::RoleCredentials {
                role: "web".into(),
                extended: false
            }
        );
        assert_eq!(
            r("/latest/meta-data/iam/security-credentials-extended/web"),
            Route::RoleCredentials {
                role: "web".into(),
                extended: true
            }
        );
        assert_eq!(
            r("/latest/meta-data/iam/security-credentials/web/extra"),
            Route::Forbidden
        );
        assert_eq!(
            r("/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance"),
            Route::Forbidden
        );
        assert_eq!(
            r("/bogus/meta-data/iam/security-credentials/"),
            Route::Forbidden
        );
        assert_eq!(r("/latest/meta-data/instance-id"), Route::Other);
        assert_eq!(r("/iamlet/whoami"), Route::Whoami);
    }

    #[test]
    fn allow_list() {
        let a = AllowList::new(DEFAULT_ALLOW).expect("valid");
        for ok in [
            "/latest/meta-data/instance-id",
            "/latest/meta-data/placement/region",
            "/latest/meta-data/placement/availability-zone",
            "/2021-07-15/meta-data/network/interfaces/macs/",
            "/latest/dynamic/instance-identity/document",
            "/latest//meta-data/./instance-id",
        ] {
            assert!(a.allows(&n(ok)), "{ok}");
        }
        for denied in [
            "/latest/user-data",
            "/latest/meta-data/iam/security-credentials/",
            "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
            "/latest/meta-data/spot/instance-action",
            "/latest/meta-data/instance-idx",
            "/latest/meta-data/",
            "/latest/meta-data/placement/../iam/info",
            "/meta-data/instance-id",
            "/",
        ] {
            assert!(!a.allows(&n(denied)), "{denied}");
        }
        // Even an allow-everything list never forwards a credential path.
        let all = AllowList::new(&[".*"]).expect("valid");
        assert!(!all.allows(&n("/latest/meta-data/iam/security-credentials/node-role")));
        assert!(!all.allows(&n("/latest/meta-data/iam/info")));
        assert!(!all.allows(&n("/latest/meta-data/identity-credentials/ec2/info")));
        assert!(all.allows(&n("/latest/user-data")));
        assert!(AllowList::new(&["("]).is_err());
    }
}
