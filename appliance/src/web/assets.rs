//! Static files from `assets/`, embedded in the binary at build time.

use hyper::{Response, StatusCode};

use crate::http::{response, Body};

const STYLE_CSS: &str = include_str!("../../../assets/style.css");
const FAVICON_SVG: &str = include_str!("../../../assets/lifeboat.svg");
const LIFEBOAT_MIB: &str = include_str!("../../../assets/LIFEBOAT-MIB.txt");

pub fn serve(path: &str) -> Response<Body> {
    let mut r = match path {
        "/assets/style.css" => response(StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS),
        "/assets/lifeboat.svg" => response(StatusCode::OK, "image/svg+xml", FAVICON_SVG),
        "/assets/LIFEBOAT-MIB.txt" => {
            response(StatusCode::OK, "text/plain; charset=utf-8", LIFEBOAT_MIB)
        }
        _ => return response(StatusCode::NOT_FOUND, "text/plain", "not found"),
    };
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("public, max-age=3600"),
    );
    r
}
