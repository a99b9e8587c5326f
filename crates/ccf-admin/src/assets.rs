//! The web dashboard, embedded into the binary at build time (see `build.rs`): the files of
//! `web/dist`, or a page explaining how to build the dashboard when it was not built.
//!
//! Paths are URL paths (`/assets/index-abc.js`). Any non-API path that is not a file and does
//! not look like one gets `index.html`, so the dashboard's client-side routes (`/groups`,
//! `/requests/<id>`) survive a reload.

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// The embedded file at `path` and its content type, if there is one.
///
/// `/` and unknown non-API paths answer `index.html`; `/api/...` and missing files under
/// `/assets/` (or with a file extension) answer `None`.
pub fn asset(path: &str) -> Option<(&'static [u8], &'static str)> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = if path.is_empty() { "/" } else { path };
    if path == "/api" || path.starts_with("/api/") {
        return None;
    }
    if let Some(found) = find(path) {
        return Some(found);
    }
    let last = path.rsplit('/').next().unwrap_or_default();
    if path.starts_with("/assets/") || last.contains('.') {
        return None;
    }
    find("/index.html")
}

/// Whether the real dashboard (rather than the "how to build it" page) is embedded; reported as
/// `dashboard_built` by `GET /api/v1/status`.
pub fn dashboard_built() -> bool {
    DASHBOARD_BUILT
}

fn find(path: &str) -> Option<(&'static [u8], &'static str)> {
    FILES
        .iter()
        .find(|(url, _, _)| *url == path)
        .map(|(_, bytes, content_type)| (*bytes, *content_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_served_for_root_and_client_routes() {
        let (index, ctype) = asset("/").expect("index");
        assert_eq!(ctype, "text/html; charset=utf-8");
        assert!(std::str::from_utf8(index).expect("utf-8").contains("<html"));
        assert_eq!(asset("/groups").map(|a| a.0), Some(index));
        assert_eq!(asset("/requests/abc-123").map(|a| a.0), Some(index));
        assert_eq!(asset("/index.html").map(|a| a.0), Some(index));
    }

    #[test]
    fn api_and_missing_files_are_not_assets() {
        assert!(asset("/api/v1/status").is_none());
        assert!(asset("/api").is_none());
        assert!(asset("/assets/missing.js").is_none());
        assert!(asset("/favicon.ico").is_none());
    }

    #[test]
    fn built_assets_have_content_types() {
        for (url, bytes, ctype) in FILES {
            assert!(url.starts_with('/'));
            assert!(!bytes.is_empty() || !url.ends_with(".html"));
            if url.ends_with(".js") {
                assert!(ctype.starts_with("text/javascript"));
            }
        }
        if DASHBOARD_BUILT {
            assert!(FILES.iter().any(|(url, _, _)| url.ends_with(".js")));
        }
    }
}
