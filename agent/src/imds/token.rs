//! IMDSv2 session tokens, minted by iamlet itself (never fetched from the real service).
//!
//! A token is `base64url(version ‖ expiry ‖ HMAC-SHA256(key, version ‖ expiry ‖ subject))`,
//! with a key drawn at random when the process starts. It is bound to the subject that minted
//! it (the pod UID, or the cgroup id for a caller outside any pod): presented by anyone else
//! it fails verification. Restarting the agent invalidates all tokens; SDKs answer the 401 by
//! fetching a new one.
//!
//! Checking a token is one HMAC (with the key's state computed once, two SHA-256 blocks,
//! on the CPU's SHA instructions where it has them). A connection remembers the last token it
//! was accepted with ([`TokenMemo`]), so an SDK sending the same token on a keep-alive
//! connection pays a byte comparison; nothing else keeps tokens, so no client can grow a
//! cache by minting them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const BODY_LEN: usize = 1 + 8;
const TOKEN_LEN: usize = BODY_LEN + 32;

/// Shortest TTL a client may ask for, in seconds.
pub(crate) const MIN_TTL: u64 = 1;
/// Longest TTL a client may ask for, in seconds (6 hours, as the real service).
pub(crate) const MAX_TTL: u64 = 21_600;

/// Why a token was refused (all answered 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token is expired")]
    Expired,
    #[error("the token was not issued to this caller")]
    NotYours,
}

/// Mints and verifies tokens with one secret key.
pub(crate) struct TokenKey {
    key: [u8; 32],
    /// The HMAC state after the key (cloned for each token).
    keyed: HmacSha256,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<secret>)")
    }
}

impl TokenKey {
    /// A fresh random key.
    pub(crate) fn random() -> Result<Self, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(TokenKey::from_bytes(key))
    }

    /// A key from given bytes: a predecessor's (handover) or a test's.
    pub(crate) fn from_bytes(key: [u8; 32]) -> Self {
        // HMAC takes keys of any length; 32 bytes never fails.
        let Ok(keyed) = HmacSha256::new_from_slice(&key) else {
            unreachable!("HMAC accepts any key length")
        };
        TokenKey { key, keyed }
    }

    /// The key's bytes, handed to a successor so tokens SDKs hold stay valid across upgrades.
    pub(crate) fn to_bytes(&self) -> [u8; 32] {
        self.key
    }

    fn mac(&self, body: &[u8], subject: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(body);
        mac.update(&(subject.len() as u64).to_be_bytes());
        mac.update(subject);
        mac
    }

    /// A token for `subject` valid for `ttl_secs` from `now_secs` (Unix time).
    pub(crate) fn mint(&self, subject: &[u8], now_secs: u64, ttl_secs: u64) -> String {
        let mut raw = [0u8; TOKEN_LEN];
        raw[0] = VERSION;
        raw[1..BODY_LEN].copy_from_slice(&(now_secs + ttl_secs).to_be_bytes());
        let tag = self.mac(&raw[..BODY_LEN], subject).finalize().into_bytes();
        raw[BODY_LEN..].copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks that `token` was minted by this key for `subject` and is not expired; returns
    /// its expiry (Unix seconds).
    pub(crate) fn verify(
        &self,
        token: &str,
        subject: &[u8],
        now_secs: u64,
    ) -> Result<u64, TokenError> {
        if token.len() > 128 {
            return Err(TokenError::Malformed);
        }
        // Exactly what was minted: the HTTP parser has already taken the field's surrounding
        // whitespace away, and any other byte makes it another token.
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        if raw.len() != TOKEN_LEN || raw[0] != VERSION {
            return Err(TokenError::Malformed);
        }
        // Constant-time comparison of the tag.
        self.mac(&raw[..BODY_LEN], subject)
            .verify_slice(&raw[BODY_LEN..])
            .map_err(|_| TokenError::NotYours)?;
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&raw[1..BODY_LEN]);
        let expiry = u64::from_be_bytes(expiry);
        if expiry <= now_secs {
            return Err(TokenError::Expired);
        }
        Ok(expiry)
    }
}

/// Parses the `X-aws-ec2-metadata-token-ttl-seconds` header value.
pub(crate) fn parse_ttl(value: Option<&[u8]>) -> Result<u64, String> {
    let value = value.ok_or("missing X-aws-ec2-metadata-token-ttl-seconds header")?;
    let text = std::str::from_utf8(value)
        .map_err(|_| "X-aws-ec2-metadata-token-ttl-seconds is not text")?
        .trim();
    let ttl: u64 = text
        .parse()
        .map_err(|_| format!("X-aws-ec2-metadata-token-ttl-seconds {text:?} is not an integer"))?;
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(format!(
            "X-aws-ec2-metadata-token-ttl-seconds {ttl} is outside {MIN_TTL}..={MAX_TTL}"
        ));
    }
    Ok(ttl)
}

/// Whether a TTL header value that [`parse_ttl`] accepted is written as its number's own text
/// (digits, no leading zero, no spaces), so that echoing it is echoing the number.
pub(crate) fn is_canonical_ttl(value: &[u8]) -> bool {
    !value.is_empty() && value[0] != b'0' && value.iter().all(u8::is_ascii_digit)
}

/// The last token one connection was accepted with, and its expiry (see the module doc).
/// A connection belongs to one caller, so a token remembered here was verified for it.
#[derive(Debug, Default)]
pub(crate) struct TokenMemo(std::sync::Mutex<Option<(Box<[u8]>, u64)>>);

impl TokenMemo {
    /// Whether `token` is the one remembered and is still valid at `now_secs`.
    pub(crate) fn accepts(&self, token: &[u8], now_secs: u64) -> bool {
        let memo = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        matches!(&*memo, Some((t, expiry)) if **t == *token && *expiry > now_secs)
    }

    /// Remembers `token`, just verified, valid until `expiry` (seconds).
    pub(crate) fn remember(&self, token: &[u8], expiry: u64) {
        let mut memo = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &mut *memo {
            // The same token again (its expiry cannot differ: it is in the token).
            Some((t, _)) if **t == *token => {}
            // A new token as long as the last (as iamlet's all are): no allocation.
            Some((t, e)) if t.len() == token.len() => {
                t.copy_from_slice(token);
                *e = expiry;
            }
            _ => *memo = Some((token.into(), expiry)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_and_expire() {
        let key = TokenKey::from_bytes([7; 32]);
        let t = key.mint(b"pod-a", 1000, 60);
        assert_eq!(key.verify(&t, b"pod-a", 1000), Ok(1060));
        assert_eq!(key.verify(&t, b"pod-a", 1059), Ok(1060));
        assert_eq!(key.verify(&t, b"pod-a", 1060), Err(TokenError::Expired));
        assert_eq!(key.verify(&t, b"pod-b", 1000), Err(TokenError::NotYours));
        let other = TokenKey::from_bytes([8; 32]);
        assert_eq!(other.verify(&t, b"pod-a", 1000), Err(TokenError::NotYours));
    }

    #[test]
    fn tampering_and_garbage_are_refused() {
        let key = TokenKey::from_bytes([7; 32]);
        let t = key.mint(b"pod-a", 1000, 60);
        // Extend the expiry without the key: the tag no longer matches.
        let mut raw = URL_SAFE_NO_PAD.decode(&t).expect("b64");
        raw[8] = raw[8].wrapping_add(1);
        let forged = URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(
            key.verify(&forged, b"pod-a", 1000),
            Err(TokenError::NotYours)
        );
        for junk in ["", "abc", "!!!!", &"A".repeat(200), &t[..t.len() - 1]] {
            assert!(key.verify(junk, b"pod-a", 1000).is_err(), "{junk:?}");
        }
        // Only the exact token: padding (found by the fuzzer) makes it another one.
        for padded in [format!("\x0c{t}\t"), format!(" {t}"), format!("{t}\n")] {
            assert!(key.verify(&padded, b"pod-a", 1000).is_err(), "{padded:?}");
        }
    }

    #[test]
    fn a_connection_remembers_one_token_until_it_expires() {
        let memo = TokenMemo::default();
        assert!(!memo.accepts(b"t1", 100), "nothing remembered yet");
        memo.remember(b"t1", 160);
        assert!(memo.accepts(b"t1", 159));
        assert!(!memo.accepts(b"t1", 160), "expired");
        assert!(!memo.accepts(b"t2", 100), "another token is checked");
        memo.remember(b"t2", 200);
        assert!(memo.accepts(b"t2", 180), "kept with its own expiry");
        assert!(!memo.accepts(b"t1", 100), "only the last one is kept");
        memo.remember(b"longer", 300);
        assert!(memo.accepts(b"longer", 250));
        assert!(!memo.accepts(b"t2", 100));
    }

    #[test]
    fn canonical_ttl_text() {
        for ok in ["21600", "1", "60"] {
            assert!(is_canonical_ttl(ok.as_bytes()), "{ok}");
        }
        for not in ["021600", " 60", "60 ", "6e1", "", "+60"] {
            assert!(!is_canonical_ttl(not.as_bytes()), "{not:?}");
        }
    }

    #[test]
    fn ttl_header() {
        assert_eq!(parse_ttl(Some(b"21600")), Ok(21_600));
        assert_eq!(parse_ttl(Some(b" 1 ")), Ok(1));
        for bad in [&b"0"[..], b"21601", b"-5", b"abc", b"", b"1.5", b"\xff"] {
            assert!(parse_ttl(Some(bad)).is_err(), "{bad:?}");
        }
        assert!(parse_ttl(None).is_err());
    }
}
