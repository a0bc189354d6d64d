//! # plugbox-sdk: write plugbox plugins in Rust
//!
//! A plugbox plugin is a `cdylib` crate built for `wasm32-unknown-unknown`. It handles *hooks*:
//! the host calls a hook by name with a byte payload (usually JSON) and gets bytes back, or one
//! of the ABI's [`Error`]s. Register the handlers with [`hooks!`]; call host services through
//! the safe modules [`log`], [`config`], [`kv`], [`events`], [`clock`], [`random`] and [`http`],
//! and into the host application through [`host`] (ABI 1.1); report health with [`health`].
//!
//! ```ignore
//! use plugbox_sdk::json::{self, Value};
//! use plugbox_sdk::{hooks, log, Error, Result};
//!
//! fn echo(payload: Vec<u8>) -> Result<Vec<u8>> {
//!     Ok(payload)
//! }
//!
//! fn greet(input: Value) -> Result<Value> {
//!     let name = input.require_str("name")?;
//!     log::info(&format!("greeting {}", name));
//!     Ok(Value::object([("greeting", format!("hello, {}", name))]))
//! }
//!
//! fn init(_config: &str) -> Result<()> {
//!     Ok(())
//! }
//!
//! hooks! {
//!     init: init,                       // optional; defaults to Ok(())
//!     "echo" => echo,                   // fn(Vec<u8>) -> Result<Vec<u8>>
//!     "greet" => json::handler(greet),  // fn(Value) -> Result<Value>, JSON in and out
//! }
//! ```
//!
//! A hook the plugin does not register fails with [`Error::NotFound`] naming it. A panic traps
//! the instance (the release profile must use `panic = "abort"`); the host reports it as a
//! guest trap carrying the panic's message and `file:line:column` (the SDK's panic hook leaves
//! them in the `plugbox-panic` slot, abi/README.md §4) and discards the instance.
//!
//! **ABI versions.** The SDK implements ABI 1.1. Each function is imported from the ABI version
//! that added it (the 1.0 functions from `@1.0.0`, [`host`], [`kv::increment`] and
//! [`kv::compare_and_set`] from `@1.1.0`), so a plugin that calls only 1.0 functions is a 1.0
//! plugin and runs on every 1.x host. A plugin that calls a 1.1 function says so with
//! `hooks! { abi: "1.1", ... }` (which writes `1.1.0` into the `plugbox:abi-version` section)
//! and `"abi": "1.1"` in its manifest; a host offering only 1.0 then refuses it at load time.
//!
//! Only the host services a plugin actually calls end up as imports of its module: the linker
//! drops the rest, so a plugin that never touches `kv` does not import it (and needs no `kv`
//! permission). All `unsafe` code of the SDK is in one private module, `hostcalls`.
//!
//! **Testing.** Under a native `cargo test` the host services are served by the in-memory fake
//! host of [`testing::Harness`], which enforces the manifest's permissions like the runtime
//! and calls the hooks through the same init and dispatch as the wasm exports; see
//! [`testing`] (present on targets other than wasm32 only).

#![deny(missing_docs)]
#![deny(unsafe_code)] // allowed only in `hostcalls`

pub mod clock;
pub mod config;
mod error;
pub mod events;
pub mod health;
pub mod host;
#[doc(hidden)]
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // natively, `testing` serves
pub mod hostcalls;
pub mod http;
pub mod json;
pub mod kv;
pub mod log;
pub mod random;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use error::{Error, Result};

// Where the service modules send their calls: the wasm imports, or natively (under
// `cargo test`) the fake host of the `testing` harness the call runs in.
#[cfg(target_arch = "wasm32")]
use hostcalls as sys;
#[cfg(not(target_arch = "wasm32"))]
use testing::sys;

/// The plugbox ABI version this SDK implements (the newest a plugin built with it can use).
pub const ABI_VERSION: &str = "1.1.0";

/// Content of the `plugbox:abi-version` custom section that [`hooks!`] puts in the module: a
/// plugin is a 1.0 plugin unless it writes `abi: "1.1"`.
#[doc(hidden)]
pub const __ABI_VERSION_SECTION: [u8; 5] = *b"1.0.0";

/// The section of a plugin that writes `hooks! { abi: "1.1", ... }`.
#[doc(hidden)]
pub const __ABI_1_1_SECTION: [u8; 5] = *b"1.1.0";

/// The bytes of `text` as an array of its length: how [`hooks!`] writes the `plugbox:hooks`
/// custom section (a `static` in a link section must be an array; rustc 1.63 has no const
/// `str -> [u8; N]` conversion of its own).
#[doc(hidden)]
pub const fn __section_bytes<const N: usize>(text: &str) -> [u8; N] {
    let bytes = text.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// The `on-init` a plugin gets when it registers none: accepts any configuration.
#[doc(hidden)]
pub fn __default_init(_config: &str) -> Result<()> {
    Ok(())
}

/// The error for a hook no handler is registered for.
#[doc(hidden)]
pub fn __unknown_hook(hook: &str) -> Error {
    Error::NotFound(format!("unknown hook {}", json::quote(hook)))
}

/// Registers the plugin's hook handlers and writes the module's ABI exports.
///
/// ```ignore
/// hooks! {
///     init: my_init,            // optional: fn(&str) -> Result<()>, gets the config as JSON
///     "echo" => echo,           // fn(Vec<u8>) -> Result<Vec<u8>>
///     "text.stats" => json::handler(stats),   // fn(json::Value) -> Result<json::Value>
/// }
/// ```
///
/// Use it once per plugin crate. It writes the exports `on-init`, `cabi_post_on-init`,
/// `on-hook`, `cabi_post_on-hook` and `cabi_realloc`, the `plugbox:abi-version` custom
/// section, and the `plugbox:hooks` custom section (the hook names, each followed by a
/// newline), which `plugbox build` compares with the manifest's `hooks`. A handler is any expression callable as `fn(Vec<u8>) -> Result<Vec<u8>>`; calling
/// a hook that is not listed fails with [`Error::NotFound`].
///
/// Natively (under `cargo test`) it also defines the symbol `plugbox_native_hooks_v1`, through
/// which [`testing::Harness`] runs the same init and dispatch; the wasm module does not have it.
///
/// A plugin that calls ABI 1.1 functions ([`host`], [`kv::increment`], [`kv::compare_and_set`])
/// starts the list with `abi: "1.1",` (before `init:`), and declares `"abi": "1.1"` in its
/// manifest; without it the module says ABI 1.0 and the host refuses its 1.1 imports.
#[macro_export]
macro_rules! hooks {
    (abi: "1.1", init: $init:expr, $($hook:literal => $handler:expr),+ $(,)?) => {
        $crate::__plugbox_exports!($crate::__ABI_1_1_SECTION; $init; $($hook => $handler),+);
    };
    (abi: "1.1", $($hook:literal => $handler:expr),+ $(,)?) => {
        $crate::__plugbox_exports!(
            $crate::__ABI_1_1_SECTION; $crate::__default_init; $($hook => $handler),+);
    };
    (abi: "1.0", $($rest:tt)*) => {
        $crate::hooks!($($rest)*);
    };
    (init: $init:expr, $($hook:literal => $handler:expr),+ $(,)?) => {
        $crate::__plugbox_exports!($crate::__ABI_VERSION_SECTION; $init; $($hook => $handler),+);
    };
    ($($hook:literal => $handler:expr),+ $(,)?) => {
        $crate::__plugbox_exports!(
            $crate::__ABI_VERSION_SECTION; $crate::__default_init; $($hook => $handler),+);
    };
}

/// Implementation of [`hooks!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __plugbox_exports {
    ($section:expr; $init:expr; $($hook:literal => $handler:expr),+) => {
        const _: () = {
            #[link_section = "plugbox:abi-version"]
            #[used]
            static PLUGBOX_ABI_VERSION: [u8; 5] = $section;

            const PLUGBOX_HOOKS: &str = concat!($($hook, "\n"),+);
            #[link_section = "plugbox:hooks"]
            #[used]
            static PLUGBOX_HOOKS_SECTION: [u8; PLUGBOX_HOOKS.len()] =
                $crate::__section_bytes::<{ PLUGBOX_HOOKS.len() }>(PLUGBOX_HOOKS);

            fn plugbox_init(config: &str) -> $crate::Result<()> {
                ($init)(config)
            }

            fn plugbox_dispatch(
                hook: &str,
                payload: ::std::vec::Vec<u8>,
            ) -> $crate::Result<::std::vec::Vec<u8>> {
                match hook {
                    $($hook => ($handler)(payload),)+
                    other => ::core::result::Result::Err($crate::__unknown_hook(other)),
                }
            }

            // Natively, the test harness (plugbox_sdk::testing) finds the hooks by this symbol.
            #[cfg(not(target_arch = "wasm32"))]
            #[export_name = "plugbox_native_hooks_v1"]
            fn plugbox_native_hooks() -> $crate::testing::NativeHooks {
                $crate::testing::NativeHooks {
                    init: plugbox_init,
                    dispatch: plugbox_dispatch,
                    hooks: PLUGBOX_HOOKS,
                }
            }

            #[export_name = "on-init"]
            extern "C" fn plugbox_on_init(config_ptr: *mut u8, config_len: usize) -> *mut u8 {
                $crate::hostcalls::export_on_init(config_ptr, config_len, plugbox_init)
            }

            #[export_name = "cabi_post_on-init"]
            extern "C" fn plugbox_post_on_init(ret: *mut u8) {
                $crate::hostcalls::export_post_on_init(ret)
            }

            #[export_name = "on-hook"]
            extern "C" fn plugbox_on_hook(
                hook_ptr: *mut u8,
                hook_len: usize,
                payload_ptr: *mut u8,
                payload_len: usize,
            ) -> *mut u8 {
                $crate::hostcalls::export_on_hook(
                    hook_ptr,
                    hook_len,
                    payload_ptr,
                    payload_len,
                    plugbox_dispatch,
                )
            }

            #[export_name = "cabi_post_on-hook"]
            extern "C" fn plugbox_post_on_hook(ret: *mut u8) {
                $crate::hostcalls::export_post_on_hook(ret)
            }

            #[export_name = "cabi_realloc"]
            extern "C" fn plugbox_cabi_realloc(
                old_ptr: *mut u8,
                old_size: usize,
                align: usize,
                new_size: usize,
            ) -> *mut u8 {
                $crate::hostcalls::export_cabi_realloc(old_ptr, old_size, align, new_size)
            }
        };
    };
}
