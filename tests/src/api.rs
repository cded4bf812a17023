//! A REST client for one controller, trusting exactly that controller's CA.
//! HTTP error statuses are answers, not errors: tests assert on them. A
//! transport failure (refused, TLS) panics, except in the `try_` methods.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use ureq::http;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

use crate::wait::poll_until;

/// Bodies up to this size are read; an inventory of 25,000 VMs fits.
const MAX_BODY_BYTES: u64 = 256 * 1024 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Api {
    agent: ureq::Agent,
    base_url: String,
    /// The `Authorization` header value, if any.
    authorization: Option<String>,
}

/// A response as it came, for tests of bad input and of non-JSON pages.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics, showing the body, if it is not JSON.
    pub fn json(&self) -> Value {
        parse_json(self.status, &self.body).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Api {
    /// Makes `user` (with `role`) under an access policy that shows every
    /// VM but `vm`, which it tags `team=secret`; as an administrator.
    pub fn user_without_vm(&self, vm: &str, user: &str, password: &str, role: &str) {
        let (status, body) = self.put(
            &format!("/api/v1/vms/{vm}/categories"),
            &serde_json::json!({"team": "secret"}),
        );
        assert_eq!(status, 200, "{body}");
        let (status, body) = self.post(
            "/api/v1/policies",
            &serde_json::json!({"name": "no-secrets", "rules": [
                {"effect": "allow", "key": "*", "value": "*"},
                {"effect": "deny", "key": "team", "value": "secret"}]}),
        );
        assert!(status == 201 || status == 409, "{body}");
        let (status, body) = self.post(
            "/api/v1/users",
            &serde_json::json!({"name": user, "password": password, "role": role,
                "policies": ["no-secrets"]}),
        );
        assert_eq!(status, 201, "{body}");
    }

    /// An unauthenticated client for `base_url` (`https://127.0.0.1:PORT`)
    /// whose only trusted root is the PEM certificate in `ca_pem`.
    pub fn new(base_url: &str, ca_pem: &Path) -> Result<Api, String> {
        let pem = std::fs::read(ca_pem).map_err(|e| format!("read {}: {e}", ca_pem.display()))?;
        let ca =
            Certificate::from_pem(&pem).map_err(|e| format!("parse {}: {e}", ca_pem.display()))?;
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&[ca]))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .allow_non_standard_methods(true)
            .max_redirects(0)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .new_agent();
        Ok(Api {
            agent,
            base_url: base_url.trim_end_matches('/').to_string(),
            authorization: None,
        })
    }

    /// The same client, authenticating with HTTP Basic.
    pub fn with_basic(&self, user: &str, password: &str) -> Api {
        Api {
            authorization: Some(basic_authorization(user, password)),
            ..self.clone()
        }
    }

    /// The same client, authenticating with `Authorization: Bearer TOKEN`.
    pub fn with_bearer(&self, token: &str) -> Api {
        Api {
            authorization: Some(format!("Bearer {token}")),
            ..self.clone()
        }
    }

    /// The same client, without credentials.
    pub fn anonymous(&self) -> Api {
        Api {
            authorization: None,
            ..self.clone()
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.json_request("GET", path, None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.json_request("POST", path, Some(body))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.json_request("PUT", path, Some(body))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.json_request("DELETE", path, None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Api::get`], but a refused connection or TLS failure is an `Err`
    /// (for waiting on a controller that is starting or was killed).
    pub fn try_get(&self, path: &str) -> Result<(u16, Value), String> {
        self.json_request("GET", path, None)
    }

    /// Sends exactly `body` with `headers` (and this client's credentials,
    /// unless `headers` has an Authorization): for malformed-input tests.
    pub fn raw_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawResponse {
        self.try_raw_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_raw_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<RawResponse, String> {
        let url = format!("{}{path}", self.base_url);
        let mut builder = http::Request::builder().method(method).uri(&url);
        let has_authorization = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("authorization"));
        if let (Some(authorization), false) = (&self.authorization, has_authorization) {
            builder = builder.header("authorization", authorization);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let result = if body.is_empty() {
            builder.body(()).map(|request| self.agent.run(request))
        } else {
            builder
                .body(body.to_vec())
                .map(|request| self.agent.run(request))
        };
        let mut response = result
            .map_err(|e| format!("{method} {url}: bad request: {e}"))?
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_vec()
            .map_err(|e| format!("{method} {url}: reading body: {e}"))?;
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// Mints an enrollment token: `(token, "sha256:HEX" CA fingerprint)`.
    pub fn enrollment_token(&self) -> (String, String) {
        let (status, body) = self.post("/api/v1/enrollment-tokens", &serde_json::json!({}));
        assert!(
            is_success(status),
            "POST /api/v1/enrollment-tokens answered {status}: {body}"
        );
        let field = |name: &str| {
            body[name]
                .as_str()
                .unwrap_or_else(|| panic!("enrollment token answer lacks `{name}`: {body}"))
                .to_string()
        };
        (field("token"), field("ca_fingerprint"))
    }

    /// Polls `/api/v1/jobs/{id}` until the job has succeeded or failed, and
    /// returns it. `job_id` is the `job` field of the answer that started it.
    pub fn wait_job(&self, job_id: &Value, timeout: Duration) -> Value {
        let path = format!("/api/v1/jobs/{}", id_text(job_id));
        poll_until(&format!("job {job_id} to finish"), timeout, || {
            let (status, job) = self.get(&path);
            match (status, job["state"].as_str()) {
                (200, Some("succeeded" | "failed")) => Ok(job),
                _ => Err(format!("{status} {job}")),
            }
        })
    }

    /// POSTs `body` to `path`, which must answer 2xx with `{"job": ID}`,
    /// then waits for that job as [`Api::wait_job`] does.
    pub fn post_job(&self, path: &str, body: &Value, timeout: Duration) -> Value {
        let (status, answer) = self.post(path, body);
        assert!(
            is_success(status),
            "POST {path} {body} answered {status}: {answer}"
        );
        assert!(
            !answer["job"].is_null(),
            "POST {path} answered without a job: {answer}"
        );
        self.wait_job(&answer["job"], timeout)
    }

    /// Waits until `GET /api/v1/hosts` lists a host named `name` with
    /// `status` (`"online"` or `"offline"`), and returns that host.
    pub fn wait_host_status(&self, name: &str, status: &str, timeout: Duration) -> Value {
        poll_until(&format!("host `{name}` to be {status}"), timeout, || {
            let host = self.find_named("/api/v1/hosts", name)?;
            if host["status"] == status {
                Ok(host)
            } else {
                Err(format!("{host}"))
            }
        })
    }

    /// Logs `user` in through `POST /api/v1/session` and returns a client
    /// using the session's bearer token. Panics if the login fails.
    pub fn login_as(&self, user: &str, password: &str) -> Api {
        let (status, body) = self.anonymous().post(
            "/api/v1/session",
            &serde_json::json!({"username": user, "password": password}),
        );
        assert_eq!(status, 201, "login as {user}: {body}");
        self.with_bearer(body["token"].as_str().unwrap_or_default())
    }

    /// Runs a full backup of `vm` to the default datastore, waits for it
    /// to succeed and returns the new backup's id.
    pub fn full_backup(&self, vm: &str) -> String {
        let job = self.post_job(
            &format!("/api/v1/vms/{vm}/backups"),
            &serde_json::json!({"mode": "full"}),
            Duration::from_secs(120),
        );
        assert_eq!(job["state"], "succeeded", "backup of {vm}: {job}");
        let newest = self.backups(vm).pop().unwrap_or_default();
        newest["id"].as_str().unwrap_or_default().to_string()
    }

    /// `GET /api/v1/vms/{vm}/backups`: the VM's backups, oldest first.
    pub fn backups(&self, vm: &str) -> Vec<Value> {
        let (status, list) = self.get(&format!("/api/v1/vms/{vm}/backups"));
        assert_eq!(status, 200, "GET backups of {vm}: {list}");
        list.as_array().cloned().unwrap_or_default()
    }

    /// Waits until `GET /api/v1/vms` lists a VM named `name`, and returns it.
    /// Waits for host `host` to be online and VM `vm` in the inventory (the
    /// start of most end-to-end tests); returns the VM.
    pub fn wait_host_with_vm(&self, host: &str, vm: &str) -> Value {
        self.wait_host_status(host, "online", crate::READY_TIMEOUT);
        self.wait_vm(vm, crate::READY_TIMEOUT)
    }

    pub fn wait_vm(&self, name: &str, timeout: Duration) -> Value {
        poll_until(&format!("VM `{name}` in the inventory"), timeout, || {
            self.find_named("/api/v1/vms", name)
        })
    }

    fn find_named(&self, list_path: &str, name: &str) -> Result<Value, String> {
        let (status, list) = self.get(list_path);
        if status != 200 {
            return Err(format!("GET {list_path} answered {status}: {list}"));
        }
        let items = list
            .as_array()
            .ok_or_else(|| format!("not an array: {list}"))?;
        items
            .iter()
            .find(|item| item["name"] == name)
            .cloned()
            .ok_or_else(|| format!("not listed: {list}"))
    }

    fn json_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let response = match body {
            Some(body) => self.try_raw_request(
                method,
                path,
                &[("content-type", "application/json")],
                body.to_string().as_bytes(),
            )?,
            None => self.try_raw_request(method, path, &[], &[])?,
        };
        let json = parse_json(response.status, &response.body)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        Ok((response.status, json))
    }
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// JSON, or `Null` for an empty body; anything else is a contract breach.
fn parse_json(status: u16, body: &[u8]) -> Result<Value, String> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| {
        format!(
            "status {status}, body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    })
}

fn basic_authorization(user: &str, password: &str) -> String {
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {credentials}")
}

/// A job or object id as it goes into a path: strings unquoted.
fn id_text(id: &Value) -> String {
    match id {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_authorization_is_rfc7617() {
        // The example from RFC 7617, section 2.
        assert_eq!(
            basic_authorization("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn ids_go_into_paths_unquoted() {
        assert_eq!(id_text(&serde_json::json!("j-1")), "j-1");
        assert_eq!(id_text(&serde_json::json!(42)), "42");
    }

    #[test]
    fn empty_bodies_are_null_and_others_must_be_json() {
        assert_eq!(parse_json(204, b""), Ok(Value::Null));
        assert_eq!(parse_json(200, b"[1]"), Ok(serde_json::json!([1])));
        let error = parse_json(500, b"<html>").unwrap_err();
        assert!(
            error.contains("status 500") && error.contains("<html>"),
            "{error}"
        );
    }
}
