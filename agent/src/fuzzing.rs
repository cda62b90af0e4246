//! Fuzz entry points (feature `fuzzing`): one function per pure parser or decision, each
//! checking invariants on whatever bytes it is given, not only that nothing panics. The
//! libFuzzer targets in `agent/fuzz/` call them; `cargo xtask fuzz` runs those, and the unit
//! tests below replay the committed corpus.
//!
//! | target | invariants |
//! |---|---|
//! | `paths` | canonical form is idempotent and made of the segment alphabet; a path routed to passthrough and allowed names no credential area, not even to an upstream that decodes again, ignores case and resolves dots; user data never passes a pattern |
//! | `token` | a token verifies only for the subject that minted it, only until it expires; bytes that were not minted never verify |
//! | `bindings` | bindings YAML either fails with an error or gives only valid role ARNs |
//! | `role_arn` | an accepted ARN is `arn:<partition>:iam::<12 digits>:role/<name>`; expanding a bare name gives an accepted ARN or an error |
//! | `cgroup_pod` | a pod UID parsed from a cgroup path is a lower-case UUID; a child cgroup never changes the pod |
//! | `annotations` | a pod's role decision is a valid ARN, no role, or a refusal; the namespace policy is honoured |
//! | `time` | a parsed timestamp formats back to the same instant; durations stay within bounds |
//! | `connect` | a connect is redirected only to the configured listener, only when aimed at the metadata service over TCP from a cgroup that is not exempt |
//! | `egress` | a packet is dropped exactly when it is aimed at a metadata address from a cgroup that is not exempt, once the agent configured the map |
#![allow(missing_docs)]

use std::collections::BTreeMap;

use agent_common::{
    decide_connect4, decide_connect6, decide_egress, Action, ConfigV1, Connect, Destination,
    EgressVerdict, CONFIG_FLAG_V4, CONFIG_FLAG_V6, IMDS_PORT, IMDS_V4, IMDS_V6,
};

use crate::imds::paths::{self, AllowList, Route, DEFAULT_ALLOW};

/// Bytes as text, replacing what is not UTF-8.
fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Splits `data` at the first `sep` (or gives it all and an empty tail).
fn split(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// What a careless upstream makes of a path: percent-decoded (repeatedly), backslashes as
/// slashes, `;` parameters dropped, lower case, dot segments resolved.
fn lenient_segments(path: &str) -> Vec<String> {
    let mut p = path.to_owned();
    for _ in 0..3 {
        let mut out = Vec::new();
        let b = p.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let hexval = |c: u8| (c as char).to_digit(16).and_then(|v| u8::try_from(v).ok());
            if b[i] == b'%' && i + 2 < b.len() {
                if let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2])) {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        p = String::from_utf8_lossy(&out).into_owned();
    }
    let p = p.replace('\\', "/").to_lowercase();
    let mut segs: Vec<String> = Vec::new();
    for seg in p.split('/') {
        let seg = seg.split(';').next().unwrap_or_default();
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s.to_owned()),
        }
    }
    segs
}

pub fn paths(data: &[u8]) {
    let (flags, raw) = data.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
    let raw = text(raw);
    // A canonical path taken as it stands is what the full work makes of it.
    assert_eq!(
        paths::normalize(&raw),
        paths::normalize_in_full(&raw),
        "{raw:?}"
    );
    let Ok(p) = paths::normalize(&raw) else {
        return;
    };
    let rendered = p.render();
    assert!(
        rendered
            .bytes()
            .all(|b| b == b'/' || paths::is_segment_byte(b)),
        "{raw:?} rendered as {rendered:?}"
    );
    assert_eq!(paths::normalize(&rendered).as_ref(), Ok(&p), "{raw:?}");
    let patterns: &[&str] = if flags & 1 == 0 {
        DEFAULT_ALLOW
    } else {
        &[".*"]
    };
    let allow = AllowList::new(patterns)
        .expect("valid patterns")
        .with_user_data(flags & 2 != 0);
    let route = paths::route(&p);
    if route == Route::Other && allow.allows(&p) {
        // Whatever the upstream makes of what is forwarded, it is no credential area.
        for seg in lenient_segments(&rendered) {
            assert!(
                !paths::is_credential_segment(&seg),
                "{raw:?} forwarded as {rendered:?}"
            );
        }
        if flags & 2 == 0 {
            assert!(!paths::is_user_data(&p), "{raw:?}");
        }
    }
    if lenient_segments(&rendered)
        .iter()
        .any(|s| paths::is_credential_segment(s))
    {
        assert!(
            !(route == Route::Other && allow.allows(&p)),
            "{raw:?}: a credential path allowed to pass"
        );
    }
}

pub fn token(data: &[u8]) {
    use crate::imds::token::TokenKey;
    if data.len() < 10 {
        return;
    }
    let now = u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
    let ttl = u64::from(u16::from_le_bytes([data[4], data[5]])) % 21_600 + 1;
    let later = u64::from(u16::from_le_bytes([data[6], data[7]]));
    let rest = &data[8..];
    let (a, rest) = split(rest, 0);
    let (b, forged) = split(rest, 0);
    let key = TokenKey::from_bytes([7; 32]);
    let t = key.mint(a, now, ttl);
    let at = now + later;
    let ok = key.verify(&t, a, at);
    if at < now + ttl {
        assert!(ok.is_ok(), "minted token refused within its TTL: {ok:?}");
    } else {
        assert!(ok.is_err(), "expired token accepted");
    }
    if a != b {
        assert!(
            key.verify(&t, b, now).is_err(),
            "token verified for another subject"
        );
    }
    // Whatever verifies is exactly the token minted for that subject and expiry: no other
    // encoding of it (padding, trailing bits, whitespace), no other tag. (A fuzzer that saw
    // an earlier iteration's token may replay it: that one was minted.)
    let forged = text(forged);
    if let Ok(expiry) = key.verify(&forged, a, now) {
        assert_eq!(forged, key.mint(a, expiry - 1, 1), "{forged:?} verified");
    }
    let other = TokenKey::from_bytes([8; 32]);
    assert!(
        other.verify(&t, a, now).is_err(),
        "verified under another key"
    );
}

pub fn bindings(data: &[u8]) {
    let (base, yaml) = split(data, 0);
    let base = text(base);
    let base = (!base.is_empty()).then_some(base.as_str());
    if let Ok(b) =
        crate::role::bindings::StaticBindings::parse(&text(yaml), "fuzz", "kubepods", base)
    {
        for arn in b.role_arns() {
            assert!(
                crate::role::validate_role_arn(&arn).is_ok(),
                "{arn:?} accepted"
            );
        }
    }
}

pub fn role_arn(data: &[u8]) {
    let (role, base) = split(data, 0);
    let role = text(role);
    if crate::role::validate_role_arn(&role).is_ok() {
        let parts: Vec<&str> = role.splitn(6, ':').collect();
        assert_eq!(parts.len(), 6, "{role:?}");
        assert_eq!(parts[0], "arn");
        assert!(!parts[1].is_empty());
        assert_eq!(parts[2], "iam");
        assert_eq!(parts[3], "");
        assert!(
            parts[4].len() == 12 && parts[4].bytes().all(|b| b.is_ascii_digit()),
            "{role:?}"
        );
        assert!(
            parts[5].starts_with("role/") && parts[5].len() > 5,
            "{role:?}"
        );
    }
    let base = text(base);
    if let Ok(arn) = crate::role::expand_role(&role, (!base.is_empty()).then_some(&base)) {
        assert!(crate::role::validate_role_arn(&arn).is_ok(), "{arn:?}");
    }
}

pub fn cgroup_pod(data: &[u8]) {
    let (path, child) = split(data, 0);
    let path = text(path);
    let Some(pod) = crate::caller::pod_identity::parse_pod_cgroup(&path) else {
        return;
    };
    let uid = &pod.pod_uid;
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    // A lower-case UUID, or the 32-hex hash that static pods have as UID.
    let uuid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || lower_hex(b))
        });
    let static_pod = uid.len() == 32 && uid.bytes().all(lower_hex);
    assert!(uuid || static_pod, "{path:?} gave {uid:?}");
    let child = text(child);
    let nested = format!("{}/{}", path.trim_end_matches('/'), child);
    let again = crate::caller::pod_identity::parse_pod_cgroup(&nested);
    assert_eq!(
        again.map(|p| p.pod_uid).as_deref(),
        Some(uid.as_str()),
        "{nested:?}"
    );
}

pub fn annotations(data: &[u8]) {
    use crate::role::kubernetes::policy::{
        decide, Decision, NamespacePolicy, PodInfo, PolicySettings,
    };
    let (flags, rest) = data.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
    let mut fields = rest.split(|b| *b == 0).map(text);
    let mut next = || fields.next().unwrap_or_default();
    let (role, external, session, permitted, allowed, sa_role) =
        (next(), next(), next(), next(), next(), next());
    let mut pod = PodInfo {
        namespace: "ns".into(),
        name: "pod".into(),
        uid: "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d".into(),
        service_account: "sa".into(),
        annotations: BTreeMap::new(),
    };
    let put = |map: &mut BTreeMap<String, String>, key: &str, v: String, bit: u8| {
        if flags & bit != 0 {
            map.insert(key.to_owned(), v);
        }
    };
    put(&mut pod.annotations, "iam.amazonaws.com/role", role, 1);
    put(
        &mut pod.annotations,
        "iam.amazonaws.com/external-id",
        external,
        2,
    );
    put(
        &mut pod.annotations,
        "iam.amazonaws.com/session-name",
        session,
        4,
    );
    let mut ns = BTreeMap::new();
    put(&mut ns, "iam.amazonaws.com/permitted", permitted, 8);
    put(&mut ns, "iam.amazonaws.com/allowed-roles", allowed, 16);
    let mut sa = BTreeMap::new();
    put(&mut sa, "eks.amazonaws.com/role-arn", sa_role, 32);
    let policy = match flags >> 6 {
        0 => NamespacePolicy::Kiam,
        1 => NamespacePolicy::Kube2iam,
        2 => NamespacePolicy::Either,
        _ => NamespacePolicy::Off,
    };
    let settings = PolicySettings {
        base_arn: Some("arn:aws:iam::123456789012:role/".into()),
        use_service_account_annotation: true,
        default_role: None,
        namespace_policy: policy,
        session_tags: true,
        node: "node-1".into(),
    };
    match decide(&settings, &pod, &sa, &ns) {
        Decision::NoRole => {}
        Decision::Denied { .. } => {}
        Decision::Role(b) => {
            assert!(crate::role::validate_role_arn(&b.role_arn).is_ok(), "{b:?}");
            assert_eq!(
                crate::role::sanitize_session_name(&b.session_name),
                b.session_name
            );
            if policy == NamespacePolicy::Kiam {
                assert!(
                    ns.contains_key("iam.amazonaws.com/permitted"),
                    "kiam without permitted"
                );
            }
            if policy == NamespacePolicy::Kube2iam {
                assert!(ns.contains_key("iam.amazonaws.com/allowed-roles"));
            }
        }
    }
}

pub fn time(data: &[u8]) {
    use crate::timefmt::{format_utc, parse_utc};
    let s = text(data);
    if let Ok(t) = parse_utc(&s) {
        let formatted = format_utc(t);
        assert_eq!(parse_utc(&formatted), Ok(t), "{s:?} -> {formatted:?}");
        assert_eq!(formatted.len(), 20, "{formatted:?}");
    }
    if let Ok(d) = crate::config::parse_duration(&s) {
        assert!(d.as_secs() <= 365 * 86_400, "{s:?} -> {d:?}");
    }
}

fn config_from(data: &[u8]) -> ConfigV1 {
    let word = |i: usize| {
        let b = |k: usize| data.get(i * 4 + k).copied().unwrap_or(0);
        u32::from_ne_bytes([b(0), b(1), b(2), b(3)])
    };
    let pick = |w: u32, imds: u32| if w.is_multiple_of(4) { imds } else { w };
    ConfigV1 {
        v6_addr: [word(0), word(1), word(2), word(3)],
        exempt_cgroup_ids: [u64::from(word(4) % 4), u64::from(word(5) % 4)],
        v4_addr: pick(word(6), agent_common::ipv4_raw([198, 18, 0, 1])),
        flags: word(7) & (CONFIG_FLAG_V4 | CONFIG_FLAG_V6),
        v4_port: (word(8) & 0xffff) as u16,
        v6_port: (word(8) >> 16) as u16,
        _pad: 0,
    }
}

fn exempt(cfg: &ConfigV1, id: u64) -> bool {
    id != 0 && cfg.exempt_cgroup_ids.contains(&id)
}

pub fn connect(data: &[u8]) {
    let cfg = config_from(data);
    let rest = data.get(36..).unwrap_or_default();
    let b = |k: usize| rest.get(k).copied().unwrap_or(0);
    let cgroup_id = u64::from(b(0) % 4);
    let is_tcp = b(1) & 1 == 0;
    let port = if b(2) & 1 == 0 {
        IMDS_PORT
    } else {
        u16::from_ne_bytes([b(3), b(4)])
    };
    let w = |k: usize| u32::from_ne_bytes([b(k), b(k + 1), b(k + 2), b(k + 3)]);
    let v4 = if b(5) & 1 == 0 { IMDS_V4 } else { w(6) };
    let v6 = match b(10) % 3 {
        0 => IMDS_V6,
        1 => [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4],
        _ => [w(11), w(15), w(19), w(23)],
    };
    let c4 = Connect {
        is_tcp,
        cgroup_id,
        dst_addr: v4,
        dst_port: port,
    };
    match decide_connect4(&cfg, c4) {
        Action::Redirect { addr, port: to } => {
            assert!(is_tcp && !exempt(&cfg, cgroup_id));
            assert!(v4 == IMDS_V4 && port == IMDS_PORT, "{c4:?}");
            assert!(cfg.flags & CONFIG_FLAG_V4 != 0);
            assert_eq!((addr[0], to), (cfg.v4_addr, cfg.v4_port));
        }
        Action::RecordDirect => {
            assert!(is_tcp && !exempt(&cfg, cgroup_id) && cfg.flags & CONFIG_FLAG_V4 != 0);
            assert!(v4 == cfg.v4_addr && port == cfg.v4_port, "{c4:?}");
        }
        Action::Pass => assert!(
            !(is_tcp
                && !exempt(&cfg, cgroup_id)
                && cfg.flags & CONFIG_FLAG_V4 != 0
                && v4 == IMDS_V4
                && port == IMDS_PORT),
            "{c4:?} passed"
        ),
    }
    let c6 = Connect {
        is_tcp,
        cgroup_id,
        dst_addr: v6,
        dst_port: port,
    };
    if let Action::Redirect { addr, port: to } = decide_connect6(&cfg, c6) {
        assert!(is_tcp && !exempt(&cfg, cgroup_id) && port == IMDS_PORT);
        let mapped_imds =
            v6[..3] == [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff])] && v6[3] == IMDS_V4;
        assert!(v6 == IMDS_V6 || mapped_imds, "{c6:?}");
        let to_v6 = addr == cfg.v6_addr && to == cfg.v6_port && cfg.flags & CONFIG_FLAG_V6 != 0;
        let to_v4 = addr[3] == cfg.v4_addr && to == cfg.v4_port && cfg.flags & CONFIG_FLAG_V4 != 0;
        assert!(to_v6 || to_v4, "redirected elsewhere: {addr:?}:{to}");
    }
}

pub fn egress(data: &[u8]) {
    let cfg = config_from(data);
    let rest = data.get(36..).unwrap_or_default();
    let b = |k: usize| rest.get(k).copied().unwrap_or(0);
    let w = |k: usize| u32::from_ne_bytes([b(k), b(k + 1), b(k + 2), b(k + 3)]);
    let cgroup_id = u64::from(b(0) % 4);
    let dst = match b(1) % 5 {
        0 => Destination::V4(IMDS_V4),
        1 => Destination::V6(IMDS_V6),
        2 => Destination::V4(w(2)),
        3 => Destination::V6([w(2), w(6), w(10), IMDS_V4]),
        _ => Destination::V6([w(2), w(6), w(10), w(14)]),
    };
    let verdict = decide_egress(&cfg, cgroup_id, dst);
    let metadata = match dst {
        Destination::V4(a) => a == IMDS_V4,
        Destination::V6(a) => {
            a == IMDS_V6
                || (a[3] == IMDS_V4
                    && [
                        [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff])],
                        [0, 0, 0],
                        [u32::from_ne_bytes([0, 0x64, 0xff, 0x9b]), 0, 0],
                    ]
                    .contains(&[a[0], a[1], a[2]]))
        }
    };
    let configured = cfg.flags & (CONFIG_FLAG_V4 | CONFIG_FLAG_V6) != 0;
    let should_drop = metadata && configured && !exempt(&cfg, cgroup_id);
    assert_eq!(
        verdict != EgressVerdict::Pass,
        should_drop,
        "{dst:?} from {cgroup_id} with {cfg:?}: {verdict:?}"
    );
}

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// Every target by name, for `cargo xtask fuzz` and the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("paths", paths),
    ("token", token),
    ("bindings", bindings),
    ("role_arn", role_arn),
    ("cgroup_pod", cgroup_pod),
    ("annotations", annotations),
    ("time", time),
    ("connect", connect),
    ("egress", egress),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed corpus of every target still passes (a regression suite).
    #[test]
    fn committed_corpus_replays() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut ran = 0;
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
            for entry in entries {
                let path = entry.expect("entry").path();
                let data = std::fs::read(&path).expect("read");
                target(&data);
                ran += 1;
            }
        }
        assert!(ran >= TARGETS.len(), "only {ran} corpus inputs");
    }
}
