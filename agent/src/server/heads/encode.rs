//! Writes a response as hyper's HTTP/1.1 server writes it: the status line with the canonical
//! reason, the headers in the response's order with their names in lower case (`connection`
//! values joined on one line), `content-length` after them, then `date` (unless the response
//! has its own), then the body.
//!
//! The responses are iamlet's own: none carries `transfer-encoding` or `trailer`, a 1xx
//! status, or a body it does not know the length of.

use std::cell::RefCell;
use std::time::UNIX_EPOCH;

use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, TRAILER, TRANSFER_ENCODING};
use hyper::StatusCode;

use crate::clock;
use crate::server::Resp;
use crate::timefmt::format_http_date;

/// Appends `resp` to `dst`. With `keep_alive` false the response says `connection: close`.
/// Returns whether the connection is to close once it is sent.
pub(super) fn encode(resp: Resp, keep_alive: bool, dst: &mut Vec<u8>) -> bool {
    let (mut parts, body) = resp.into_parts();
    let body = body.into_inner().unwrap_or_default();
    let status = parts.status;
    debug_assert!(!status.is_informational(), "iamlet never answers 1xx");
    if status == StatusCode::OK {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(b"HTTP/1.1 ");
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    let headers = &mut parts.headers;
    if !keep_alive && !headers.get_all(CONNECTION).iter().any(has_close) {
        headers.append(CONNECTION, HeaderValue::from_static("close"));
    }
    let mut close = !keep_alive;
    let mut wrote_len = false;
    let mut wrote_date = false;
    // A map's values of one name come one after another.
    let mut pairs = headers.iter().peekable();
    while let Some((name, value)) = pairs.next() {
        if *name == CONNECTION {
            dst.extend_from_slice(b"connection: ");
            close |= has_close(value);
            dst.extend_from_slice(value.as_bytes());
            while let Some((_, more)) = pairs.next_if(|(next, _)| *next == CONNECTION) {
                close |= has_close(more);
                dst.extend_from_slice(b", ");
                dst.extend_from_slice(more.as_bytes());
            }
            dst.extend_from_slice(b"\r\n");
        } else if *name == CONTENT_LENGTH {
            // The body's own length is trusted; only the first value is written.
            line(dst, name.as_str(), value.as_bytes());
            while pairs.next_if(|(next, _)| *next == CONTENT_LENGTH).is_some() {}
            wrote_len = true;
        } else if *name == TRANSFER_ENCODING || *name == TRAILER {
            debug_assert!(false, "iamlet's responses carry no {name}");
        } else {
            wrote_date |= *name == DATE;
            line(dst, name.as_str(), value.as_bytes());
        }
    }
    let bodiless = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    if !wrote_len && !bodiless {
        dst.extend_from_slice(b"content-length: ");
        push_decimal(dst, body.len());
        dst.extend_from_slice(b"\r\n");
    }
    if !wrote_date {
        dst.extend_from_slice(b"date: ");
        extend_date(dst);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    if !bodiless {
        dst.extend_from_slice(&body);
    }
    close
}

fn line(dst: &mut Vec<u8>, name: &str, value: &[u8]) {
    dst.extend_from_slice(name.as_bytes());
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal.
fn push_decimal(dst: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        // A digit: 0..=9.
        digits[at] = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[at..]);
}

/// Whether a `Connection` value has the `close` option.
fn has_close(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|option| option.trim_ascii().eq_ignore_ascii_case(b"close"))
}

thread_local! {
    /// The `date` value of the current second, made once a second per thread.
    static DATE_CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends the current time as an HTTP date.
fn extend_date(dst: &mut Vec<u8>) {
    let now = clock::wall();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != second {
            *cache = (second, format_http_date(now));
        }
        dst.extend_from_slice(cache.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::response;

    fn encoded(resp: Resp, keep_alive: bool) -> (String, bool) {
        let mut dst = Vec::new();
        let close = encode(resp, keep_alive, &mut dst);
        let text = String::from_utf8(dst).expect("text");
        // The date varies; its line is checked for shape and taken out.
        let (before, rest) = text.split_once("date: ").expect("a date line");
        let (date, after) = rest.split_once("\r\n").expect("its end");
        assert!(date.ends_with(" GMT") && date.len() == 29, "{date:?}");
        (format!("{before}date: D\r\n{after}"), close)
    }

    #[test]
    fn a_response_is_written_as_hyper_writes_it() {
        let mut resp = response(429, "text/plain", "Too Many Requests\n");
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        assert_eq!(
            encoded(resp, true),
            (
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\nretry-after: 1\r\n\
                 connection: close\r\ncontent-length: 18\r\ndate: D\r\n\r\nToo Many Requests\n"
                    .to_owned(),
                true
            )
        );
        assert_eq!(
            encoded(response(200, "text/plain", "role-a"), true),
            (
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 6\r\n\
                 date: D\r\n\r\nrole-a"
                    .to_owned(),
                false
            )
        );
    }

    #[test]
    fn a_connection_that_is_to_close_says_so_once() {
        let (text, close) = encoded(response(404, "text/plain", ""), false);
        assert!(close);
        assert_eq!(
            text,
            "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\nconnection: close\r\n\
             content-length: 0\r\ndate: D\r\n\r\n"
        );
        let mut resp = response(200, "text/plain", "x");
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("Close"));
        let (text, close) = encoded(resp, false);
        assert!(close);
        assert_eq!(text.matches("onnection:").count(), 1, "{text}");
        // Other values are joined on the one line, `close` after them.
        let mut resp = response(200, "text/plain", "x");
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("x-a"));
        let (text, _) = encoded(resp, false);
        assert!(text.contains("\r\nconnection: x-a, close\r\n"), "{text}");
    }
}
