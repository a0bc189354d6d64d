//! The raw plugbox ABI: every `extern "C"` import and every `unsafe` block of the SDK.
//!
//! Nothing else in the SDK (and nothing in a plugin) touches raw memory. Each raw import below
//! is declared directly above its one safe wrapper, and the export entry points that
//! [`hooks!`](crate::hooks) wires up come last. The lowering follows the canonical ABI exactly
//! as `abi/README.md` describes it:
//!
//! * strings and `list<u8>` are passed as `(ptr, len)`; results that do not fit one flat value
//!   are written by the host into a *return area* the guest passes as the last parameter
//!   (`retptr`): here always a [`RetArea`] on the caller's stack;
//! * every string or list *inside* a result is allocated by the host through this module's
//!   `cabi_realloc`; the guest owns it and frees it (here: by turning it back into a `Vec` or
//!   `String` and dropping that);
//! * export arguments are allocated by the host through `cabi_realloc` too, and the guest owns
//!   them; export results live in a static return area whose lists the `cabi_post_*` functions
//!   free once the host has copied them out.
//!
//! Natively the service modules call the fake host of [`testing`](crate::testing) instead, the
//! imports are stubs, and `native_hooks` (at the end) is how the harness reaches `hooks!`.

#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::cell::UnsafeCell;
use std::fmt::{self, Write as _};
use std::sync::Once;

use crate::error::{Error, Result};
use crate::http::{Request, Response};
use crate::log::Level;

/// A return area for import results: big enough for the largest one
/// (`result<response, error>`, 24 bytes) and aligned for all of them.
#[repr(C, align(8))]
struct RetArea([u8; 24]);

impl RetArea {
    fn new() -> Self {
        RetArea([0; 24])
    }

    fn ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr()
    }

    fn u8_at(&self, offset: usize) -> u8 {
        self.0[offset]
    }

    fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.0[offset], self.0[offset + 1]])
    }

    fn u32_at(&self, offset: usize) -> u32 {
        let b = &self.0[offset..offset + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn ptr_at(&self, offset: usize) -> *mut u8 {
        self.u32_at(offset) as usize as *mut u8
    }

    fn len_at(&self, offset: usize) -> usize {
        self.u32_at(offset) as usize
    }

    fn set_u8(&mut self, offset: usize, v: u8) {
        self.0[offset] = v;
    }

    fn set_u32(&mut self, offset: usize, v: u32) {
        self.0[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }
}

/// A `string` / `list<T>` as laid out in linear memory: `(ptr, len)`, 8 bytes, align 4.
#[repr(C)]
struct RawSlice {
    ptr: *const u8,
    len: usize,
}

/// A `tuple<string, string>` as laid out in linear memory: 16 bytes, align 4.
#[repr(C)]
struct RawPair {
    key: RawSlice,
    value: RawSlice,
}

#[cfg(target_arch = "wasm32")]
const _: () = {
    assert!(std::mem::size_of::<RawSlice>() == 8 && std::mem::align_of::<RawSlice>() == 4);
    assert!(std::mem::size_of::<RawPair>() == 16 && std::mem::align_of::<RawPair>() == 4);
};

/// Takes ownership of a byte buffer the host allocated with `cabi_realloc(0, 0, 1, len)`.
///
/// # Safety
/// `(ptr, len)` must come from the host as the ABI describes, and be taken only once.
unsafe fn take_bytes(ptr: *mut u8, len: usize) -> Vec<u8> {
    if len == 0 {
        // The host may pass any pointer for an empty list; nothing was allocated.
        return Vec::new();
    }
    Vec::from_raw_parts(ptr, len, len)
}

/// Takes ownership of a host-allocated string; invalid UTF-8 is freed and reported.
///
/// # Safety
/// As for [`take_bytes`].
unsafe fn take_string(ptr: *mut u8, len: usize, what: &str) -> Result<String> {
    String::from_utf8(take_bytes(ptr, len))
        .map_err(|_| Error::Failure(format!("the host returned invalid UTF-8 in {}", what)))
}

/// Takes ownership of a host-allocated `list<string>` (elements allocated with align 4).
///
/// # Safety
/// As for [`take_bytes`].
unsafe fn take_string_list(ptr: *mut u8, len: usize, what: &str) -> Result<Vec<String>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let raw = Vec::from_raw_parts(ptr as *mut RawSlice, len, len);
    // Take every element before converting any, so an error frees them all.
    let owned: Vec<Vec<u8>> = raw
        .iter()
        .map(|s| take_bytes(s.ptr as *mut u8, s.len))
        .collect();
    drop(raw);
    owned
        .into_iter()
        .map(|b| {
            String::from_utf8(b)
                .map_err(|_| Error::Failure(format!("the host returned invalid UTF-8 in {}", what)))
        })
        .collect()
}

/// Takes ownership of a host-allocated `list<tuple<string, string>>`.
///
/// # Safety
/// As for [`take_bytes`].
unsafe fn take_pairs(ptr: *mut u8, len: usize, what: &str) -> Result<Vec<(String, String)>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let raw = Vec::from_raw_parts(ptr as *mut RawPair, len, len);
    let owned: Vec<(Vec<u8>, Vec<u8>)> = raw
        .iter()
        .map(|p| {
            (
                take_bytes(p.key.ptr as *mut u8, p.key.len),
                take_bytes(p.value.ptr as *mut u8, p.value.len),
            )
        })
        .collect();
    drop(raw);
    let bad = || Error::Failure(format!("the host returned invalid UTF-8 in {}", what));
    owned
        .into_iter()
        .map(|(k, v)| {
            Ok((
                String::from_utf8(k).map_err(|_| bad())?,
                String::from_utf8(v).map_err(|_| bad())?,
            ))
        })
        .collect()
}

/// Reads (and takes ownership of) the `error` at `offset` of a return area.
///
/// # Safety
/// The area must hold an `error` the host just wrote.
unsafe fn take_error(area: &RetArea, offset: usize) -> Error {
    let message = match take_string(area.ptr_at(offset + 4), area.len_at(offset + 8), "an error") {
        Ok(m) => m,
        Err(e) => return e,
    };
    let kind = area.u8_at(offset);
    match Error::from_discriminant(kind, message) {
        Some(e) => e,
        None => Error::Failure(format!("the host returned an unknown error kind {}", kind)),
    }
}

/// Checks the `result` tag at offset 0: `Ok(())` for ok, the error (at 4) for err.
///
/// # Safety
/// The area must hold a `result<_, error>`-shaped value the host just wrote.
unsafe fn check_result(area: &RetArea) -> Result<()> {
    match area.u8_at(0) {
        0 => Ok(()),
        1 => Err(take_error(area, 4)),
        tag => Err(Error::Failure(format!(
            "the host returned an invalid result tag {}",
            tag
        ))),
    }
}

// ------------------------------------------------------------------------------------- log

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/log@1.0.0")]
extern "C" {
    #[link_name = "log"]
    fn log_log(level: i32, message_ptr: *const u8, message_len: usize);
}

/// `log.log(level, message)`.
pub(crate) fn log(level: Level, message: &str) {
    unsafe { log_log(level as i32, message.as_ptr(), message.len()) }
}

// ---------------------------------------------------------------------------------- config

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/config@1.0.0")]
extern "C" {
    #[link_name = "get"]
    fn config_get_raw(key_ptr: *const u8, key_len: usize, ret: *mut u8);
}

/// `config.get(key) -> result<option<string>, error>`.
pub(crate) fn config_get(key: &str) -> Result<Option<String>> {
    let mut area = RetArea::new();
    unsafe {
        config_get_raw(key.as_ptr(), key.len(), area.ptr());
        check_result(&area)?;
        match area.u8_at(4) {
            0 => Ok(None),
            1 => take_string(area.ptr_at(8), area.len_at(12), "config.get").map(Some),
            tag => Err(Error::Failure(format!(
                "the host returned an invalid option tag {}",
                tag
            ))),
        }
    }
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/config@1.0.0")]
extern "C" {
    #[link_name = "get-all"]
    fn config_get_all_raw(ret: *mut u8);
}

/// `config.get-all() -> result<string, error>`.
pub(crate) fn config_get_all() -> Result<String> {
    let mut area = RetArea::new();
    unsafe {
        config_get_all_raw(area.ptr());
        check_result(&area)?;
        take_string(area.ptr_at(4), area.len_at(8), "config.get-all")
    }
}

// -------------------------------------------------------------------------------------- kv

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/kv@1.0.0")]
extern "C" {
    #[link_name = "get"]
    fn kv_get_raw(key_ptr: *const u8, key_len: usize, ret: *mut u8);
}

/// `kv.get(key) -> result<option<list<u8>>, error>`.
pub(crate) fn kv_get(key: &str) -> Result<Option<Vec<u8>>> {
    let mut area = RetArea::new();
    unsafe {
        kv_get_raw(key.as_ptr(), key.len(), area.ptr());
        check_result(&area)?;
        match area.u8_at(4) {
            0 => Ok(None),
            1 => Ok(Some(take_bytes(area.ptr_at(8), area.len_at(12)))),
            tag => Err(Error::Failure(format!(
                "the host returned an invalid option tag {}",
                tag
            ))),
        }
    }
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/kv@1.0.0")]
extern "C" {
    #[link_name = "set"]
    fn kv_set_raw(
        key_ptr: *const u8,
        key_len: usize,
        value_ptr: *const u8,
        value_len: usize,
        ret: *mut u8,
    );
}

/// `kv.set(key, value) -> result<_, error>`.
pub(crate) fn kv_set(key: &str, value: &[u8]) -> Result<()> {
    let mut area = RetArea::new();
    unsafe {
        kv_set_raw(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            area.ptr(),
        );
        check_result(&area)
    }
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/kv@1.0.0")]
extern "C" {
    #[link_name = "delete"]
    fn kv_delete_raw(key_ptr: *const u8, key_len: usize, ret: *mut u8);
}

/// `kv.delete(key) -> result<bool, error>`.
pub(crate) fn kv_delete(key: &str) -> Result<bool> {
    let mut area = RetArea::new();
    unsafe {
        kv_delete_raw(key.as_ptr(), key.len(), area.ptr());
        check_result(&area)?;
    }
    match area.u8_at(4) {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(Error::Failure(format!(
            "the host returned an invalid bool {}",
            b
        ))),
    }
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/kv@1.0.0")]
extern "C" {
    #[link_name = "list-keys"]
    fn kv_list_keys_raw(prefix_ptr: *const u8, prefix_len: usize, ret: *mut u8);
}

/// `kv.list-keys(prefix) -> result<list<string>, error>`.
pub(crate) fn kv_list_keys(prefix: &str) -> Result<Vec<String>> {
    let mut area = RetArea::new();
    unsafe {
        kv_list_keys_raw(prefix.as_ptr(), prefix.len(), area.ptr());
        check_result(&area)?;
        take_string_list(area.ptr_at(4), area.len_at(8), "kv.list-keys")
    }
}

// ------------------------------------------------------------------------- kv (ABI 1.1)
//
// Functions added in ABI 1.1 are imported from the 1.1.0 interfaces; the 1.0 ones above stay at
// 1.0.0, so a plugin that calls only 1.0 functions is still a 1.0 plugin (runs on 1.0 hosts).

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/kv@1.1.0")]
extern "C" {
    #[link_name = "increment"]
    fn kv_increment_raw(key_ptr: *const u8, key_len: usize, delta: i64, ret: *mut u8);
}

/// `kv.increment(key, delta) -> result<s64, error>`. The s64 makes the result 8-aligned:
/// tag @0, then the value or the error @8.
pub(crate) fn kv_increment(key: &str, delta: i64) -> Result<i64> {
    let mut area = RetArea::new();
    unsafe {
        kv_increment_raw(key.as_ptr(), key.len(), delta, area.ptr());
        match area.u8_at(0) {
            0 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&area.0[8..16]);
                Ok(i64::from_le_bytes(b))
            }
            1 => Err(take_error(&area, 8)),
            tag => Err(Error::Failure(format!(
                "the host returned an invalid result tag {}",
                tag
            ))),
        }
    }
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/kv@1.1.0")]
extern "C" {
    #[link_name = "compare-and-set"]
    fn kv_compare_and_set_raw(
        key_ptr: *const u8,
        key_len: usize,
        expected_tag: i32,
        expected_ptr: *const u8,
        expected_len: usize,
        new_ptr: *const u8,
        new_len: usize,
        ret: *mut u8,
    );
}

/// `kv.compare-and-set(key, expected, new) -> result<bool, error>`; the option is passed flat
/// as (tag, ptr, len).
pub(crate) fn kv_compare_and_set(key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool> {
    let (tag, ptr, len) = match expected {
        None => (0, 1 as *const u8, 0),
        Some(bytes) => (1, bytes.as_ptr(), bytes.len()),
    };
    let mut area = RetArea::new();
    unsafe {
        kv_compare_and_set_raw(
            key.as_ptr(),
            key.len(),
            tag,
            ptr,
            len,
            new.as_ptr(),
            new.len(),
            area.ptr(),
        );
        check_result(&area)?;
    }
    match area.u8_at(4) {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(Error::Failure(format!(
            "the host returned an invalid bool {}",
            b
        ))),
    }
}

// ------------------------------------------------------------------------ host (ABI 1.1)

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/host@1.1.0")]
extern "C" {
    #[link_name = "call"]
    fn host_call_raw(
        name_ptr: *const u8,
        name_len: usize,
        payload_ptr: *const u8,
        payload_len: usize,
        ret: *mut u8,
    );
}

/// `host.call(name, payload) -> result<list<u8>, error>`.
pub(crate) fn host_call(name: &str, payload: &[u8]) -> Result<Vec<u8>> {
    let mut area = RetArea::new();
    unsafe {
        host_call_raw(
            name.as_ptr(),
            name.len(),
            payload.as_ptr(),
            payload.len(),
            area.ptr(),
        );
        check_result(&area)?;
        Ok(take_bytes(area.ptr_at(4), area.len_at(8)))
    }
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/host@1.1.0")]
extern "C" {
    #[link_name = "dispatch"]
    fn host_dispatch_raw(
        point_ptr: *const u8,
        point_len: usize,
        payload_ptr: *const u8,
        payload_len: usize,
        ret: *mut u8,
    );
}

/// `host.dispatch(point, payload) -> result<list<u8>, error>`.
pub(crate) fn host_dispatch(point: &str, payload: &[u8]) -> Result<Vec<u8>> {
    let mut area = RetArea::new();
    unsafe {
        host_dispatch_raw(
            point.as_ptr(),
            point.len(),
            payload.as_ptr(),
            payload.len(),
            area.ptr(),
        );
        check_result(&area)?;
        Ok(take_bytes(area.ptr_at(4), area.len_at(8)))
    }
}

// ---------------------------------------------------------------------------------- events

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/events@1.0.0")]
extern "C" {
    #[link_name = "emit"]
    fn events_emit_raw(
        topic_ptr: *const u8,
        topic_len: usize,
        payload_ptr: *const u8,
        payload_len: usize,
        ret: *mut u8,
    );
}

/// `events.emit(topic, payload) -> result<_, error>`.
pub(crate) fn events_emit(topic: &str, payload: &[u8]) -> Result<()> {
    let mut area = RetArea::new();
    unsafe {
        events_emit_raw(
            topic.as_ptr(),
            topic.len(),
            payload.as_ptr(),
            payload.len(),
            area.ptr(),
        );
        check_result(&area)
    }
}

// ----------------------------------------------------------------------------------- clock

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/clock@1.0.0")]
extern "C" {
    #[link_name = "now"]
    fn clock_now_raw() -> i64;
}

/// `clock.now() -> u64`.
pub(crate) fn clock_now() -> u64 {
    unsafe { clock_now_raw() as u64 }
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/clock@1.0.0")]
extern "C" {
    #[link_name = "monotonic"]
    fn clock_monotonic_raw() -> i64;
}

/// `clock.monotonic() -> u64`.
pub(crate) fn clock_monotonic() -> u64 {
    unsafe { clock_monotonic_raw() as u64 }
}

// ---------------------------------------------------------------------------------- random

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/random@1.0.0")]
extern "C" {
    #[link_name = "bytes"]
    fn random_bytes_raw(len: u32, ret: *mut u8);
}

/// `random.bytes(len) -> result<list<u8>, error>`.
pub(crate) fn random_bytes(len: u32) -> Result<Vec<u8>> {
    let mut area = RetArea::new();
    unsafe {
        random_bytes_raw(len, area.ptr());
        check_result(&area)?;
        Ok(take_bytes(area.ptr_at(4), area.len_at(8)))
    }
}

// ------------------------------------------------------------------------------------ http

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "plugbox:plugin/http@1.0.0")]
extern "C" {
    #[link_name = "fetch"]
    fn http_fetch_raw(
        method_ptr: *const u8,
        method_len: usize,
        url_ptr: *const u8,
        url_len: usize,
        headers_ptr: *const u8,
        headers_len: usize,
        body_ptr: *const u8,
        body_len: usize,
        ret: *mut u8,
    );
}

/// `http.fetch(request) -> result<response, error>`; the request record is passed flat.
pub(crate) fn http_fetch(req: &Request) -> Result<Response> {
    let headers: Vec<RawPair> = req
        .headers
        .iter()
        .map(|(k, v)| RawPair {
            key: RawSlice {
                ptr: k.as_ptr(),
                len: k.len(),
            },
            value: RawSlice {
                ptr: v.as_ptr(),
                len: v.len(),
            },
        })
        .collect();
    let mut area = RetArea::new();
    unsafe {
        http_fetch_raw(
            req.method.as_ptr(),
            req.method.len(),
            req.url.as_ptr(),
            req.url.len(),
            headers.as_ptr() as *const u8,
            headers.len(),
            req.body.as_ptr(),
            req.body.len(),
            area.ptr(),
        );
        check_result(&area)?;
        // response: status u16 @0, headers @4, body @12 -- all shifted by the result's 4.
        let headers = take_pairs(area.ptr_at(8), area.len_at(12), "http response headers");
        let body = take_bytes(area.ptr_at(16), area.len_at(20));
        Ok(Response {
            status: area.u16_at(4),
            headers: headers?,
            body,
        })
    }
}

// -------------------------------------------------------------------------- native stubs

/// Stand-ins for the imports on non-wasm targets, never called (see the module docs): they panic.
#[cfg(not(target_arch = "wasm32"))]
#[allow(unused_variables, clippy::too_many_arguments)]
mod native {
    fn unavailable(name: &str) -> ! {
        panic!(
            "plugbox host function {} is only available inside the plugbox wasm sandbox",
            name
        )
    }
    pub unsafe fn log_log(level: i32, message_ptr: *const u8, message_len: usize) {
        unavailable("log.log")
    }
    pub unsafe fn config_get_raw(key_ptr: *const u8, key_len: usize, ret: *mut u8) {
        unavailable("config.get")
    }
    pub unsafe fn config_get_all_raw(ret: *mut u8) {
        unavailable("config.get-all")
    }
    pub unsafe fn kv_get_raw(key_ptr: *const u8, key_len: usize, ret: *mut u8) {
        unavailable("kv.get")
    }
    pub unsafe fn kv_set_raw(k: *const u8, kl: usize, v: *const u8, vl: usize, ret: *mut u8) {
        unavailable("kv.set")
    }
    pub unsafe fn kv_delete_raw(key_ptr: *const u8, key_len: usize, ret: *mut u8) {
        unavailable("kv.delete")
    }
    pub unsafe fn kv_list_keys_raw(prefix_ptr: *const u8, prefix_len: usize, ret: *mut u8) {
        unavailable("kv.list-keys")
    }
    pub unsafe fn kv_increment_raw(key_ptr: *const u8, key_len: usize, d: i64, ret: *mut u8) {
        unavailable("kv.increment")
    }
    pub unsafe fn kv_compare_and_set_raw(
        k: *const u8,
        kl: usize,
        et: i32,
        e: *const u8,
        el: usize,
        n: *const u8,
        nl: usize,
        r: *mut u8,
    ) {
        unavailable("kv.compare-and-set")
    }
    pub unsafe fn host_call_raw(n: *const u8, nl: usize, p: *const u8, pl: usize, r: *mut u8) {
        unavailable("host.call")
    }
    pub unsafe fn host_dispatch_raw(n: *const u8, nl: usize, p: *const u8, pl: usize, r: *mut u8) {
        unavailable("host.dispatch")
    }
    pub unsafe fn events_emit_raw(t: *const u8, tl: usize, p: *const u8, pl: usize, r: *mut u8) {
        unavailable("events.emit")
    }
    pub unsafe fn clock_now_raw() -> i64 {
        unavailable("clock.now")
    }
    pub unsafe fn clock_monotonic_raw() -> i64 {
        unavailable("clock.monotonic")
    }
    pub unsafe fn random_bytes_raw(len: u32, ret: *mut u8) {
        unavailable("random.bytes")
    }
    pub unsafe fn http_fetch_raw(
        m: *const u8,
        ml: usize,
        u: *const u8,
        ul: usize,
        h: *const u8,
        hl: usize,
        b: *const u8,
        bl: usize,
        r: *mut u8,
    ) {
        unavailable("http.fetch")
    }
}

#[cfg(not(target_arch = "wasm32"))]
use native::*;

// ================================================================================= exports
//
// The functions below are what the exports written by `hooks!` call. They are public only so
// that the macro can reach them from the plugin's crate; they are hidden from the docs and must
// only ever be called by those exports, i.e. by the host following the ABI. They take raw
// pointers yet are not `unsafe fn` on purpose: an `unsafe fn` would put an `unsafe` block into
// every plugin crate (through the macro), and the only caller that can break their contract is
// the host, which is outside Rust's reach anyway (hence the clippy allowances).

/// Traps the instance (`unreachable` on wasm).
fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

/// The static return area of the exports: `result<list<u8>, error>` / `result<_, error>`,
/// 16 bytes. Tag 0xff marks it as owning nothing.
static mut EXPORT_RET: RetArea = RetArea([0xff; 24]);

/// The export return area, for the exclusive use of the (single-threaded, non-reentrant) export
/// currently running.
fn export_area() -> &'static mut RetArea {
    // Safety: wasm32-unknown-unknown plugins are single-threaded and the host never re-enters
    // an export while another one runs, so no other reference to the area is alive.
    unsafe { &mut *std::ptr::addr_of_mut!(EXPORT_RET) }
}

/// Leaks `bytes` to the host, returning `(ptr, len)` as 32-bit words; [`free_leaked`] takes
/// them back.
fn leak(bytes: Box<[u8]>) -> (u32, u32) {
    let len = bytes.len() as u32;
    (Box::into_raw(bytes) as *mut u8 as usize as u32, len)
}

/// Frees what [`leak`] returned.
fn free_leaked(ptr: *mut u8, len: usize) {
    // Safety: (ptr, len) came from `leak`, and the caller marks the area as owning nothing
    // right after, so this runs once.
    unsafe { drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len))) }
}

/// Writes `result` into the export return area and returns its address.
fn return_result(result: Result<Option<Vec<u8>>>) -> *mut u8 {
    let area = export_area();
    area.0 = [0; 24];
    match result {
        Ok(None) => area.set_u8(0, 0),
        Ok(Some(bytes)) => {
            let (ptr, len) = leak(bytes.into_boxed_slice());
            area.set_u8(0, 0);
            area.set_u32(4, ptr);
            area.set_u32(8, len);
        }
        Err(e) => {
            area.set_u8(0, 1);
            area.set_u8(4, e.discriminant());
            let message = match e {
                Error::Denied(m)
                | Error::NotFound(m)
                | Error::InvalidInput(m)
                | Error::LimitReached(m)
                | Error::Failure(m) => m,
            };
            let (ptr, len) = leak(message.into_bytes().into_boxed_slice());
            area.set_u32(8, ptr);
            area.set_u32(12, len);
        }
    }
    area.ptr()
}

/// Frees what the result in the export return area owns. `has_list` says whether an ok result
/// carries a list (on-hook) or nothing (on-init).
fn post_return(ret: *mut u8, has_list: bool) {
    let area = export_area();
    if ret != area.ptr() {
        return; // not our area: nothing of ours to free
    }
    match area.u8_at(0) {
        0 if has_list => free_leaked(area.ptr_at(4), area.len_at(8)),
        1 => free_leaked(area.ptr_at(8), area.len_at(12)),
        _ => {}
    }
    area.0 = [0xff; 24];
}

/// Body of the `cabi_realloc` export: allocates (`old_size == 0`), grows or shrinks a buffer.
/// Traps on an invalid alignment or when memory is exhausted.
#[doc(hidden)]
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn export_cabi_realloc(
    old_ptr: *mut u8,
    old_size: usize,
    align: usize,
    new_size: usize,
) -> *mut u8 {
    if new_size == 0 {
        if old_size != 0 {
            if let Ok(layout) = Layout::from_size_align(old_size, align) {
                // Safety: the host hands back a block this function allocated with this layout.
                unsafe { alloc::dealloc(old_ptr, layout) };
            }
        }
        return match align {
            0 => trap(),
            a => a as *mut u8, // a dangling, aligned, non-null pointer for a zero-sized block
        };
    }
    let ptr = if old_size == 0 {
        match Layout::from_size_align(new_size, align) {
            // Safety: the layout has a non-zero size.
            Ok(layout) => unsafe { alloc::alloc(layout) },
            Err(_) => trap(),
        }
    } else {
        match Layout::from_size_align(old_size, align) {
            // Safety: the host hands back a block this function allocated with this layout.
            Ok(layout) => unsafe { alloc::realloc(old_ptr, layout, new_size) },
            Err(_) => trap(),
        }
    };
    if ptr.is_null() {
        trap();
    }
    ptr
}

// ---------------------------------------------------------------------------------- panics

/// Most bytes of a panic report the host reads (the slot is this plus its 4-byte length).
pub const PANIC_REPORT_MAX: usize = 1020;

/// Where the panic hook leaves its report for the host: `len` (u32, little-endian), then `len`
/// bytes of UTF-8: the panic's `file:line:column`, a NUL byte, the panic message. The host
/// finds it through the exported global `plugbox-panic` (the slot's address) and reads it only
/// after the instance trapped; no guest code runs after the panic (abi/README.md, "Panic
/// reports").
#[repr(C, align(4))]
pub struct PanicSlot {
    len: UnsafeCell<u32>,
    bytes: UnsafeCell<[u8; PANIC_REPORT_MAX]>,
}

// Safety: a wasm32-unknown-unknown instance has one thread; only the panic hook writes.
unsafe impl Sync for PanicSlot {}

#[doc(hidden)]
#[export_name = "plugbox-panic"]
pub static PANIC_SLOT: PanicSlot = PanicSlot {
    len: UnsafeCell::new(0),
    bytes: UnsafeCell::new([0; PANIC_REPORT_MAX]),
};

/// Appends to [`PANIC_SLOT`], cutting what does not fit (at a character boundary).
struct SlotWriter {
    at: usize,
}

impl fmt::Write for SlotWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = PANIC_REPORT_MAX - self.at;
        let mut take = s.len().min(room);
        while take > 0 && !s.is_char_boundary(take) {
            take -= 1;
        }
        // Safety: single-threaded, and the slot is written only here, by the panic hook.
        unsafe {
            (&mut *PANIC_SLOT.bytes.get())[self.at..self.at + take]
                .copy_from_slice(&s.as_bytes()[..take]);
            self.at += take;
            *PANIC_SLOT.len.get() = self.at as u32;
        }
        if take < s.len() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

#[allow(deprecated)] // PanicHookInfo, its newer name, is not in rustc 1.63
fn record_panic(info: &std::panic::PanicInfo<'_>) {
    let mut out = SlotWriter { at: 0 };
    // Formatting writes into the static slot: no allocation while panicking.
    let _ = match info.location() {
        Some(at) => write!(out, "{}:{}:{}\0", at.file(), at.line(), at.column()),
        None => out.write_str("\0"),
    };
    let payload = info.payload();
    let _ = if let Some(text) = payload.downcast_ref::<&str>() {
        out.write_str(text)
    } else if let Some(text) = payload.downcast_ref::<String>() {
        out.write_str(text)
    } else {
        out.write_str("Box<dyn Any>")
    };
}

/// Installs the hook that writes panic reports into [`PANIC_SLOT`] (once per instance).
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(record_panic)));
}

/// Body of the `on-init` export: takes the config string, runs `init`, returns the result.
#[doc(hidden)]
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn export_on_init(
    config_ptr: *mut u8,
    config_len: usize,
    init: fn(&str) -> Result<()>,
) -> *mut u8 {
    install_panic_hook();
    // Safety: the host allocated the argument with cabi_realloc and hands it over.
    let config = unsafe { take_bytes(config_ptr, config_len) };
    let result = match String::from_utf8(config) {
        Ok(config) => init(&config),
        Err(_) => Err(Error::InvalidInput(
            "the configuration is not valid UTF-8".to_string(),
        )),
    };
    return_result(result.map(|()| None))
}

/// Body of the `cabi_post_on-init` export.
#[doc(hidden)]
pub fn export_post_on_init(ret: *mut u8) {
    post_return(ret, false)
}

/// Body of the `on-hook` export: takes the hook name and payload, dispatches, returns the
/// result.
#[doc(hidden)]
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn export_on_hook(
    hook_ptr: *mut u8,
    hook_len: usize,
    payload_ptr: *mut u8,
    payload_len: usize,
    dispatch: fn(&str, Vec<u8>) -> Result<Vec<u8>>,
) -> *mut u8 {
    install_panic_hook();
    // Safety: the host allocated both arguments with cabi_realloc and hands them over.
    let (hook, payload) = unsafe {
        (
            take_bytes(hook_ptr, hook_len),
            take_bytes(payload_ptr, payload_len),
        )
    };
    let result = match String::from_utf8(hook) {
        Ok(hook) => dispatch(&hook, payload),
        Err(_) => Err(Error::InvalidInput(
            "the hook name is not valid UTF-8".to_string(),
        )),
    };
    return_result(result.map(Some))
}

/// Body of the `cabi_post_on-hook` export.
#[doc(hidden)]
pub fn export_post_on_hook(ret: *mut u8) {
    post_return(ret, true)
}

// ------------------------------------------------------------------------- native harness

// The function `hooks!` defines natively under this symbol name (one per plugin crate, like
// the wasm exports): the test harness calls the plugin's init and dispatch through it.
#[cfg(not(target_arch = "wasm32"))]
extern "Rust" {
    #[link_name = "plugbox_native_hooks_v1"]
    fn plugbox_native_hooks() -> crate::testing::NativeHooks;
}

/// The plugin's hooks as `hooks!` registered them (natively; a link error names the symbol
/// when the crate under test has no `hooks!`).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn native_hooks() -> crate::testing::NativeHooks {
    // Safety: the symbol is the Rust-ABI function `hooks!` writes, of exactly this type.
    unsafe { plugbox_native_hooks() }
}
