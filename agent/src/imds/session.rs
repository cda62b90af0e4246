//! What the metadata API keeps per connection.
//!
//! A connection belongs to one caller from its accept on (the kernel named its cgroup then),
//! so what follows from the caller is worked out once per connection, not per request: the
//! subject tokens are bound to (and its bytes, which every mint and verify hashes), and the
//! last token the connection was accepted with ([`TokenMemo`]).

use super::token::TokenMemo;
use super::Subject;
use crate::caller::attribution::Caller;

/// The metadata API's state for one connection of one caller.
#[derive(Debug)]
pub(crate) struct Session {
    subject: Subject,
    /// What tokens of this subject are bound to (`pod:<uid>` or `cgroup:<id>`).
    binding: Box<[u8]>,
    tokens: TokenMemo,
}

impl Session {
    /// A new connection of `caller`.
    pub(crate) fn new(caller: &Caller) -> Self {
        let subject = Subject::of(caller);
        let binding = match &subject {
            Subject::Pod(uid) => format!("pod:{uid}"),
            Subject::Cgroup(id) => format!("cgroup:{id}"),
        };
        Session {
            subject,
            binding: binding.into_bytes().into_boxed_slice(),
            tokens: TokenMemo::default(),
        }
    }

    /// Whose connection this is.
    pub(crate) fn subject(&self) -> &Subject {
        &self.subject
    }

    /// The bytes a token of this subject is bound to.
    pub(crate) fn binding(&self) -> &[u8] {
        &self.binding
    }

    /// The last token accepted on this connection.
    pub(crate) fn tokens(&self) -> &TokenMemo {
        &self.tokens
    }
}
