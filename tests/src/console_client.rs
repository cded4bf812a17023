//! The web console as a browser without JavaScript uses it: a
//! cookie-carrying client that fills in forms, CSRF token included.

use crate::api::{Api, RawResponse};
use crate::controller::{Controller, ADMIN_USER};

/// A cookie-carrying client of the console, without JavaScript.
pub struct ConsoleClient {
    api: Api,
    cookies: Vec<(String, String)>,
}

impl ConsoleClient {
    pub fn new(controller: &Controller) -> ConsoleClient {
        ConsoleClient {
            api: controller.api().anonymous(),
            cookies: Vec::new(),
        }
    }

    /// The `Cookie` header the client sends.
    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A form request (`application/x-www-form-urlencoded`) with the
    /// cookies so far; keeps the cookies the answer sets.
    pub fn request(&mut self, method: &str, path: &str, form: &[(&str, &str)]) -> RawResponse {
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let cookie = self.cookie_header();
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        if !cookie.is_empty() {
            headers.push(("cookie", cookie.as_str()));
        }
        let r = self
            .api
            .raw_request(method, path, &headers, body.as_bytes());
        for (name, value) in &r.headers {
            if name == "set-cookie" {
                let pair = value.split(';').next().unwrap_or_default();
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                self.cookies.retain(|(n, _)| n != k);
                if !v.is_empty() && !value.contains("Max-Age=0") {
                    self.cookies.push((k.to_string(), v.to_string()));
                }
            }
        }
        r
    }

    pub fn get(&mut self, path: &str) -> RawResponse {
        self.request("GET", path, &[])
    }

    /// A console session of the administrator (logged in, or a panic).
    pub fn admin(controller: &Controller) -> ConsoleClient {
        let mut console = ConsoleClient::new(controller);
        let answer = console.login(controller.admin_password());
        assert_eq!(answer.status, 303, "admin console login: {}", answer.text());
        console
    }

    /// Logs in as the administrator.
    pub fn login(&mut self, password: &str) -> RawResponse {
        self.login_as(ADMIN_USER, password)
    }

    /// Logs in through the login form (with its CSRF token).
    pub fn login_as(&mut self, user: &str, password: &str) -> RawResponse {
        let page = self.get("/login");
        assert_eq!(page.status, 200);
        let csrf = csrf_of(&page.text());
        self.request(
            "POST",
            "/login",
            &[("csrf", &csrf), ("username", user), ("password", password)],
        )
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The CSRF token of the first form in a page.
pub fn csrf_of(html: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("no CSRF field in {html}"))
        + marker.len();
    html[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_string()
}
