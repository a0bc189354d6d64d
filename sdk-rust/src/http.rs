//! Outbound HTTP to hosts the plugin is allowed to reach (`http` permission).
//!
//! ```ignore
//! use plugbox_sdk::http::{self, Request};
//! let resp = http::fetch(&Request::get("http://127.0.0.1:8080/health").header("accept", "text/plain"))?;
//! if resp.status == 200 { let text = resp.text()?; }
//! ```

use crate::error::{Error, Result};
use crate::sys;

/// An HTTP request (the WIT record `request`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method in upper case: `GET`, `POST`, ...
    pub method: String,
    /// An absolute `http://` or `https://` URL.
    pub url: String,
    /// Header names and values, in order; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// The request body (empty for none).
    pub body: Vec<u8>,
}

impl Request {
    /// A request with `method` (upper-cased) to `url`, no headers, no body.
    pub fn new(method: &str, url: &str) -> Self {
        Request {
            method: method.to_ascii_uppercase(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `GET` request to `url`.
    pub fn get(url: &str) -> Self {
        Request::new("GET", url)
    }

    /// A `POST` request to `url` with `body`.
    pub fn post(url: &str, body: impl Into<Vec<u8>>) -> Self {
        Request::new("POST", url).body(body)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// An HTTP response (the WIT record `response`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (as the host reports them, normally lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 text (`invalid-input` when it is not UTF-8).
    pub fn text(&self) -> Result<&str> {
        Ok(std::str::from_utf8(&self.body)?)
    }

    /// True for a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `Ok(self)` for a 2xx status, else [`Error::Failure`] naming the status.
    pub fn error_for_status(self) -> Result<Self> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(Error::Failure(format!("HTTP status {}", self.status)))
        }
    }
}

/// Sends `request` and returns the response (any status, including 4xx and 5xx).
///
/// Errors: `denied` without the `http` permission, or when the URL's host and port or the
/// method are not among those granted; `invalid-input` for a malformed URL, method or header;
/// `limit-reached` when the request or response body exceeds the granted size caps;
/// `failure` for network errors and timeouts.
pub fn fetch(request: &Request) -> Result<Response> {
    sys::http_fetch(request)
}
