//! Request paths: canonical form, the routes iamlet answers itself, and the passthrough
//! allow-list.
//!
//! Every path is made canonical before anything looks at it, and only the canonical form is
//! ever forwarded (rebuilt from its segments, so no escape reaches the real service):
//!
//! * percent-escapes are decoded once; an escape that decodes to anything whose meaning
//!   depends on who decodes it (`/`, `\`, `%`, `;`, `?`, `#`, a control or non-ASCII byte,
//!   or any other byte outside the segment alphabet) is refused with 400, and so are raw
//!   backslashes, `;` parameters and bytes outside that alphabet;
//! * empty and `.` segments are dropped and `..` is resolved without climbing above the root.
//!
//! The segment alphabet is `A-Z a-z 0-9 - . _ ~ : @ = + ,`: enough for every path of the
//! real service (MAC addresses, `public-keys/0=name`, block device names) and nothing that a
//! server could read two ways. Because escapes of `%` are refused, a path cannot carry a
//! second layer of encoding (`%252e%252e`) either.
//!
//! The credential paths of the real service (`iam/...`, `identity-credentials/...`, compared
//! case-insensitively and at any depth) are answered by iamlet or refused; they are never
//! forwarded, whatever the allow-list says, and neither is a path naming the node's own role.
//! `user-data` is forwarded only with its own flag (`--allow-user-data`), never through a
//! pattern.

use regex::RegexSet;

/// A request path in canonical form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NormalPath {
    /// The segments joined by `/` (no leading or trailing `/`): none empty, `.` or `..`, each
    /// made only of the segment alphabet. One string, so a request costs one allocation here.
    joined: String,
    /// Whether the original path ended in `/`.
    pub trailing_slash: bool,
}

/// The segments of a [`NormalPath`]. A byte scan for each `/`: the segments are a few bytes
/// long, shorter than what `str::split`'s searcher takes to set up.
pub(crate) struct Segments<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        // No segment is empty, so an empty rest is the end.
        if self.rest.is_empty() {
            return None;
        }
        match self.rest.bytes().position(|b| b == b'/') {
            Some(slash) => {
                let (seg, rest) = self.rest.split_at(slash);
                self.rest = &rest[1..];
                Some(seg)
            }
            None => Some(std::mem::take(&mut self.rest)),
        }
    }
}

/// Why a path is refused before routing (answered 400 with this text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// The path does not start with `/`.
    #[error("the path must start with /")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-escape")]
    BadEscape,
    /// An escape that decodes to a byte whose meaning depends on who decodes it.
    #[error("percent-escape of {0:?} is not accepted (its meaning depends on who decodes it)")]
    AmbiguousEscape(char),
    /// A backslash.
    #[error("backslashes are not accepted")]
    Backslash,
    /// A `;` (path parameters).
    #[error("path parameters (;) are not accepted")]
    Parameter,
    /// A byte outside the segment alphabet.
    #[error("character {0:?} is not accepted in a metadata path")]
    Character(char),
    /// More segments or bytes than any metadata path has.
    #[error("path too long")]
    TooLong,
}

/// Longest raw path accepted (the real service's longest paths are far shorter).
pub(crate) const MAX_PATH_BYTES: usize = 2048;

impl NormalPath {
    /// The segments, in order.
    pub(crate) fn segments(&self) -> Segments<'_> {
        Segments { rest: &self.joined }
    }

    /// The path as text, starting with `/`; made of the segment alphabet and `/` only.
    pub(crate) fn render(&self) -> String {
        let mut s = String::with_capacity(self.joined.len() + 2);
        s.push('/');
        s.push_str(&self.joined);
        if self.trailing_slash && !self.joined.is_empty() {
            s.push('/');
        }
        s
    }

    /// The path below the version segment (`meta-data/instance-id`), as text.
    pub(crate) fn below_version(&self) -> String {
        let Some((_, below)) = self.joined.split_once('/') else {
            return String::new();
        };
        let mut s = below.to_owned();
        if self.trailing_slash {
            s.push('/');
        }
        s
    }
}

/// Whether `b` may appear in a canonical segment.
pub(crate) const fn is_segment_byte(b: u8) -> bool {
    SEGMENT_BYTES[b as usize]
}

/// The segment alphabet as a table: every byte of every request's path is looked up.
const SEGMENT_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        #[allow(clippy::cast_possible_truncation, reason = "b < 256")]
        let byte = b as u8;
        table[b] = byte.is_ascii_alphanumeric()
            || matches!(
                byte,
                b'-' | b'.' | b'_' | b'~' | b':' | b'@' | b'=' | b'+' | b','
            );
        b += 1;
    }
    table
};

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The character a refused byte is reported as (non-ASCII bytes as U+FFFD).
fn shown(b: u8) -> char {
    if b.is_ascii() {
        char::from(b)
    } else {
        char::REPLACEMENT_CHARACTER
    }
}

/// Decodes the raw path once, refusing anything ambiguous; `/` separates segments only where
/// it was written as `/`.
fn decode(raw: &str) -> Result<Vec<u8>, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let decoded = hi << 4 | lo;
                if !is_segment_byte(decoded) {
                    return Err(PathError::AmbiguousEscape(shown(decoded)));
                }
                out.push(decoded);
                i += 3;
            }
            b'/' => {
                out.push(b);
                i += 1;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Parameter),
            b if is_segment_byte(b) => {
                out.push(b);
                i += 1;
            }
            other => return Err(PathError::Character(shown(other))),
        }
    }
    Ok(out)
}

/// Makes a request path (without query) canonical, or says why it is refused.
pub(crate) fn normalize(raw: &str) -> Result<NormalPath, PathError> {
    check_shape(raw)?;
    match canonical_as_is(raw) {
        Some(path) => Ok(path),
        None => decoded_and_resolved(raw),
    }
}

/// [`normalize`] without taking a canonical path as it stands: what the fuzz target holds
/// the shortcut to.
#[cfg(feature = "fuzzing")]
pub(crate) fn normalize_in_full(raw: &str) -> Result<NormalPath, PathError> {
    check_shape(raw)?;
    decoded_and_resolved(raw)
}

/// Refuses a path too long or not absolute.
fn check_shape(raw: &str) -> Result<(), PathError> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    Ok(())
}

/// [`normalize`]'s full work on an absolute path of acceptable length: escapes decoded (or
/// refused), empty and `.` segments dropped, `..` resolved.
fn decoded_and_resolved(raw: &str) -> Result<NormalPath, PathError> {
    let decoded = decode(raw)?;
    let mut joined = String::with_capacity(decoded.len());
    let mut last_was_dir = true;
    for seg in decoded.split(|b| *b == b'/') {
        last_was_dir = true;
        match seg {
            b"" | b"." => {}
            b".." => {
                let parent = joined.rfind('/').unwrap_or(0);
                joined.truncate(parent);
            }
            s => {
                if !joined.is_empty() {
                    joined.push('/');
                }
                // Only segment bytes are left: ASCII.
                joined.extend(s.iter().map(|b| char::from(*b)));
                last_was_dir = false;
            }
        }
    }
    Ok(NormalPath {
        joined,
        trailing_slash: last_was_dir,
    })
}

/// `raw` (starting with `/`) when it is canonical already, as every SDK writes its paths: no
/// escape, no empty, `.` or `..` segment but a trailing `/`, only bytes of the alphabet. It
/// is then taken as it stands, with no decoding into a buffer first. `None`: it needs
/// [`normalize`]'s full work (which also says why a path is refused).
fn canonical_as_is(raw: &str) -> Option<NormalPath> {
    let below_root = raw.get(1..)?;
    let (joined, trailing_slash) = match below_root.strip_suffix('/') {
        Some(joined) => (joined, true),
        None => (below_root, below_root.is_empty()),
    };
    // One pass over the bytes: each `/` ends a segment, which must be neither empty nor a
    // dot segment.
    let clean_segment = |seg: &[u8]| !matches!(seg, b"" | b"." | b"..");
    let bytes = joined.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'/' {
            if !clean_segment(&bytes[start..i]) {
                return None;
            }
            start = i + 1;
        } else if !is_segment_byte(b) {
            return None;
        }
    }
    if !bytes.is_empty() && !clean_segment(&bytes[start..]) {
        return None;
    }
    Some(NormalPath {
        joined: joined.to_owned(),
        trailing_slash,
    })
}

/// Whether a first segment is an API version of the metadata service (`latest`, `1.0`,
/// `2021-07-15`).
pub(crate) fn is_version(seg: &str) -> bool {
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

/// What a canonical path asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
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
    RoleCredentials { role: &'a str, extended: bool },
    /// Any other credential path of the real service, in any letter case: never forwarded.
    Forbidden,
    /// `/iamlet/whoami`.
    Whoami,
    /// Everything else: a candidate for passthrough.
    Other,
}

/// Whether a segment names a credential area of the real service, in any letter case.
pub(crate) fn is_credential_segment(seg: &str) -> bool {
    seg.eq_ignore_ascii_case("iam")
        || starts_with_ignore_case(seg, "identity-credentials")
        || starts_with_ignore_case(seg, "security-credentials")
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// Classifies a canonical path. iamlet's own routes match in the exact letter case the SDKs
/// use; a credential area in any other case (or at any other depth) is [`Route::Forbidden`].
pub(crate) fn route(path: &NormalPath) -> Route<'_> {
    // Every route of iamlet's own has at most five segments; more is `Other` or `Forbidden`.
    let mut s = [""; 6];
    let mut n = 0;
    for seg in path.segments() {
        if n == s.len() {
            n += 1;
            break;
        }
        s[n] = seg;
        n += 1;
    }
    let own = if n <= 5 { &s[..n] } else { &[][..] };
    match own {
        ["iamlet", "whoami"] => Route::Whoami,
        [v, "api", "token"] if is_version(v) => Route::Token,
        [v, "meta-data", "iam"] if is_version(v) => Route::IamListing,
        [v, "meta-data", "iam", "info"] if is_version(v) => Route::IamInfo,
        [v, "meta-data", "iam", kind] if is_version(v) && is_creds(kind) => Route::RoleList {
            extended: *kind != "security-credentials",
        },
        [v, "meta-data", "iam", kind, role] if is_version(v) && is_creds(kind) => {
            Route::RoleCredentials {
                role,
                extended: *kind != "security-credentials",
            }
        }
        _ if path.segments().any(is_credential_segment) => Route::Forbidden,
        _ => Route::Other,
    }
}

fn is_creds(seg: &str) -> bool {
    seg == "security-credentials" || seg == "security-credentials-extended"
}

/// Whether the path asks for user data (`/<v>/user-data...`, any letter case).
pub(crate) fn is_user_data(path: &NormalPath) -> bool {
    path.segments()
        .nth(1)
        .is_some_and(|s| s.eq_ignore_ascii_case("user-data"))
}

/// Whether a segment of the path is `role` (the node's own role name), in any letter case.
pub(crate) fn names_role(path: &NormalPath, role: &str) -> bool {
    !role.is_empty() && path.segments().any(|s| s.eq_ignore_ascii_case(role))
}

/// The default passthrough allow-list: instance identity basics. Matched against the path
/// below the version, e.g. `meta-data/placement/region`.
pub(crate) const DEFAULT_ALLOW: &[&str] = &[
    r"meta-data/(ami-id|instance-id|instance-type|hostname|local-hostname|local-ipv4|mac|reservation-id|availability-zone|instance-life-cycle)",
    r"meta-data/placement(/.*)?",
    r"meta-data/network(/.*)?",
    r"dynamic/instance-identity/document",
];

/// Which paths may be forwarded to the real metadata service.
#[derive(Clone, Debug)]
pub(crate) struct AllowList {
    set: RegexSet,
    user_data: bool,
}

impl AllowList {
    /// An allow-list of regexes, each anchored at both ends. User data stays refused.
    pub(crate) fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, regex::Error> {
        let anchored: Vec<String> = patterns
            .iter()
            .map(|p| format!("^(?:{})$", p.as_ref()))
            .collect();
        Ok(AllowList {
            set: RegexSet::new(anchored)?,
            user_data: false,
        })
    }

    /// The same list, forwarding `user-data` too (`--allow-user-data`).
    #[must_use]
    pub(crate) fn with_user_data(mut self, allowed: bool) -> Self {
        self.user_data = allowed;
        self
    }

    /// Whether the canonical path may be forwarded, as far as the path alone says. Credential
    /// paths never may; user data only with its own flag. The caller also refuses a path
    /// that [`names_role`] the node's own role.
    pub(crate) fn allows(&self, path: &NormalPath) -> bool {
        let Some(first) = path.segments().next() else {
            return false;
        };
        if !is_version(first) || route(path) != Route::Other {
            return false;
        }
        if is_user_data(path) {
            return self.user_data;
        }
        self.set.is_match(&path.below_version())
    }
}

#[cfg(test)]
mod tests;
