//! Native test harness: run a plugin's hooks under `cargo test` against an in-memory fake host.
//!
//! Only on targets other than wasm32 (a plain `cargo test`). There, every host service of the
//! SDK ([`log`](crate::log), [`config`](crate::config), [`kv`](crate::kv),
//! [`events`](crate::events), [`clock`](crate::clock), [`random`](crate::random),
//! [`http`](crate::http), [`host`](crate::host)) is served by the [`Harness`] the current call
//! runs in, which enforces the permissions of the plugin's `plugbox.json` like the plugbox
//! runtime does: a service the manifest does not request answers `denied` with the runtime's
//! message (`kv: permission not granted; add "kv" to permissions in plugbox.json`), events
//! topics, HTTP hosts and methods, host functions and extension points are checked against the
//! manifest's patterns, and kv quotas and the ABI's size caps apply.
//!
//! ```ignore
//! #[cfg(test)]
//! mod tests {
//!     use plugbox_sdk::json::Value;
//!     use plugbox_sdk::testing::Harness;
//!
//!     #[test]
//!     fn greet_counts_and_logs() {
//!         let plugin = Harness::manifest(env!("CARGO_MANIFEST_DIR")) // reads plugbox.json
//!             .config("greeting", "Hi")
//!             .start()                                             // runs on-init
//!             .unwrap();
//!         let out = plugin.call_json("greet", &Value::object([("name", "Ada")])).unwrap();
//!         assert_eq!(out["greeting"].as_str(), Some("Hi, Ada!"));
//!         assert_eq!(plugin.logs()[0].message, "greeting Ada");
//!         assert_eq!(plugin.kv_get("greeted"), Some(1i64.to_le_bytes().to_vec()));
//!     }
//! }
//! ```
//!
//! A call goes through the same entry points as the wasm exports: [`Builder::start`] runs the
//! plugin's `on-init` with the configuration as JSON, [`Harness::call`] its `on-hook` with the
//! hook name and payload, both as `hooks!` registered them (so the registration is tested too;
//! `start` fails when the hooks `hooks!` registers differ from the manifest's `hooks`, as
//! `plugbox build` does). A call runs on a thread of its own and is abandoned once it runs past
//! the manifest's `limits.deadline_ms` (default 10 000 ms): an endless loop fails the test with
//! `DeadlineExceeded` instead of hanging it (the abandoned thread spins on until the test
//! process ends; its later host calls panic). A panic in a hook is a `GuestTrap`, as in the
//! runtime. Fuel and memory are not limited natively.
//!
//! State belongs to one `Harness`: tests running in parallel threads never share a store or a
//! log. Host services called outside [`Builder::start`], [`Harness::call`] or [`Harness::run`]
//! panic, saying so. Tests must be in the plugin crate itself (`#[cfg(test)]` in `src/`): a
//! `cdylib` cannot be linked by `tests/` integration tests.
//!
//! What differs from the sandbox: the code runs natively (64-bit, with `std::fs` and threads
//! reachable, unwinding panics), HTTP never leaves the process (canned responses by URL, see
//! [`Builder::http_response`]), `random` is not cryptographically secure, and log records are
//! kept unfiltered and unlimited.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::http::{Request, Response};
use crate::json::{self, Value};
use crate::log::Level;

const MANIFEST: &str = "plugbox.json";
/// The runtime's default wall-clock deadline of a call, when the manifest sets none.
pub const DEFAULT_DEADLINE_MS: u64 = 10_000;
// The runtime's caps (runtime/plugbox/services/_services.py and engine/_abispec.py).
const KV_KEY_MAX: usize = 256;
const KV_VALUE_MAX: usize = 1 << 20;
const KV_LIST_MAX: usize = 10_000;
const KV_QUOTA_BYTES: u64 = 1 << 20;
const KV_QUOTA_KEYS: u64 = 1000;
const CONFIG_KEY_MAX: usize = 1024;
const EVENT_TOPIC_MAX: usize = 256;
const EVENT_PAYLOAD_MAX: usize = 1 << 20;
const RANDOM_MAX: u32 = 1 << 20;
const HOST_NAME_MAX: usize = 256;
const HOST_PAYLOAD_MAX: usize = 1 << 20;
const HOST_RESULT_MAX: usize = 16 << 20;
const HTTP_METHOD_MAX: usize = 32;
const HTTP_URL_MAX: usize = 8192;
const HTTP_HEADERS_MAX: usize = 100;
const HTTP_HEADER_NAME_MAX: usize = 256;
const HTTP_HEADER_VALUE_MAX: usize = 8192;
const HTTP_MAX_REQUEST_BYTES: u64 = 1 << 20;
const HTTP_MAX_RESPONSE_BYTES: u64 = 4 << 20;
const FORBIDDEN_REQUEST_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

// ----------------------------------------------------------------------------- permissions

/// The `kv` permission: quotas over key + value bytes and over the number of keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvGrant {
    /// `permissions.kv.quota_bytes` (default 1 MiB).
    pub quota_bytes: u64,
    /// `permissions.kv.quota_keys` (default 1000).
    pub quota_keys: u64,
}

/// The `http` permission: host patterns (`host`, `host:port`, `*.example.com`), methods and
/// body caps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpGrant {
    /// `permissions.http.hosts`; a pattern without a port matches the scheme's default port.
    pub hosts: Vec<String>,
    /// `permissions.http.methods` (default `GET`).
    pub methods: Vec<String>,
    /// `permissions.http.max_request_bytes` (default 1 MiB).
    pub max_request_bytes: u64,
    /// `permissions.http.max_response_bytes` (default 4 MiB).
    pub max_response_bytes: u64,
}

/// What a plugin may use: the `permissions` of its manifest (and its `extension_points`).
///
/// Read from `plugbox.json` by [`Harness::manifest`], or built for a test:
/// `Permissions::none().log().kv().events(&["orders.*"])`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    /// `log`.
    pub log: bool,
    /// `config`.
    pub config: bool,
    /// `clock`.
    pub clock: bool,
    /// `random`.
    pub random: bool,
    /// `kv`, with its quotas.
    pub kv: Option<KvGrant>,
    /// `events.topics`: the topic patterns the plugin may emit on.
    pub events: Option<Vec<String>>,
    /// `http`.
    pub http: Option<HttpGrant>,
    /// `functions`: host function patterns (ABI 1.1).
    pub functions: Vec<String>,
    /// `dispatch`: extension point patterns (ABI 1.1).
    pub dispatch: Vec<String>,
    /// The manifest's `extension_points`: points the plugin declares and may dispatch itself.
    pub own_points: Vec<String>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl Permissions {
    /// Nothing granted.
    pub fn none() -> Self {
        Permissions::default()
    }
    /// With `log`.
    pub fn log(mut self) -> Self {
        self.log = true;
        self
    }
    /// With `config`.
    pub fn config(mut self) -> Self {
        self.config = true;
        self
    }
    /// With `clock`.
    pub fn clock(mut self) -> Self {
        self.clock = true;
        self
    }
    /// With `random`.
    pub fn random(mut self) -> Self {
        self.random = true;
        self
    }
    /// With `kv` and the default quotas.
    pub fn kv(self) -> Self {
        self.kv_quota(KV_QUOTA_BYTES, KV_QUOTA_KEYS)
    }
    /// With `kv` and these quotas.
    pub fn kv_quota(mut self, quota_bytes: u64, quota_keys: u64) -> Self {
        self.kv = Some(KvGrant {
            quota_bytes,
            quota_keys,
        });
        self
    }
    /// With `events` on these topic patterns.
    pub fn events(mut self, topics: &[&str]) -> Self {
        self.events = Some(strings(topics));
        self
    }
    /// With `http` to these host patterns with these methods (default body caps).
    pub fn http(mut self, hosts: &[&str], methods: &[&str]) -> Self {
        self.http = Some(HttpGrant {
            hosts: strings(hosts),
            methods: strings(methods),
            max_request_bytes: HTTP_MAX_REQUEST_BYTES,
            max_response_bytes: HTTP_MAX_RESPONSE_BYTES,
        });
        self
    }
    /// With these host function patterns.
    pub fn functions(mut self, names: &[&str]) -> Self {
        self.functions = strings(names);
        self
    }
    /// With these extension point patterns.
    pub fn dispatch(mut self, points: &[&str]) -> Self {
        self.dispatch = strings(points);
        self
    }

    fn from_manifest(doc: &Value, file: &str) -> std::result::Result<Self, String> {
        let empty = Value::empty_object();
        let perms = doc.get("permissions").unwrap_or(&empty);
        let flag = |name: &str| perms.get(name).and_then(Value::as_bool) == Some(true);
        let list = |v: Option<&Value>, what: &str| -> std::result::Result<Vec<String>, String> {
            match v {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| format!("{}: {} must list strings", file, what))
                    })
                    .collect(),
                Some(_) => Err(format!("{}: {} must be a list", file, what)),
            }
        };
        let num = |v: &Value, key: &str, default: u64| {
            v.get(key).and_then(Value::as_u64).unwrap_or(default)
        };
        let kv = perms.get("kv").filter(|v| !v.is_null()).map(|kv| KvGrant {
            quota_bytes: num(kv, "quota_bytes", KV_QUOTA_BYTES),
            quota_keys: num(kv, "quota_keys", KV_QUOTA_KEYS),
        });
        let events = match perms.get("events").filter(|v| !v.is_null()) {
            Some(e) => Some(list(e.get("topics"), "permissions.events.topics")?),
            None => None,
        };
        let http = match perms.get("http").filter(|v| !v.is_null()) {
            Some(h) => {
                let methods = list(h.get("methods"), "permissions.http.methods")?;
                Some(HttpGrant {
                    hosts: list(h.get("hosts"), "permissions.http.hosts")?,
                    methods: if h.get("methods").is_none() {
                        strings(&["GET"])
                    } else {
                        methods
                    },
                    max_request_bytes: num(h, "max_request_bytes", HTTP_MAX_REQUEST_BYTES),
                    max_response_bytes: num(h, "max_response_bytes", HTTP_MAX_RESPONSE_BYTES),
                })
            }
            None => None,
        };
        Ok(Permissions {
            log: flag("log"),
            config: flag("config"),
            clock: flag("clock"),
            random: flag("random"),
            kv,
            events,
            http,
            functions: list(perms.get("functions"), "permissions.functions")?,
            dispatch: list(perms.get("dispatch"), "permissions.dispatch")?,
            own_points: list(doc.get("extension_points"), "extension_points")?,
        })
    }
}

// --------------------------------------------------------------------------------- records

/// One record the plugin logged (with the `log` permission).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Its level.
    pub level: Level,
    /// Its message.
    pub message: String,
}

/// One event the plugin emitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Event {
    /// The payload parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        Ok(json::parse_bytes(&self.payload)?)
    }
}

/// One call that reached a test host function (`kind` `"call"`) or extension point
/// (`"dispatch"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCall {
    /// `"call"` or `"dispatch"`.
    pub kind: &'static str,
    /// The function or point name.
    pub name: String,
    /// The payload the plugin sent.
    pub payload: Vec<u8>,
}

/// A test's host function or extension point: gets the payload, returns the result bytes or
/// the ABI error the plugin sees.
pub type HostFunction = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>> + Send + Sync>;

/// A canned HTTP response.
pub fn response(status: u16, body: impl Into<Vec<u8>>) -> Response {
    Response {
        status,
        headers: Vec::new(),
        body: body.into(),
    }
}

/// How a call through the harness ended when it did not return normally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// The plugin (or a host service it passed on) returned this ABI error.
    Plugin(Error),
    /// The call panicked: the runtime would report a `GuestTrap` and discard the instance.
    Trap(String),
    /// The call ran past the deadline: the runtime would raise `DeadlineExceeded`.
    DeadlineExceeded(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Plugin(e) => write!(f, "{}", e),
            CallError::Trap(m) => write!(f, "GuestTrap: {}", m),
            CallError::DeadlineExceeded(m) => write!(f, "DeadlineExceeded: {}", m),
        }
    }
}

impl std::error::Error for CallError {}

// ------------------------------------------------------------------------------- the host

/// What `hooks!` hands the harness natively: the same init and dispatch the wasm exports call.
#[doc(hidden)]
pub struct NativeHooks {
    /// The plugin's `on-init` body.
    pub init: fn(&str) -> Result<()>,
    /// The plugin's `on-hook` dispatch.
    pub dispatch: fn(&str, Vec<u8>) -> Result<Vec<u8>>,
    /// The hook names `hooks!` registers, each followed by a newline.
    pub hooks: &'static str,
}

struct Host {
    perms: Permissions,
    withheld: Vec<String>,
    config: Value,
    kv: BTreeMap<String, Vec<u8>>,
    logs: Vec<LogRecord>,
    events: Vec<Event>,
    denied: Vec<String>,
    host_calls: Vec<HostCall>,
    http: BTreeMap<String, Response>,
    requests: Vec<Request>,
    functions: BTreeMap<String, HostFunction>,
    points: BTreeMap<String, HostFunction>,
    started: Instant,
    random_state: u64,
}

struct Active {
    host: Arc<Mutex<Host>>,
    alive: Arc<AtomicBool>,
}

thread_local! {
    static CURRENT: RefCell<Option<Active>> = const { RefCell::new(None) };
}

fn not_granted(service: &str) -> String {
    format!(
        "{}: permission not granted; add \"{}\" to permissions in {}",
        service, service, MANIFEST
    )
}

fn shown(text: &str) -> String {
    // As the runtime's repr(): 'text' (the runtime cuts long names; tests rarely need that).
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Host {
    fn granted(&self, service: &str) -> bool {
        if self.withheld.iter().any(|w| w == service) {
            return false;
        }
        let p = &self.perms;
        match service {
            "log" => p.log,
            "config" => p.config,
            "clock" => p.clock,
            "random" => p.random,
            "kv" => p.kv.is_some(),
            "events" => p.events.is_some(),
            "http" => p.http.is_some(),
            "functions" => !p.functions.is_empty(),
            "dispatch" => !p.dispatch.is_empty() || !p.own_points.is_empty(),
            _ => false,
        }
    }

    fn deny(&mut self, service: &str, message: String) -> Error {
        self.denied.push(service.to_string());
        Error::Denied(message)
    }

    fn require(&mut self, service: &str) -> Result<()> {
        if self.granted(service) {
            Ok(())
        } else {
            let message =
                match service {
                    "functions" => {
                        format!(
                    "host.call: no host functions granted; add \"functions\": [\"<name>\"] to \
                     permissions in {}", MANIFEST)
                    }
                    "dispatch" => format!(
                    "host.dispatch: no extension points granted; add \"dispatch\": [\"<point>\"] \
                     to permissions in {}, or declare the point in extension_points", MANIFEST),
                    other => not_granted(other),
                };
            Err(self.deny(service, message))
        }
    }

    fn check_key(key: &str) -> Result<()> {
        if key.is_empty() || key.len() > KV_KEY_MAX {
            return Err(Error::InvalidInput(format!(
                "kv: key must be 1 to {} bytes of UTF-8, got {} bytes",
                KV_KEY_MAX,
                key.len()
            )));
        }
        Ok(())
    }

    fn check_value(value: &[u8]) -> Result<()> {
        if value.len() > KV_VALUE_MAX {
            return Err(Error::LimitReached(format!(
                "kv: value of {} bytes exceeds the maximum of {} bytes",
                value.len(),
                KV_VALUE_MAX
            )));
        }
        Ok(())
    }

    fn kv_store(&mut self, key: &str, value: &[u8]) -> Result<()> {
        let quota = self.perms.kv.clone().expect("kv granted");
        let used: u64 = self
            .kv
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        let delta: i64 = match self.kv.get(key) {
            None => {
                let keys = self.kv.len() as u64 + 1;
                if keys > quota.quota_keys {
                    return Err(quota_error("keys", quota.quota_keys, keys));
                }
                (key.len() + value.len()) as i64
            }
            Some(old) => value.len() as i64 - old.len() as i64,
        };
        // As in the runtime: a write that does not grow the usage is always allowed.
        if delta > 0 && used + delta as u64 > quota.quota_bytes {
            return Err(quota_error("bytes", quota.quota_bytes, used + delta as u64));
        }
        self.kv.insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64 over a seed from std's randomly keyed hasher: varied, not secure.
        self.random_state = self.random_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.random_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn http_check_url(&mut self, grant: &HttpGrant, url: &str, method: &str) -> Result<()> {
        let (scheme, rest) = match url.find("://") {
            Some(i) => (url[..i].to_ascii_lowercase(), &url[i + 3..]),
            None => {
                return Err(Error::InvalidInput(format!(
                    "http: invalid URL {}",
                    shown(url)
                )))
            }
        };
        let default_port: u16 = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            other => {
                return Err(Error::InvalidInput(format!(
                    "http: unsupported URL scheme {}; use http or https",
                    shown(other)
                )))
            }
        };
        let authority = rest
            .split(['/', '?', '#'])
            .next()
            .unwrap_or("");
        let authority = authority.rsplit('@').next().unwrap_or("");
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let end = inner.find(']').unwrap_or(inner.len());
            let port = inner[end..].strip_prefix("]:").map(str::to_string);
            (inner[..end].to_ascii_lowercase(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_ascii_lowercase(), Some(p.to_string())),
                None => (authority.to_ascii_lowercase(), None),
            }
        };
        if host.is_empty() {
            return Err(Error::InvalidInput(format!(
                "http: URL has no host: {}",
                url
            )));
        }
        let port: u16 = match port {
            Some(p) if !p.is_empty() => p.parse().map_err(|_| {
                Error::InvalidInput(format!("http: invalid URL {}: bad port", shown(url)))
            })?,
            _ => default_port,
        };
        let allowed = grant.hosts.iter().any(|pattern| {
            let pattern = pattern.to_ascii_lowercase();
            let (phost, pport) = split_host_pattern(&pattern);
            let host_ok = if phost.contains(':') {
                host == phost
            } else {
                glob(phost, &host)
            };
            host_ok
                && match pport {
                    None => port == default_port,
                    Some(pp) => glob(pp, &port.to_string()),
                }
        });
        if !allowed {
            let who = if port == default_port {
                host
            } else {
                format!("{}:{}", host, port)
            };
            let message = format!(
                "http: host {} is not allowed; add {} to permissions.http.hosts in {}",
                shown(&who),
                shown(&who),
                MANIFEST
            );
            return Err(self.deny("http", message));
        }
        if !grant.methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
            let message = format!(
                "http: method {} is not allowed; add {} to permissions.http.methods in {}",
                method,
                shown(method),
                MANIFEST
            );
            return Err(self.deny("http", message));
        }
        Ok(())
    }
}

fn quota_error(which: &str, limit: u64, needed: u64) -> Error {
    let field = if which == "bytes" {
        "quota_bytes"
    } else {
        "quota_keys"
    };
    Error::LimitReached(format!(
        "kv: quota of {} {} reached (this write needs {}); delete keys or raise \
         permissions.kv.{} in {}",
        limit, which, needed, field, MANIFEST
    ))
}

fn split_host_pattern(pattern: &str) -> (&str, Option<&str>) {
    if let Some(inner) = pattern.strip_prefix('[') {
        let end = inner.find(']').unwrap_or(inner.len());
        return (&inner[..end], inner[end..].strip_prefix("]:"));
    }
    if pattern.matches(':').count() > 1 {
        return (pattern, None);
    }
    match pattern.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (pattern, None),
    }
}

/// `fnmatch` as the runtime uses it: `*` any run, `?` one character, `[abc]` / `[!abc]` a set.
fn glob(pattern: &str, text: &str) -> bool {
    fn matches(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len()).any(|i| matches(&p[1..], &t[i..])),
            Some('?') => !t.is_empty() && matches(&p[1..], &t[1..]),
            Some('[') => {
                let close = p.iter().skip(2).position(|&c| c == ']').map(|i| i + 2);
                match (close, t.first()) {
                    (Some(end), Some(&c)) => {
                        let (negate, set) = match p[1] {
                            '!' => (true, &p[2..end]),
                            _ => (false, &p[1..end]),
                        };
                        let mut hit = false;
                        let mut i = 0;
                        while i < set.len() {
                            if i + 2 < set.len() && set[i + 1] == '-' {
                                hit |= set[i] <= c && c <= set[i + 2];
                                i += 3;
                            } else {
                                hit |= set[i] == c;
                                i += 1;
                            }
                        }
                        hit != negate && matches(&p[end + 1..], &t[1..])
                    }
                    (None, Some(&c)) => c == '[' && matches(&p[1..], &t[1..]),
                    (_, None) => false,
                }
            }
            Some(&c) => t.first() == Some(&c) && matches(&p[1..], &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    matches(&p, &t)
}

/// Runs `f` with the current thread's harness host locked.
fn with_host<R>(service: &str, f: impl FnOnce(&mut Host) -> R) -> R {
    let host = CURRENT.with(|current| match &*current.borrow() {
        Some(active) => {
            if !active.alive.load(Ordering::SeqCst) {
                panic!(
                    "plugbox {} called by a hook the test harness abandoned at its deadline",
                    service
                );
            }
            active.host.clone()
        }
        None => panic!(
            "plugbox host service {} called outside the test harness: natively, host services \
             exist only inside plugbox_sdk::testing::Builder::start, Harness::call or Harness::run",
            service
        ),
    });
    let mut guard = lock(&host);
    f(&mut guard)
}

fn lock(host: &Mutex<Host>) -> MutexGuard<'_, Host> {
    host.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The host services as the SDK's modules call them natively (the same signatures as the
/// wasm import wrappers in `hostcalls`).
pub(crate) mod sys {
    use super::*;

    pub(crate) fn log(level: Level, message: &str) {
        with_host("log.log", |h| {
            if h.granted("log") {
                h.logs.push(LogRecord {
                    level,
                    message: message.to_string(),
                });
            } else {
                h.denied.push("log".to_string()); // the ABI's log has no error case
            }
        })
    }

    pub(crate) fn config_get(key: &str) -> Result<Option<String>> {
        with_host("config.get", |h| {
            h.require("config")?;
            if key.len() > CONFIG_KEY_MAX {
                return Err(Error::InvalidInput(format!(
                    "config: key of {} bytes is longer than the maximum of {} bytes",
                    key.len(),
                    CONFIG_KEY_MAX
                )));
            }
            Ok(h.config.get(key).map(Value::to_json))
        })
    }

    pub(crate) fn config_get_all() -> Result<String> {
        with_host("config.get-all", |h| {
            h.require("config")?;
            Ok(h.config.to_json())
        })
    }

    pub(crate) fn kv_get(key: &str) -> Result<Option<Vec<u8>>> {
        with_host("kv.get", |h| {
            h.require("kv")?;
            Host::check_key(key)?;
            Ok(h.kv.get(key).cloned())
        })
    }

    pub(crate) fn kv_set(key: &str, value: &[u8]) -> Result<()> {
        with_host("kv.set", |h| {
            h.require("kv")?;
            Host::check_key(key)?;
            Host::check_value(value)?;
            h.kv_store(key, value)
        })
    }

    pub(crate) fn kv_delete(key: &str) -> Result<bool> {
        with_host("kv.delete", |h| {
            h.require("kv")?;
            Host::check_key(key)?;
            Ok(h.kv.remove(key).is_some())
        })
    }

    pub(crate) fn kv_list_keys(prefix: &str) -> Result<Vec<String>> {
        with_host("kv.list-keys", |h| {
            h.require("kv")?;
            if prefix.len() > KV_KEY_MAX {
                return Err(Error::InvalidInput(format!(
                    "kv: prefix of {} bytes is longer than the maximum of {} bytes (no key is \
                     longer)",
                    prefix.len(),
                    KV_KEY_MAX
                )));
            }
            Ok(h.kv
                .keys()
                .filter(|k| k.starts_with(prefix))
                .take(KV_LIST_MAX)
                .cloned()
                .collect())
        })
    }

    pub(crate) fn kv_increment(key: &str, delta: i64) -> Result<i64> {
        with_host("kv.increment", |h| {
            h.require("kv")?;
            Host::check_key(key)?;
            let old = match h.kv.get(key) {
                None => 0,
                Some(v) if v.len() == 8 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(v);
                    i64::from_le_bytes(b)
                }
                Some(v) => {
                    return Err(Error::InvalidInput(format!(
                        "kv: cannot increment {}: the value under the key is {} bytes, not an \
                         8-byte little-endian integer (the format increment keeps counters in)",
                        shown(key),
                        v.len()
                    )))
                }
            };
            let new = old.checked_add(delta).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "kv: cannot increment {}: the sum leaves the signed 64-bit range",
                    shown(key)
                ))
            })?;
            h.kv_store(key, &new.to_le_bytes())?;
            Ok(new)
        })
    }

    pub(crate) fn kv_compare_and_set(
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool> {
        with_host("kv.compare-and-set", |h| {
            h.require("kv")?;
            Host::check_key(key)?;
            if let Some(e) = expected {
                Host::check_value(e)?;
            }
            Host::check_value(new)?;
            if h.kv.get(key).map(Vec::as_slice) != expected {
                return Ok(false);
            }
            h.kv_store(key, new)?;
            Ok(true)
        })
    }

    fn check_host_name(what: &str, name: &str, payload: &[u8]) -> Result<()> {
        if name.is_empty() || name.len() > HOST_NAME_MAX {
            return Err(Error::InvalidInput(format!(
                "{} name must be 1 to {} bytes of UTF-8, got {} bytes",
                what,
                HOST_NAME_MAX,
                name.len()
            )));
        }
        if payload.len() > HOST_PAYLOAD_MAX {
            let service = what.split(':').next().unwrap_or(what);
            return Err(Error::LimitReached(format!(
                "{}: payload of {} bytes exceeds the maximum of {} bytes",
                service,
                payload.len(),
                HOST_PAYLOAD_MAX
            )));
        }
        Ok(())
    }

    fn run_host_function(kind: &'static str, name: &str, payload: &[u8]) -> Result<Vec<u8>> {
        let (handler, what) = with_host(
            if kind == "call" {
                "host.call"
            } else {
                "host.dispatch"
            },
            |h| {
                let (service, what, fix) = if kind == "call" {
                    ("functions", "function", "function")
                } else {
                    ("dispatch", "extension point", "extension_point")
                };
                h.require(service)?;
                check_host_name(
                    if kind == "call" {
                        "host.call: function"
                    } else {
                        "host.dispatch: extension point"
                    },
                    name,
                    payload,
                )?;
                let granted = if kind == "call" {
                    h.perms.functions.iter().any(|p| glob(p, name))
                } else {
                    h.perms.own_points.iter().any(|p| p == name)
                        || h.perms.dispatch.iter().any(|p| glob(p, name))
                };
                let api = if kind == "call" {
                    "host.call"
                } else {
                    "host.dispatch"
                };
                if !granted {
                    let message = format!(
                        "{}: {} {} is not granted; add it (or a pattern matching it) to \
                     permissions.{} in {}",
                        api,
                        what,
                        shown(name),
                        service,
                        MANIFEST
                    );
                    return Err(h.deny(service, message));
                }
                let table = if kind == "call" {
                    &h.functions
                } else {
                    &h.points
                };
                let handler = match table.get(name) {
                    Some(f) => f.clone(),
                    None => {
                        let message = format!(
                            "{}: the test host offers no {} {}; add one with \
                         Builder::{}({:?}, ...)",
                            api,
                            what,
                            shown(name),
                            fix,
                            name
                        );
                        return Err(h.deny(service, message));
                    }
                };
                h.host_calls.push(HostCall {
                    kind,
                    name: name.to_string(),
                    payload: payload.to_vec(),
                });
                Ok((
                    handler,
                    format!(
                        "{} {}",
                        if kind == "call" {
                            "host function"
                        } else {
                            "extension point"
                        },
                        shown(name)
                    ),
                ))
            },
        )?;
        // Called without the host locked: the function may take its time (or panic).
        let out = handler(payload)?;
        if out.len() > HOST_RESULT_MAX {
            return Err(Error::LimitReached(format!(
                "host: {} returned {} bytes, more than the maximum of {} a plugin receives",
                what,
                out.len(),
                HOST_RESULT_MAX
            )));
        }
        Ok(out)
    }

    pub(crate) fn host_call(name: &str, payload: &[u8]) -> Result<Vec<u8>> {
        run_host_function("call", name, payload)
    }

    pub(crate) fn host_dispatch(point: &str, payload: &[u8]) -> Result<Vec<u8>> {
        run_host_function("dispatch", point, payload)
    }

    pub(crate) fn events_emit(topic: &str, payload: &[u8]) -> Result<()> {
        with_host("events.emit", |h| {
            h.require("events")?;
            let n = topic.chars().count();
            if n == 0 || n > EVENT_TOPIC_MAX {
                return Err(Error::InvalidInput(format!(
                    "events: topic must be 1 to {} characters, got {} bytes",
                    EVENT_TOPIC_MAX,
                    topic.len()
                )));
            }
            let allowed = h
                .perms
                .events
                .as_ref()
                .map_or(false, |t| t.iter().any(|p| glob(p, topic)));
            if !allowed {
                let message = format!(
                    "events: topic {} is not allowed; add it (or a pattern matching it) to \
                     permissions.events.topics in {}",
                    shown(topic),
                    MANIFEST
                );
                return Err(h.deny("events", message));
            }
            if payload.len() > EVENT_PAYLOAD_MAX {
                return Err(Error::LimitReached(format!(
                    "events: payload of {} bytes exceeds the maximum of {} bytes",
                    payload.len(),
                    EVENT_PAYLOAD_MAX
                )));
            }
            h.events.push(Event {
                topic: topic.to_string(),
                payload: payload.to_vec(),
            });
            Ok(())
        })
    }

    pub(crate) fn clock_now() -> u64 {
        with_host("clock.now", |h| {
            if !h.granted("clock") {
                h.denied.push("clock".to_string());
                return 0;
            }
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })
    }

    pub(crate) fn clock_monotonic() -> u64 {
        with_host("clock.monotonic", |h| {
            if !h.granted("clock") {
                h.denied.push("clock".to_string());
                return 0;
            }
            // Never 0 with the permission, so a test can tell it from a denial.
            h.started.elapsed().as_nanos() as u64 + 1
        })
    }

    pub(crate) fn random_bytes(len: u32) -> Result<Vec<u8>> {
        with_host("random.bytes", |h| {
            h.require("random")?;
            if len > RANDOM_MAX {
                return Err(Error::LimitReached(format!(
                    "random: {} bytes requested, at most {} per call",
                    len, RANDOM_MAX
                )));
            }
            let mut out = Vec::with_capacity(len as usize + 8);
            while out.len() < len as usize {
                out.extend_from_slice(&h.next_random().to_le_bytes());
            }
            out.truncate(len as usize);
            Ok(out)
        })
    }

    pub(crate) fn http_fetch(req: &Request) -> Result<Response> {
        with_host("http.fetch", |h| {
            h.require("http")?;
            let grant = h.perms.http.clone().expect("http granted");
            for (what, text, cap) in [
                ("method", &req.method, HTTP_METHOD_MAX),
                ("URL", &req.url, HTTP_URL_MAX),
            ] {
                if text.len() > cap {
                    return Err(Error::InvalidInput(format!(
                        "http: {} of {} bytes is longer than the maximum of {} bytes",
                        what,
                        text.len(),
                        cap
                    )));
                }
            }
            if req.headers.len() > HTTP_HEADERS_MAX {
                return Err(Error::LimitReached(format!(
                    "http: {} request headers, more than the maximum of {}",
                    req.headers.len(),
                    HTTP_HEADERS_MAX
                )));
            }
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            };
            if !token(&req.method) {
                return Err(Error::InvalidInput(format!(
                    "http: invalid method {}",
                    shown(&req.method)
                )));
            }
            let method = req.method.to_ascii_uppercase();
            if req.body.len() as u64 > grant.max_request_bytes {
                return Err(Error::LimitReached(format!(
                    "http: request body of {} bytes exceeds max_request_bytes ({}); raise \
                     permissions.http.max_request_bytes in {}",
                    req.body.len(),
                    grant.max_request_bytes,
                    MANIFEST
                )));
            }
            let mut headers = Vec::new();
            for (name, value) in &req.headers {
                if name.len() > HTTP_HEADER_NAME_MAX || value.len() > HTTP_HEADER_VALUE_MAX {
                    return Err(Error::InvalidInput(format!(
                        "http: header name of {} bytes or value of {} bytes is longer than the \
                         maximum ({} / {} bytes)",
                        name.len(),
                        value.len(),
                        HTTP_HEADER_NAME_MAX,
                        HTTP_HEADER_VALUE_MAX
                    )));
                }
                if !token(name) {
                    return Err(Error::InvalidInput(format!(
                        "http: invalid header name {}",
                        shown(name)
                    )));
                }
                if !value.is_ascii() || value.contains(['\r', '\n', '\0']) {
                    return Err(Error::InvalidInput(format!(
                        "http: header {} must be ASCII without CR, LF or NUL (percent- or \
                         base64-encode other data)",
                        shown(name)
                    )));
                }
                let lower = name.to_ascii_lowercase();
                if FORBIDDEN_REQUEST_HEADERS.contains(&lower.as_str()) {
                    return Err(Error::InvalidInput(format!(
                        "http: header {} is set by the host and may not be sent by a plugin",
                        shown(name)
                    )));
                }
                headers.push((lower, value.clone()));
            }
            h.http_check_url(&grant, &req.url, &method)?;
            h.requests.push(Request {
                method: method.clone(),
                url: req.url.clone(),
                headers,
                body: req.body.clone(),
            });
            let answer = match h.http.get(&req.url) {
                Some(r) => r.clone(),
                None => {
                    return Err(Error::Failure(format!(
                        "http: {} {} failed: the test host has no response for this URL; add \
                         one with Builder::http_response({:?}, ...)",
                        method, req.url, req.url
                    )))
                }
            };
            if answer.body.len() as u64 > grant.max_response_bytes {
                return Err(Error::LimitReached(format!(
                    "http: response body exceeds max_response_bytes ({}); raise \
                     permissions.http.max_response_bytes in {}",
                    grant.max_response_bytes, MANIFEST
                )));
            }
            Ok(Response {
                status: answer.status,
                headers: answer
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect(),
                body: answer.body,
            })
        })
    }
}

// ---------------------------------------------------------------------------- the harness

/// Configures a [`Harness`]: the manifest (or explicit permissions), configuration, kv
/// contents, canned HTTP responses, host functions. [`Builder::start`] runs on-init.
pub struct Builder {
    name: String,
    hooks: Option<Vec<String>>,
    perms: Permissions,
    withheld: Vec<String>,
    config: Value,
    kv: BTreeMap<String, Vec<u8>>,
    http: BTreeMap<String, Response>,
    functions: BTreeMap<String, HostFunction>,
    points: BTreeMap<String, HostFunction>,
    deadline: Duration,
}

impl Builder {
    /// The plugin name the harness reports (the manifest's `name`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Replaces the permissions (those of the manifest, if one was read).
    pub fn permissions(mut self, permissions: Permissions) -> Self {
        self.perms = permissions;
        self
    }

    /// Denies `service` although the manifest requests it (`"log"`, `"config"`, `"kv"`,
    /// `"events"`, `"clock"`, `"random"`, `"http"`, `"functions"`, `"dispatch"`), as
    /// `Runtime.load(withhold=...)` does.
    pub fn withhold(mut self, service: &str) -> Self {
        self.withheld.push(service.to_string());
        self
    }

    /// Sets configuration key `key` (on-init gets the whole object; `config::get` reads it).
    pub fn config(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.config.insert(key, value);
        self
    }

    /// Stores `value` under `key` before the plugin starts (bypassing the quotas).
    pub fn kv(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.kv.insert(key.to_string(), value.as_ref().to_vec());
        self
    }

    /// Answers HTTP requests to exactly `url` (after the permission checks) with `response`
    /// (see [`response`]). Requests to other URLs fail with `failure`; nothing goes out.
    pub fn http_response(mut self, url: &str, response: Response) -> Self {
        self.http.insert(url.to_string(), response);
        self
    }

    /// Offers host function `name` (ABI 1.1 `host::call`); the plugin still needs it in
    /// `permissions.functions`.
    pub fn function<F>(mut self, name: &str, function: F) -> Self
    where
        F: Fn(&[u8]) -> Result<Vec<u8>> + Send + Sync + 'static,
    {
        self.functions.insert(name.to_string(), Arc::new(function));
        self
    }

    /// Offers extension point `point` (`host::dispatch`); `function` returns the dispatch
    /// result JSON. The plugin needs it in `permissions.dispatch` or its `extension_points`.
    pub fn extension_point<F>(mut self, point: &str, function: F) -> Self
    where
        F: Fn(&[u8]) -> Result<Vec<u8>> + Send + Sync + 'static,
    {
        self.points.insert(point.to_string(), Arc::new(function));
        self
    }

    /// The wall-clock deadline of each call (default: the manifest's `limits.deadline_ms`,
    /// else 10 000 ms).
    pub fn deadline_ms(mut self, ms: u64) -> Self {
        self.deadline = Duration::from_millis(ms);
        self
    }

    /// Starts the plugin: checks that the hooks `hooks!` registers match the manifest's
    /// (when one was read) and runs its on-init with the configuration as JSON.
    ///
    /// Errors: the error on-init returned. Panics (failing the test) when the hook lists
    /// differ, or on-init panics or runs past the deadline.
    pub fn start(self) -> Result<Harness> {
        let native = crate::hostcalls::native_hooks();
        let registered: Vec<String> = native.hooks.lines().map(str::to_string).collect();
        if let Some(declared) = &self.hooks {
            let missing: Vec<&String> = declared
                .iter()
                .filter(|h| !registered.contains(h))
                .collect();
            let extra: Vec<&String> = registered
                .iter()
                .filter(|h| !declared.contains(h))
                .collect();
            if !missing.is_empty() || !extra.is_empty() {
                panic!(
                    "plugin {}: the hooks do not match {}: hooks! registers {:?}, \"hooks\" lists \
                     {:?} (missing from hooks!: {:?}; missing from the manifest: {:?}); make the \
                     two lists the same",
                    shown(&self.name),
                    MANIFEST,
                    registered,
                    declared,
                    missing,
                    extra
                );
            }
        }
        let seed = {
            use std::collections::hash_map::RandomState;
            use std::hash::{BuildHasher, Hasher};
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u64(7);
            hasher.finish()
        };
        let config = self.config.to_json();
        let harness = Harness {
            name: self.name,
            hooks: self.hooks,
            deadline: self.deadline,
            native,
            host: Arc::new(Mutex::new(Host {
                perms: self.perms,
                withheld: self.withheld,
                config: self.config,
                kv: self.kv,
                logs: Vec::new(),
                events: Vec::new(),
                denied: Vec::new(),
                host_calls: Vec::new(),
                http: self.http,
                requests: Vec::new(),
                functions: self.functions,
                points: self.points,
                started: Instant::now(),
                random_state: seed,
            })),
        };
        let init = harness.native.init;
        match harness.guarded("on-init", move || init(&config)) {
            Ok(Ok(())) => Ok(harness),
            Ok(Err(e)) => Err(e),
            Err(failure) => panic!("{}", failure),
        }
    }
}

/// A plugin under test, with its own fake host: see the [module docs](self).
pub struct Harness {
    name: String,
    hooks: Option<Vec<String>>,
    deadline: Duration,
    native: NativeHooks,
    host: Arc<Mutex<Host>>,
}

impl Harness {
    /// A builder for the plugin whose `plugbox.json` is in `dir` (pass
    /// `env!("CARGO_MANIFEST_DIR")`, or the manifest file itself): its name, hooks,
    /// permissions, extension points and `limits.deadline_ms`.
    ///
    /// Panics (failing the test) when the manifest cannot be read.
    pub fn manifest(dir: impl AsRef<Path>) -> Builder {
        let path = dir.as_ref();
        let file: PathBuf = if path.is_dir() {
            path.join(MANIFEST)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {}", file.display(), e));
        Harness::manifest_json_at(&text, &file.display().to_string())
    }

    /// A builder from manifest JSON text (the contents of a `plugbox.json`).
    ///
    /// Panics when it is not JSON or its `permissions` are malformed.
    pub fn manifest_json(text: &str) -> Builder {
        Harness::manifest_json_at(text, MANIFEST)
    }

    fn manifest_json_at(text: &str, file: &str) -> Builder {
        let doc = json::parse(text).unwrap_or_else(|e| panic!("{}: invalid JSON: {}", file, e));
        let perms = Permissions::from_manifest(&doc, file).unwrap_or_else(|e| panic!("{}", e));
        let hooks = match doc.get("hooks").and_then(Value::as_array) {
            Some(items) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            None => panic!("{}: the manifest has no \"hooks\" list", file),
        };
        let deadline = doc
            .get("limits")
            .and_then(|l| l.get("deadline_ms"))
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_DEADLINE_MS);
        let mut builder = Harness::builder().permissions(perms).deadline_ms(deadline);
        builder.hooks = Some(hooks);
        if let Some(name) = doc.get("name").and_then(Value::as_str) {
            builder.name = name.to_string();
        }
        builder
    }

    /// A builder without a manifest: no permissions (add them with
    /// [`Builder::permissions`]), hook names not checked, the default deadline.
    pub fn builder() -> Builder {
        Builder {
            name: "plugin".to_string(),
            hooks: None,
            perms: Permissions::none(),
            withheld: Vec::new(),
            config: Value::empty_object(),
            kv: BTreeMap::new(),
            http: BTreeMap::new(),
            functions: BTreeMap::new(),
            points: BTreeMap::new(),
            deadline: Duration::from_millis(DEFAULT_DEADLINE_MS),
        }
    }

    /// Runs `f` on a thread of its own with this harness's host installed, within the
    /// deadline.
    fn guarded<T, F>(&self, hook: &str, f: F) -> std::result::Result<T, CallError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let active = Active {
            host: self.host.clone(),
            alive: alive.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("plugbox hook {}", hook))
            .spawn(move || {
                CURRENT.with(|c| *c.borrow_mut() = Some(active));
                let _ = tx.send(panic::catch_unwind(AssertUnwindSafe(f)));
            });
        if let Err(e) = spawned {
            return Err(CallError::Trap(format!(
                "cannot start the call's thread: {}",
                e
            )));
        }
        let where_ = format!("plugin {}, hook {}", shown(&self.name), shown(hook));
        match rx.recv_timeout(self.deadline) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(payload)) => {
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "Box<dyn Any>".to_string());
                Err(CallError::Trap(format!(
                    "{}: the plugin panicked: {}",
                    where_, text
                )))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                alive.store(false, Ordering::SeqCst);
                Err(CallError::DeadlineExceeded(format!(
                    "{}: exceeded its wall-clock deadline ({} ms). Raise limits.deadline_ms in \
                     plugbox.json (within the host policy) if the work is legitimate.",
                    where_,
                    self.deadline.as_millis()
                )))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(CallError::Trap(format!(
                "{}: the call's thread ended without a result",
                where_
            ))),
        }
    }

    /// Calls `hook` with `payload` as the host would; a trap or a passed deadline is a
    /// [`CallError`] (the other cases of which is the ABI error the call returned).
    pub fn try_call(&self, hook: &str, payload: &[u8]) -> std::result::Result<Vec<u8>, CallError> {
        if let Some(declared) = &self.hooks {
            if !declared.iter().any(|h| h == hook) {
                // The runtime refuses it before the plugin runs (UnknownHookError).
                return Err(CallError::Plugin(Error::NotFound(format!(
                    "plugin {} has no hook {}; its manifest declares: {}",
                    shown(&self.name),
                    shown(hook),
                    declared.join(", ")
                ))));
            }
        }
        let dispatch = self.native.dispatch;
        let name = hook.to_string();
        let payload = payload.to_vec();
        match self.guarded(hook, move || dispatch(&name, payload)) {
            Ok(result) => result.map_err(CallError::Plugin),
            Err(failure) => Err(failure),
        }
    }

    /// Calls `hook` with `payload`; the result bytes or the ABI error the call returned.
    ///
    /// Panics (failing the test) when the hook panics (`GuestTrap` in the runtime) or runs
    /// past the deadline (`DeadlineExceeded`); use [`Harness::try_call`] to assert those.
    pub fn call(&self, hook: &str, payload: &[u8]) -> Result<Vec<u8>> {
        match self.try_call(hook, payload) {
            Ok(out) => Ok(out),
            Err(CallError::Plugin(e)) => Err(e),
            Err(failure) => panic!("{}", failure),
        }
    }

    /// [`Harness::call`] with `value` as JSON; the result parsed (`null` for an empty one).
    pub fn call_json(&self, hook: &str, value: &Value) -> Result<Value> {
        let out = self.call(hook, &value.to_vec())?;
        if out.is_empty() {
            return Ok(Value::Null);
        }
        Ok(json::parse_bytes(&out)?)
    }

    /// Runs `f` on this thread with this harness's host installed (no deadline): to call a
    /// plugin function that uses host services directly, without a hook.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Active>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                CURRENT.with(|c| *c.borrow_mut() = previous);
            }
        }
        let active = Active {
            host: self.host.clone(),
            alive: Arc::new(AtomicBool::new(true)),
        };
        let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(active)));
        f()
    }

    /// The plugin name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Records the plugin logged, oldest first.
    pub fn logs(&self) -> Vec<LogRecord> {
        lock(&self.host).logs.clone()
    }

    /// Events the plugin emitted, oldest first.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.host).events.clone()
    }

    /// The service of every denied host call, in order (`"kv"`, ..., `"functions"`,
    /// `"dispatch"`).
    pub fn denied(&self) -> Vec<String> {
        lock(&self.host).denied.clone()
    }

    /// The value stored under `key`.
    pub fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        lock(&self.host).kv.get(key).cloned()
    }

    /// The whole key-value store.
    pub fn kv(&self) -> BTreeMap<String, Vec<u8>> {
        lock(&self.host).kv.clone()
    }

    /// Calls that reached a test host function or extension point, in order.
    pub fn host_calls(&self) -> Vec<HostCall> {
        lock(&self.host).host_calls.clone()
    }

    /// HTTP requests that passed the permission checks (names lower-cased), in order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.host).requests.clone()
    }
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("name", &self.name)
            .field("hooks", &self.hooks)
            .finish()
    }
}

#[cfg(test)]
#[allow(unsafe_code)] // what hooks! writes (export names, link sections), as in a plugin crate
mod tests {
    use super::{glob, response, CallError, Harness, Permissions};
    use crate::json::{self, Value};
    use crate::{config, events, hooks, host, http, kv, log, Error, Result};

    fn visit(input: Value) -> Result<Value> {
        let who = input.require_str("who")?;
        let greeting = config::get_json("greeting")?
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "Hello".to_string());
        let count = kv::increment("visits", 1)?;
        log::info(&format!("visit {} from {}", count, who));
        events::emit(
            "visits.counted",
            &Value::object([("count", count)]).to_vec(),
        )?;
        Ok(Value::object([
            ("text", Value::from(format!("{}, {}!", greeting, who))),
            ("count", count.into()),
        ]))
    }

    fn fetch(url: Vec<u8>) -> Result<Vec<u8>> {
        let resp = http::fetch(&http::Request::get(std::str::from_utf8(&url)?))?;
        Ok(resp.body)
    }

    fn ask(name: Vec<u8>) -> Result<Vec<u8>> {
        host::call(std::str::from_utf8(&name)?, b"q")
    }

    fn spin(_: Vec<u8>) -> Result<Vec<u8>> {
        loop {
            std::hint::spin_loop();
        }
    }

    fn boom(_: Vec<u8>) -> Result<Vec<u8>> {
        panic!("boom at the seams")
    }

    fn init(config: &str) -> Result<()> {
        let v = json::parse(config)?;
        if v.get("fail").is_some() {
            return Err(Error::invalid_input("bad config"));
        }
        Ok(())
    }

    hooks! {
        abi: "1.1",
        init: init,
        "visit" => json::handler(visit),
        "fetch" => fetch,
        "ask" => ask,
        "spin" => spin,
        "boom" => boom,
    }

    const MANIFEST: &str = r#"{"name": "probe", "hooks": ["visit", "fetch", "ask", "spin", "boom"],
        "permissions": {"log": true, "config": true, "kv": {"quota_keys": 5},
                        "events": {"topics": ["visits.*"]},
                        "http": {"hosts": ["127.0.0.1:8080"]}, "functions": ["ask.*"]},
        "limits": {"deadline_ms": 300}}"#;

    #[test]
    fn glob_matches_like_fnmatch() {
        assert!(glob("orders.*", "orders.created"));
        assert!(glob("*", "a.b/c"));
        assert!(!glob("orders.*", "order.created"));
        assert!(glob("a?c", "abc") && !glob("a?c", "ac"));
        assert!(glob("v[0-9]", "v7") && !glob("v[!0-9]", "v7"));
    }

    #[test]
    fn services_are_served_and_recorded() {
        let plugin = Harness::manifest_json(MANIFEST)
            .config("greeting", "Hi")
            .kv("visits", 41i64.to_le_bytes())
            .start()
            .unwrap();
        let out = plugin
            .call_json("visit", &Value::object([("who", "Ada")]))
            .unwrap();
        assert_eq!(out["text"].as_str(), Some("Hi, Ada!"));
        assert_eq!(out["count"].as_i64(), Some(42));
        assert_eq!(plugin.kv_get("visits"), Some(42i64.to_le_bytes().to_vec()));
        assert_eq!(plugin.logs()[0].message, "visit 42 from Ada");
        assert_eq!(plugin.events()[0].topic, "visits.counted");
        assert_eq!(
            plugin.events()[0].json().unwrap()["count"].as_i64(),
            Some(42)
        );
        assert!(plugin.denied().is_empty());
    }

    #[test]
    fn a_withheld_service_is_denied_with_the_runtime_message() {
        let plugin = Harness::manifest_json(MANIFEST)
            .withhold("kv")
            .start()
            .unwrap();
        let err = plugin
            .call_json("visit", &Value::object([("who", "Ada")]))
            .unwrap_err();
        assert_eq!(
            err,
            Error::Denied(
                "kv: permission not granted; add \"kv\" to permissions in plugbox.json".into()
            )
        );
        assert_eq!(plugin.denied(), vec!["kv".to_string()]);
    }

    #[test]
    fn http_is_checked_then_answered_from_canned_responses() {
        let plugin = Harness::manifest_json(MANIFEST)
            .http_response("http://127.0.0.1:8080/a", response(200, "A"))
            .start()
            .unwrap();
        assert_eq!(
            plugin.call("fetch", b"http://127.0.0.1:8080/a").unwrap(),
            b"A"
        );
        let err = plugin.call("fetch", b"http://example.com/").unwrap_err();
        assert_eq!(err.message(), "http: host 'example.com' is not allowed; add 'example.com' to permissions.http.hosts in plugbox.json");
        assert_eq!(
            plugin
                .call("fetch", b"http://127.0.0.1:8080/b")
                .unwrap_err()
                .kind(),
            "failure"
        );
    }

    #[test]
    fn host_functions_are_granted_by_pattern() {
        let plugin = Harness::manifest_json(MANIFEST)
            .function("ask.me", |p| Ok([b"re:".as_ref(), p].concat()))
            .start()
            .unwrap();
        assert_eq!(plugin.call("ask", b"ask.me").unwrap(), b"re:q");
        let err = plugin.call("ask", b"other").unwrap_err();
        assert_eq!(err.kind(), "denied");
        assert!(err
            .message()
            .starts_with("host.call: function 'other' is not granted"));
        assert_eq!(plugin.host_calls().len(), 1);
    }

    #[test]
    fn without_a_manifest_nothing_is_granted() {
        let plugin = Harness::builder()
            .permissions(Permissions::none().log())
            .start()
            .unwrap();
        let err = plugin
            .call_json("visit", &Value::object([("who", "Ada")]))
            .unwrap_err();
        assert_eq!(
            err.message(),
            "config: permission not granted; add \"config\" to permissions in plugbox.json"
        );
    }

    #[test]
    fn init_errors_undeclared_hooks_traps_and_deadlines() {
        let err = Harness::manifest_json(MANIFEST)
            .config("fail", true)
            .start()
            .unwrap_err();
        assert_eq!(err, Error::invalid_input("bad config"));
        let plugin = Harness::manifest_json(MANIFEST).start().unwrap();
        assert_eq!(plugin.call("nope", b"").unwrap_err().message(),
                   "plugin 'probe' has no hook 'nope'; its manifest declares: visit, fetch, ask, spin, boom");
        match plugin.try_call("boom", b"") {
            Err(CallError::Trap(m)) => assert!(m.contains("boom at the seams"), "{}", m),
            other => panic!("{:?}", other),
        }
        match plugin.try_call("spin", b"") {
            Err(CallError::DeadlineExceeded(m)) => assert!(
                m.contains("exceeded its wall-clock deadline (300 ms)"),
                "{}",
                m
            ),
            other => panic!("{:?}", other),
        }
    }

    #[test]
    #[should_panic(expected = "the hooks do not match plugbox.json")]
    fn start_checks_the_registered_hooks() {
        let _ = Harness::manifest_json(r#"{"name": "p", "hooks": ["visit"]}"#).start();
    }

    #[test]
    #[should_panic(expected = "called outside the test harness")]
    fn services_outside_the_harness_say_so() {
        let _ = kv::get("k");
    }

    #[test]
    fn run_installs_the_host_on_this_thread() {
        let plugin = Harness::manifest_json(MANIFEST).start().unwrap();
        plugin.run(|| kv::set("k", b"v")).unwrap();
        assert_eq!(plugin.kv_get("k"), Some(b"v".to_vec()));
    }
}
