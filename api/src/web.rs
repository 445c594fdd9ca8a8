//! The web pages — the public app at `/` and the agency console at
//! `/console` — embedded in the binary by `build.rs`. Fingerprinted assets
//! (`/assets/NAME.HASH.EXT`) are cached for a year; the entry points (the
//! pages, the service worker, the manifest) revalidate with their `ETag`.
//! Every answer carries a strict Content-Security-Policy (scripts and
//! styles from this origin only, no inline script) and is sent gzipped to
//! a client that takes it.

use std::collections::HashMap;
use std::io::Write;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::{ApiError, AppState};

/// One embedded file.
#[derive(Debug)]
pub(crate) struct Asset {
    path: &'static str,
    mime: &'static str,
    immutable: bool,
    etag: &'static str,
    body: &'static [u8],
    gzip: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// How the public map is drawn.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// Raster tiles (`https://tiles.example/{z}/{x}/{y}.png`); without it
    /// the map draws the city's outline shipped in the binary.
    pub tiles_url: Option<String>,
    /// The tiles' attribution, shown on the map.
    pub tiles_attribution: Option<String>,
}

/// An entry point rendered for this deployment.
#[derive(Debug)]
struct Page {
    mime: &'static str,
    etag: String,
    body: Bytes,
    gzip: Option<Bytes>,
}

/// The pages as this process serves them.
#[derive(Debug)]
pub struct Web {
    pages: HashMap<&'static str, Page>,
    csp: HeaderValue,
}

fn attr_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The origin (`https://host[:port]`) of a tile URL template, checked.
fn tiles_origin(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("tile URL {url:?} must start with https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '{' | '}'));
    if !ok {
        return Err(format!("tile URL {url:?}: {host:?} is not a host name"));
    }
    for p in ["{z}", "{x}", "{y}"] {
        if !url.contains(p) {
            return Err(format!("tile URL {url:?} has no {p}"));
        }
    }
    // `{s}` subdomains become a wildcard the policy allows.
    Ok(format!("https://{}", host.replace("{s}", "*")))
}

impl Web {
    /// The pages for `cfg`; an error names what is wrong in it.
    pub fn new(cfg: &WebConfig) -> Result<Self, String> {
        let origin = cfg.tiles_url.as_deref().map(tiles_origin).transpose()?;
        let mut pages = HashMap::new();
        for a in ASSETS.iter().filter(|a| !a.immutable) {
            let mut body = Bytes::from_static(a.body);
            let mut gzip = a.gzip.map(Bytes::from_static);
            let mut etag = a.etag.to_owned();
            if let (true, Some(url)) = (a.mime.starts_with("text/html"), &cfg.tiles_url) {
                let text = String::from_utf8_lossy(a.body)
                    .replace(
                        "data-tiles=\"\"",
                        &format!("data-tiles=\"{}\"", attr_escape(url)),
                    )
                    .replace(
                        "data-tiles-attribution=\"\"",
                        &format!(
                            "data-tiles-attribution=\"{}\"",
                            attr_escape(cfg.tiles_attribution.as_deref().unwrap_or(""))
                        ),
                    );
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                enc.write_all(text.as_bytes())
                    .and_then(|()| enc.flush())
                    .map_err(|e| e.to_string())?;
                gzip = Some(Bytes::from(enc.finish().map_err(|e| e.to_string())?));
                etag = format!("\"{:016x}\"", {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::hash::DefaultHasher::new();
                    text.hash(&mut h);
                    h.finish()
                });
                body = Bytes::from(text);
            }
            pages.insert(
                a.path,
                Page {
                    mime: a.mime,
                    etag,
                    body,
                    gzip,
                },
            );
        }
        let img = match &origin {
            Some(o) => format!("'self' data: {o}"),
            None => "'self' data:".to_owned(),
        };
        let csp = format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src {img}; \
             connect-src 'self'; manifest-src 'self'; worker-src 'self'; \
             base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        );
        Ok(Self {
            pages,
            csp: HeaderValue::from_str(&csp).map_err(|e| e.to_string())?,
        })
    }

    /// The embedded file at `path`: media type, whether it never changes,
    /// validator, body and gzipped body.
    fn find(&self, path: &str) -> Option<(&'static str, bool, &str, Bytes, Option<Bytes>)> {
        if let Some(p) = self.pages.get(path) {
            return Some((p.mime, false, &p.etag, p.body.clone(), p.gzip.clone()));
        }
        ASSETS
            .iter()
            .find(|a| a.immutable && a.path == path)
            .map(|a| {
                (
                    a.mime,
                    true,
                    a.etag,
                    Bytes::from_static(a.body),
                    a.gzip.map(Bytes::from_static),
                )
            })
    }

    /// Every embedded path (the pages, then the fingerprinted assets).
    pub fn paths(&self) -> impl Iterator<Item = &'static str> + '_ {
        ASSETS.iter().map(|a| a.path)
    }
}

fn takes_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|c| {
            let mut parts = c.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let q0 = parts.any(|p| p.replace(' ', "") == "q=0" || p == "q=0.0");
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !q0
        })
}

/// Serves the page or asset at the request's path.
pub(crate) async fn serve(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = match uri.path() {
        "/console/" => "/console",
        p => p,
    };
    let (mime, immutable, etag, body, gzip) = state
        .web
        .find(path)
        .ok_or_else(|| ApiError::NotFound("route".into()))?;
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_SECURITY_POLICY, state.web.csp.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    let known = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| {
            k.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag)
        });
    if known {
        return Ok((StatusCode::NOT_MODIFIED, h).into_response());
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    let body = match gzip {
        Some(gz) if takes_gzip(&headers) => {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            gz
        }
        _ => body,
    };
    Ok((h, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_and_its_assets_are_embedded() {
        let web = Web::new(&WebConfig::default()).expect("default config");
        for p in ["/", "/console", "/sw.js", "/manifest.webmanifest"] {
            let (_, immutable, ..) = web.find(p).unwrap_or_else(|| panic!("{p} embedded"));
            assert!(!immutable, "{p} revalidates");
        }
        // Every /assets/ URL a page names is embedded.
        for p in ["/", "/console", "/sw.js"] {
            let (_, _, _, body, _) = web.find(p).expect("embedded");
            let text = String::from_utf8(body.to_vec()).expect("UTF-8");
            let mut n = 0;
            for (i, _) in text.match_indices("/assets/") {
                let url: String = text[i..]
                    .chars()
                    .take_while(|c| !matches!(c, '"' | '\'' | ' ' | ')' | ','))
                    .collect();
                if url == "/assets/" {
                    // The service worker's own test of a path.
                    continue;
                }
                let (_, immutable, ..) = web.find(&url).unwrap_or_else(|| panic!("{p}: {url}"));
                assert!(immutable, "{url} is fingerprinted");
                n += 1;
            }
            assert!(n > 0, "{p} names its assets");
            assert!(!text.contains("{{"), "{p}: a placeholder was left");
        }
    }

    #[test]
    fn tile_urls_are_checked_and_allowed_by_the_policy() {
        assert!(tiles_origin("http://t.example/{z}/{x}/{y}.png").is_err());
        assert!(tiles_origin("https://t.example/{z}/{x}.png").is_err());
        assert!(tiles_origin("https://t.exa mple/{z}/{x}/{y}.png").is_err());
        let cfg = WebConfig {
            tiles_url: Some("https://{s}.tile.example.org/{z}/{x}/{y}.png".into()),
            tiles_attribution: Some("© \"Tiles\" <b>".into()),
        };
        let web = Web::new(&cfg).expect("a valid tile URL");
        let csp = web.csp.to_str().expect("ASCII");
        assert!(
            csp.contains("img-src 'self' data: https://*.tile.example.org;"),
            "{csp}"
        );
        let (_, _, _, body, gz) = web.find("/").expect("the public page");
        let text = String::from_utf8(body.to_vec()).expect("UTF-8");
        assert!(
            text.contains("data-tiles=\"https://{s}.tile.example.org/{z}/{x}/{y}.png\""),
            "{text}"
        );
        assert!(text.contains("data-tiles-attribution=\"© &quot;Tiles&quot; &lt;b&gt;\""));
        let mut unzipped = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(&gz.expect("gzipped")[..]),
            &mut unzipped,
        )
        .expect("gzip");
        assert_eq!(unzipped, text);
    }

    #[test]
    fn gzip_is_sent_only_to_clients_that_take_it() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(v).expect("ASCII"),
            );
            m
        };
        assert!(takes_gzip(&h("gzip, deflate, br")));
        assert!(takes_gzip(&h("br;q=1.0, gzip;q=0.8")));
        assert!(!takes_gzip(&h("gzip;q=0")));
        assert!(!takes_gzip(&h("br")));
        assert!(!takes_gzip(&HeaderMap::new()));
    }
}
