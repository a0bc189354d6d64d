//! hostile: a TEST-ONLY plugin that breaks the rules on purpose, so the host's defences can be
//! tested. It does not use the SDK: it writes the raw ABI exports by hand (see abi/README.md)
//! and imports only `log`. It has no `on-init` (the export is optional).
//!
//! | hook             | what it does                                                          |
//! |------------------|-----------------------------------------------------------------------|
//! | `loop`           | spins forever (stopped by fuel or the deadline)                       |
//! | `bomb`           | allocates 1 MiB chunks, kept alive, until memory cannot grow; then traps |
//! | `recurse`        | unbounded non-tail recursion (wasm stack overflow)                    |
//! | `bad-result-ptr` | returns a result pointer whose 16-byte area runs past the end of memory |
//! | `bad-result-len` | returns ok with a list whose (ptr, len) runs past the end of memory   |
//! | `bad-tag`        | returns a result with tag 7                                           |
//! | `bad-error-utf8` | returns err(failure) whose message is invalid UTF-8                   |
//! | `bad-host-ptr`   | calls `log` with a message (ptr, len) running past the end of memory  |
//! | `bad-host-utf8`  | calls `log` with a message that is invalid UTF-8                      |
//! | `echo`           | behaves: returns its payload, so tests can show the host still serves |
//!
//! Any other hook returns err(not-found).

#![allow(clippy::missing_safety_doc)]

use std::alloc::{self, Layout};
use std::ptr::{self, addr_of, addr_of_mut};

#[link_section = "plugbox:abi-version"]
#[used]
static ABI_VERSION: [u8; 5] = *b"1.0.0";

#[link(wasm_import_module = "plugbox:plugin/log@1.0.0")]
extern "C" {
    #[link_name = "log"]
    fn host_log(level: i32, message_ptr: *const u8, message_len: usize);
}

/// The export return area: `result<list<u8>, error>`, 16 bytes.
#[repr(C, align(8))]
struct RetArea([u8; 16]);

static mut RET: RetArea = RetArea([0; 16]);
/// True while RET holds an ok list this module allocated (only `echo` results).
static mut RET_OWNED: bool = false;
/// Chunks `bomb` keeps alive.
static mut KEPT: Vec<Vec<u8>> = Vec::new();
/// Written through volatile stores so nothing here is optimized away.
static mut SINK: u64 = 0;

static BAD_UTF8: [u8; 4] = [0xff, 0xfe, 0xc3, 0x28];
static UNKNOWN_HOOK: &[u8] = b"hostile: unknown hook";

fn memory_end() -> usize {
    core::arch::wasm32::memory_size(0) * 65536
}

unsafe fn sink(v: u64) {
    ptr::write_volatile(addr_of_mut!(SINK), v);
}

unsafe fn ret_area() -> *mut u8 {
    addr_of_mut!(RET) as *mut u8
}

unsafe fn put_u32(offset: usize, v: u32) {
    (ret_area().add(offset) as *mut u32).write(v)
}

/// Fills RET with ok(list at ptr, len).
unsafe fn ret_ok(ptr: usize, len: usize) -> *mut u8 {
    *ret_area() = 0;
    put_u32(4, ptr as u32);
    put_u32(8, len as u32);
    ret_area()
}

/// Fills RET with err(kind, message at ptr, len).
unsafe fn ret_err(kind: u8, ptr: usize, len: usize) -> *mut u8 {
    *ret_area() = 1;
    *ret_area().add(4) = kind;
    put_u32(8, ptr as u32);
    put_u32(12, len as u32);
    ret_area()
}

unsafe fn take(ptr: *mut u8, len: usize) -> Vec<u8> {
    if len == 0 {
        Vec::new()
    } else {
        Vec::from_raw_parts(ptr, len, len)
    }
}

#[inline(never)]
#[allow(unconditional_recursion)]
unsafe fn recurse(depth: u64) -> u64 {
    sink(depth);
    // Work after the call keeps it from being a tail call, and the volatile stores keep the
    // recursion from being folded away.
    let below = recurse(depth + 1);
    sink(below);
    below.wrapping_mul(31).wrapping_add(depth)
}

#[export_name = "cabi_realloc"]
pub unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_size: usize,
    align: usize,
    new_size: usize,
) -> *mut u8 {
    if new_size == 0 {
        return align as *mut u8;
    }
    let p = if old_size == 0 {
        alloc::alloc(Layout::from_size_align_unchecked(new_size, align))
    } else {
        alloc::realloc(
            old_ptr,
            Layout::from_size_align_unchecked(old_size, align),
            new_size,
        )
    };
    if p.is_null() {
        core::arch::wasm32::unreachable();
    }
    p
}

/// Accepts any configuration (frees it) and returns ok(()), so the module is a complete plugin
/// world and can also be wrapped as a component.
#[export_name = "on-init"]
pub unsafe extern "C" fn on_init(config_ptr: *mut u8, config_len: usize) -> *mut u8 {
    drop(take(config_ptr, config_len));
    RET_OWNED = false;
    *ret_area() = 0;
    ret_area()
}

#[export_name = "on-hook"]
pub unsafe extern "C" fn on_hook(
    hook_ptr: *mut u8,
    hook_len: usize,
    payload_ptr: *mut u8,
    payload_len: usize,
) -> *mut u8 {
    let hook = take(hook_ptr, hook_len);
    let payload = take(payload_ptr, payload_len);
    RET_OWNED = false;
    match hook.as_slice() {
        b"loop" => loop {
            sink(ptr::read_volatile(addr_of!(SINK)).wrapping_add(1));
        },
        b"bomb" => loop {
            let mut chunk = vec![0u8; 1 << 20];
            // Touch every page so the memory is really in use.
            for i in (0..chunk.len()).step_by(4096) {
                chunk[i] = 1;
            }
            (*addr_of_mut!(KEPT)).push(chunk);
            sink((*addr_of!(KEPT)).len() as u64);
        },
        b"recurse" => {
            let r = recurse(0);
            sink(r);
            ret_ok(0, 0)
        }
        // The 16-byte result area starts 8 bytes before the end of memory.
        b"bad-result-ptr" => (memory_end() - 8) as *mut u8,
        // ok(list): starts inside memory, runs a whole memory size past its end.
        b"bad-result-len" => ret_ok(1024, memory_end()),
        b"bad-tag" => {
            ret_ok(0, 0);
            *ret_area() = 7;
            ret_area()
        }
        b"bad-error-utf8" => ret_err(4, BAD_UTF8.as_ptr() as usize, BAD_UTF8.len()),
        b"bad-host-ptr" => {
            host_log(2, (memory_end() - 10) as *const u8, 100);
            ret_ok(0, 0)
        }
        b"bad-host-utf8" => {
            host_log(2, BAD_UTF8.as_ptr(), BAD_UTF8.len());
            ret_ok(0, 0)
        }
        b"echo" => {
            let out = payload.into_boxed_slice();
            let len = out.len();
            let ptr = Box::into_raw(out) as *mut u8 as usize;
            RET_OWNED = true;
            ret_ok(ptr, len)
        }
        _ => ret_err(1, UNKNOWN_HOOK.as_ptr() as usize, UNKNOWN_HOOK.len()),
    }
}

#[export_name = "cabi_post_on-hook"]
pub unsafe extern "C" fn post_on_hook(ret: *mut u8) {
    if RET_OWNED && ret == ret_area() {
        let ptr = *(ret.add(4) as *const u32) as usize as *mut u8;
        let len = *(ret.add(8) as *const u32) as usize;
        drop(Box::from_raw(ptr::slice_from_raw_parts_mut(ptr, len)));
        RET_OWNED = false;
    }
}
