//! The browser-facing files the node serves itself: the first-party client
//! (`/client.js`) and the live demo page (`/`). Both are embedded at build
//! time from `clients/`, so `cargo build` needs no npm and the served client
//! is byte for byte the npm package's module.

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The npm package `roomcast-client`'s module, as served at `/client.js`.
pub const CLIENT_JS: &str = include_str!("../../clients/js/roomcast.js");

/// The demo page served at `/`.
pub const DEMO_HTML: &str = include_str!("../../clients/demo/index.html");

/// An embedded file with the validator browsers revalidate it by.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: HeaderValue,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Asset {
        // FNV-1a over the content: stable across builds of the same file.
        let hash =
            body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let etag = HeaderValue::from_str(&format!("\"{hash:016x}\"")).unwrap_or(HeaderValue::from_static("\"0\""));
        Asset { body, content_type, etag }
    }

    /// 200 with the file, or 304 when the browser's copy is current. Cached
    /// for five minutes, then revalidated: a node upgrade reaches pages soon.
    fn respond(&self, headers: &HeaderMap) -> Response {
        let cache = (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
        let etag = (header::ETAG, self.etag.clone());
        if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == self.etag.as_bytes()) {
            return (StatusCode::NOT_MODIFIED, [cache, etag]).into_response();
        }
        let content_type = (header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        ([content_type, cache, etag], self.body).into_response()
    }
}

static CLIENT: LazyLock<Asset> = LazyLock::new(|| Asset::new(CLIENT_JS, "text/javascript; charset=utf-8"));
static DEMO: LazyLock<Asset> = LazyLock::new(|| Asset::new(DEMO_HTML, "text/html; charset=utf-8"));

/// `GET /client.js`: the client module.
pub async fn client(headers: HeaderMap) -> Response {
    CLIENT.respond(&headers)
}

/// `GET /`: the demo page (`/?room=R` shows room R).
pub async fn demo(headers: HeaderMap) -> Response {
    DEMO.respond(&headers)
}
