//! `list` with pagination and consistent snapshots, and watch streams.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use crate::kube_fake::store::{ApiError, Filter, ObjKey, WatchMsg, RESOURCES};

use super::dispatch::{filter_of, parse_rv};
use super::{json_resp, Body, Shared};

#[derive(Serialize, Deserialize)]
pub(super) struct Continue {
    rv: u64,
    start: ObjKey,
}

pub(super) fn list(
    shared: &Arc<Shared>,
    res: usize,
    ns: Option<String>,
    query: &BTreeMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let filter = filter_of(res, ns, query)?;
    let limit: usize = match query.get("limit") {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::new(400, "BadRequest", format!("invalid limit {l:?}")))?
            .max(0) as usize,
        None => 0,
    };
    let store = shared.store();
    let (at, start) = if let Some(token) = query.get("continue").filter(|c| !c.is_empty()) {
        let c: Continue = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ApiError::new(400, "BadRequest", "continue key is not valid"))?;
        if c.rv < store.compacted() {
            return Err(ApiError::new(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            ));
        }
        (c.rv, Some(c.start))
    } else {
        let rv = parse_rv(query.get("resourceVersion"))?;
        let exact = query.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
        match rv {
            Some(rv) if rv > store.rv() => {
                return Err(ApiError::new(
                    504,
                    "Timeout",
                    format!("Too large resource version: {rv}, current: {}", store.rv()),
                ));
            }
            Some(rv) if exact => (rv, None),
            _ => (store.rv(), None),
        }
    };
    let snap = store.snapshot(res, Some(at))?;
    drop(store);
    let mut items = Vec::new();
    let mut next = None;
    let mut remaining = 0usize;
    let iter = snap
        .iter()
        .filter(|(k, _)| start.as_ref().is_none_or(|s| *k > s))
        .filter(|(_, o)| filter.matches(o));
    for (k, o) in iter {
        if limit > 0 && items.len() >= limit {
            remaining += 1;
            continue;
        }
        let mut item = (**o).clone();
        if let Some(m) = item.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
        }
        items.push(item);
        if limit > 0 && items.len() == limit {
            next = Some(k.clone());
        }
    }
    let r = &RESOURCES[res];
    let mut meta = json!({ "resourceVersion": at.to_string() });
    if remaining > 0 {
        let token = serde_json::to_vec(&Continue {
            rv: at,
            start: next.unwrap_or_default(),
        })
        .unwrap_or_default();
        meta["continue"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token));
        if filter.fields.is_empty()
            && query
                .get("labelSelector")
                .is_none_or(std::string::String::is_empty)
        {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    Ok(json_resp(
        200,
        &json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.api_version(),
            "metadata": meta,
            "items": items,
        }),
    ))
}

pub(super) fn start_watch(
    shared: &Arc<Shared>,
    res: usize,
    filter: Filter,
    query: &BTreeMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let rv = parse_rv(query.get("resourceVersion"))?;
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    let initial = query
        .get("sendInitialEvents")
        .is_some_and(|v| v == "true" || v == "1");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(16);
    let registered = {
        let mut store = shared.store();
        // sendInitialEvents: the state first, whatever the resource version says.
        let from = if initial { None } else { rv };
        store.watch(res, from, filter, initial && bookmarks, tx.clone())
    };
    let id = match registered {
        Ok(id) => Some(id),
        Err(e) => {
            // Like the watch cache: 200, one ERROR event with the Status, end.
            let _ = tx.send(WatchMsg::Line(crate::kube_fake::store::line(
                "ERROR",
                &e.status(),
            )));
            let _ = tx.send(WatchMsg::End);
            None
        }
    };
    let shared2 = shared.clone();
    tokio::spawn(async move {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let interval = Duration::from_millis(shared2.bookmark_ms.load(Ordering::SeqCst).max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(WatchMsg::Line(l)) => {
                        if out_tx.send(Ok(Frame::data(Bytes::from(l)))).await.is_err() {
                            break;
                        }
                    }
                    Some(WatchMsg::End) | None => break,
                    Some(WatchMsg::Abort) => {
                        let _ = out_tx.send(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "watch aborted by the test"))).await;
                        break;
                    }
                },
                _ = tick.tick(), if bookmarks && id.is_some() => {
                    if let Some(id) = id {
                        shared2.store().send_bookmark(id);
                    }
                }
                () = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
                () = out_tx.closed() => break,
            }
        }
        if let Some(id) = id {
            shared2.store().unregister(id);
        }
    });
    let stream = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        hyper::header::TRANSFER_ENCODING,
        hyper::header::HeaderValue::from_static("chunked"),
    );
    Ok(resp)
}
