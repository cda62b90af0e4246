//! Which requests the fast path answers itself, decided from the bytes received.
//!
//! A request qualifies when hyper would read it the same way and its answer depends on its
//! head alone: an HTTP/1.1 `GET` or `PUT` in origin form, whose target is plain path
//! characters (no query, no percent sign needed by any route), without a body
//! (`Content-Length` absent or `0`, no `Transfer-Encoding`), and with nothing that changes
//! how the connection goes on but a `close` (`Connection` absent, `keep-alive` or `close`; no
//! `Expect`, no `Upgrade`). Everything else, valid or not, is hyper's to answer.

use std::ops::Range;

use hyper::header::HeaderName;
use hyper::Method;

use crate::imds::paths;
use crate::server::RequestHeaders;

/// Most headers a request may have (hyper's limit; more get 431 from hyper).
const MAX_HEADERS: usize = 100;

/// What the bytes received so far hold.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// A request the fast path answers; its head is this many bytes (in the [`HeadIndex`]).
    Simple(usize),
    /// Anything else: hyper serves it, and the rest of the connection.
    Other,
}

/// Where a parsed head's parts lie in the bytes it was parsed from (kept per connection, so
/// parsing allocates nothing once its first request has been read).
#[derive(Debug)]
pub(super) struct HeadIndex {
    put: bool,
    /// The client asked for the connection to close after the answer.
    close: bool,
    path: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
}

/// A parsed request head, as a handler reads it.
#[derive(Debug)]
pub(crate) struct RequestHead<'a> {
    /// `GET` or `PUT`.
    pub(crate) method: &'a Method,
    /// The path, as hyper's `uri().path()` gives it.
    pub(crate) path: &'a str,
    /// The headers.
    pub(crate) headers: &'a ParsedHeaders<'a>,
}

/// The headers of a parsed head.
#[derive(Debug)]
pub(crate) struct ParsedHeaders<'a> {
    bytes: &'a [u8],
    index: &'a [(Range<usize>, Range<usize>)],
}

impl RequestHeaders for ParsedHeaders<'_> {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        let name = name.as_str().as_bytes();
        self.index
            .iter()
            .find(|(n, _)| self.bytes[n.clone()].eq_ignore_ascii_case(name))
            .map(|(_, v)| &self.bytes[v.clone()])
    }
}

impl Default for HeadIndex {
    fn default() -> Self {
        HeadIndex {
            put: false,
            close: false,
            path: 0..0,
            // An SDK's request has 3 to 8 headers.
            headers: Vec::with_capacity(16),
        }
    }
}

impl HeadIndex {
    /// Parses the head at the start of `bytes`.
    pub(super) fn parse(&mut self, bytes: &[u8]) -> Parsed {
        let mut storage =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            bytes,
            &mut storage,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Other,
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Parsed::Other;
        };
        self.put = match method {
            "GET" => false,
            "PUT" => true,
            _ => return Parsed::Other,
        };
        if !is_plain_path(target.as_bytes()) {
            return Parsed::Other;
        }
        self.path = offset_in(bytes, target.as_bytes());
        self.headers.clear();
        self.close = false;
        for header in req.headers.iter() {
            match effect(header.name.as_bytes(), header.value) {
                Effect::None => {}
                Effect::Close => self.close = true,
                Effect::Other => return Parsed::Other,
            }
            self.headers.push((
                offset_in(bytes, header.name.as_bytes()),
                offset_in(bytes, header.value),
            ));
        }
        Parsed::Simple(len)
    }

    /// Whether the head last parsed asked for the connection to close after its answer.
    pub(super) fn close(&self) -> bool {
        self.close
    }

    /// The head last parsed as [`Parsed::Simple`] from `bytes`.
    pub(super) fn head<'a>(
        &'a self,
        bytes: &'a [u8],
    ) -> (&'static Method, &'a str, ParsedHeaders<'a>) {
        static GET: Method = Method::GET;
        static PUT: Method = Method::PUT;
        // The path was checked to be ASCII.
        let path = std::str::from_utf8(&bytes[self.path.clone()]).unwrap_or("/");
        let headers = ParsedHeaders {
            bytes,
            index: &self.headers,
        };
        (if self.put { &PUT } else { &GET }, path, headers)
    }
}

/// Where `part`, a slice of `whole`, lies in it.
fn offset_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    start..start + part.len()
}

/// Whether `target` is an origin-form path of characters every route is made of (the
/// metadata API's segment alphabet and `/`), which hyper's URI parser keeps as they are: no
/// query, fragment or percent-encoding.
fn is_plain_path(target: &[u8]) -> bool {
    target.first() == Some(&b'/')
        && target
            .iter()
            .all(|&b| b == b'/' || paths::is_segment_byte(b))
}

/// What a header does to the request's course.
enum Effect {
    /// Nothing: the request is bodiless and the connection goes on (as far as it says).
    None,
    /// The connection is to close after the answer.
    Close,
    /// Something the fast path leaves to hyper (a body, an upgrade, an expectation).
    Other,
}

fn effect(name: &[u8], value: &[u8]) -> Effect {
    let other = |plain: bool| if plain { Effect::None } else { Effect::Other };
    if name.eq_ignore_ascii_case(b"content-length") {
        other(value == b"0")
    } else if name.eq_ignore_ascii_case(b"connection") {
        if value.eq_ignore_ascii_case(b"close") {
            Effect::Close
        } else {
            other(value.eq_ignore_ascii_case(b"keep-alive"))
        }
    } else {
        other(
            !(name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"expect")
                || name.eq_ignore_ascii_case(b"upgrade")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Parsed {
        HeadIndex::default().parse(text.as_bytes())
    }

    #[test]
    fn sdk_requests_are_simple() {
        let put = "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\
                   X-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse(put), Parsed::Simple(put.len()));
        let get = "GET /latest/meta-data/iam/security-credentials/role-a@x.y HTTP/1.1\r\n\
                   Connection: keep-alive\r\n\r\nGET /next";
        assert_eq!(parse(get), Parsed::Simple(get.len() - "GET /next".len()));
    }

    #[test]
    fn the_head_gives_method_path_and_the_first_of_each_header() {
        let text = b"PUT /latest/api/token HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\n\r\n";
        let mut index = HeadIndex::default();
        assert_eq!(index.parse(text), Parsed::Simple(text.len()));
        let (method, path, headers) = index.head(text);
        assert_eq!((method, path), (&Method::PUT, "/latest/api/token"));
        let name = HeaderName::from_static("x-a");
        assert_eq!(headers.first(&name), Some(&b"1"[..]));
        assert_eq!(headers.first(&HeaderName::from_static("x-b")), None);
    }

    #[test]
    fn plain_paths_are_the_routes_characters() {
        assert!(is_plain_path(
            b"/latest/meta-data/iam/security-credentials/a+b=c,d.e@f_g-h~i:j"
        ));
        for bad in [
            &b""[..],
            b"latest",
            b"/a?b",
            b"/a#b",
            b"/a%2D",
            b"/a b",
            b"/\xc3\xa9",
            b"/a\\b",
        ] {
            assert!(!is_plain_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_close_is_noted() {
        let mut index = HeadIndex::default();
        let text = b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: Close\r\n\r\n";
        assert_eq!(index.parse(text), Parsed::Simple(text.len()));
        assert!(index.close());
        assert_eq!(index.parse(b"GET / HTTP/1.1\r\n\r\n"), Parsed::Simple(18));
        assert!(!index.close());
    }

    #[test]
    fn a_head_cut_short_is_partial() {
        assert_eq!(
            parse("GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        );
        assert_eq!(parse("GE"), Parsed::Partial);
    }

    #[test]
    fn everything_else_is_hypers() {
        for text in [
            "HEAD /latest/meta-data/ HTTP/1.1\r\n\r\n",
            "POST /latest/api/token HTTP/1.1\r\n\r\n",
            "GET /latest/meta-data/ HTTP/1.0\r\n\r\n",
            "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n\r\n",
            "GET /latest/meta-data/?x=1 HTTP/1.1\r\n\r\n",
            "GET /latest/meta%2Ddata/ HTTP/1.1\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
            "PUT /latest/api/token HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "PUT /latest/api/token HTTP/1.1\r\nContent-Length: 00\r\n\r\n",
            "PUT /latest/api/token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /latest/meta-data/ HTTP/1.1\r\nConnection: close, x\r\n\r\n",
            "GET /latest/meta-data/ HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "PUT /latest/api/token HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /latest meta-data HTTP/1.1\r\n\r\n",
            "GET /latest/ HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert_eq!(parse(text), Parsed::Other, "{text:?}");
        }
        let many = "X-A: v\r\n".repeat(MAX_HEADERS + 1);
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Parsed::Other
        );
    }
}
