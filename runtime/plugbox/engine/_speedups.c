/*
 * plugbox.engine._speedups: the hot loop of plugbox.engine._fastpath in C.
 *
 * A call into a plugin is a fixed sequence of wasmtime C API calls (set fuel, set the epoch
 * deadline, cabi_realloc per argument, copy the arguments in, call the export, read the
 * result area, copy the result out, call cabi_post_*). From Python each step is a ctypes
 * call costing ~0.5 us; here the whole sequence is one call. Instantiation (store, limiter,
 * InstancePre, export lookups) likewise.
 *
 * This module never links against wasmtime: plugbox.engine._fastpath hands it the addresses of the
 * C API functions (resolved by ctypes from wasmtime-py's library) through bind(). It keeps no
 * state besides those pointers, and it never decides policy: every outcome other than a clean
 * result goes back to Python as a status tuple, and _fastpath turns it into a typed error.
 *
 * Every guest pointer is checked against the memory's current size before it is touched.
 * Guest code always runs with the GIL released, so other Python threads keep running; host
 * functions reacquire it in the trampolines below.
 *
 * Besides the call sequence it holds the three pieces that must not depend on Python behaving:
 *   - the host-function trampolines (core and component): whatever the Python body does,
 *     including failing to start at all (RecursionError, MemoryError), wasmtime gets back NULL
 *     or a trap/error made here, never an uninitialised pointer;
 *   - the epoch ticker, a pthread that increments the engine's epoch without the GIL, so
 *     deadlines hold however busy the interpreter is;
 *   - stack_room(), the bytes left on the calling thread's stack (max_wasm_stack must fit).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef union {
    int32_t i32;
    int64_t i64;
    uint8_t v128[16];
} raw_val;

typedef void *(*func_call_fn)(void *ctx, const void *func, raw_val *args, size_t n, void **trap);
typedef void *(*set_fuel_fn)(void *ctx, uint64_t fuel);
typedef void *(*get_fuel_fn)(const void *ctx, uint64_t *fuel);
typedef void (*set_epoch_fn)(void *ctx, uint64_t ticks);
typedef size_t (*mem_size_fn)(const void *ctx, const void *mem);
typedef void *(*store_new_fn)(void *engine, void *data, void *finalizer);
typedef void *(*store_context_fn)(void *store);
typedef void (*store_limiter_fn)(void *store, int64_t, int64_t, int64_t, int64_t, int64_t);
typedef void (*store_delete_fn)(void *store);
typedef void *(*pre_instantiate_fn)(void *pre, void *ctx, void *instance, void **trap);
typedef bool (*export_get_fn)(void *ctx, const void *instance, const char *name, size_t len,
                              void *out);
typedef void (*error_delete_fn)(void *error);
typedef void (*vallist_new_uninit_fn)(void *out, size_t size);
typedef void (*increment_epoch_fn)(void *engine);
typedef void *(*trap_new_fn)(const char *msg, size_t len);
typedef void *(*error_new_fn)(const char *msg);
typedef void *(*epoch_cb_fn)(void *ctx, void *data, uint64_t *delta, uint8_t *kind);
typedef void (*set_epoch_cb_fn)(void *store, epoch_cb_fn cb, void *data, void *finalizer);

static func_call_fn p_func_call;
static set_fuel_fn p_set_fuel;
static set_epoch_fn p_set_epoch;
static mem_size_fn p_mem_size;
static store_new_fn p_store_new;
static store_context_fn p_store_context;
static store_limiter_fn p_store_limiter;
static store_delete_fn p_store_delete;
static pre_instantiate_fn p_pre_instantiate;
static export_get_fn p_export_get;
static error_delete_fn p_error_delete;
static vallist_new_uninit_fn p_vallist_new_uninit;
static increment_epoch_fn p_increment_epoch;
static trap_new_fn p_trap_new;
static error_new_fn p_error_new;
static set_epoch_cb_fn p_set_epoch_cb;
static get_fuel_fn p_get_fuel;
static int bound = 0;

#define N_BOUND 17

/* Guest error messages are copied out up to this many bytes (the rest is counted, not copied);
 * _fastpath.GUEST_ERROR_MAX is the same number. */
#define GUEST_ERROR_MAX 4096

/* Per-instance control words shared with Python (an int64[8] owned by the instance, and the
 * data of its store's epoch-deadline callback):
 * [0] phase: 1 while the host runs cabi_realloc or cabi_post_* (imports are refused then);
 * [1] interrupted: set by Plugin.close / Runtime.close from any thread;
 * [2] deadline: CLOCK_MONOTONIC ns when the current call must end, 0 = by epoch ticks only;
 * [3] tick: the engine's epoch tick in ns;
 * [4] stack: native stack a call needs (max_wasm_stack + host frames), checked first;
 * [5] fuel used by the last hook call (written after it, whatever its outcome);
 * [6] fuel used by all the instance's hook calls;
 * [7] linear memory size in bytes after the last hook call (memory only grows: its peak).
 * [5]-[7] are read lazily by the metrics (from any thread, even after the store is freed), so
 * a call pays one wasmtime_context_get_fuel here instead of ctypes calls in Python. */
#define CTL_PHASE 0
#define CTL_INTERRUPTED 1
#define CTL_DEADLINE 2
#define CTL_TICK 3
#define CTL_STACK 4
#define CTL_FUEL_LAST 5
#define CTL_FUEL_TOTAL 6
#define CTL_MEMORY 7
/* With a clock deadline, the guest checks in with epoch_callback every CHECK_TICKS ticks: the
 * latency of an interrupt, and the granularity of the clock deadline. */
#define CHECK_TICKS 8
#define MSG_INTERRUPTED "plugbox: interrupted: closed while the call ran"
#define MSG_DEADLINE "plugbox: wall-clock deadline passed"

/* Status codes returned to Python (see _fastpath._ACCEL_*). */
enum {
    ST_OK = 0,          /* (0, payload) */
    ST_GUEST_ERR = 1,   /* (1, kind, message bytes) */
    ST_TRAP = 2,        /* (2, trap pointer) */
    ST_ERROR = 3,       /* (3, wasmtime_error pointer) */
    ST_BAD_ALLOC = 4,   /* (4, ptr, size): cabi_realloc returned an unusable pointer */
    ST_BAD_RETPTR = 5,  /* (5, ptr, memory size) */
    ST_BAD_TAG = 6,     /* (6, tag) result discriminant */
    ST_BAD_ERRTAG = 7,  /* (7, tag) error discriminant */
    ST_BAD_RANGE = 8,   /* (8, ptr, len): result payload or message outside memory */
    ST_SMALL_STACK = 9, /* (9, room, need): this thread's stack cannot hold the call; nothing ran */
};

#define N_ERROR_KINDS 5

static int as_ptr(PyObject *o, void **out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = (void *)(uintptr_t)v;
    return 0;
}

static PyObject *speedups_bind(PyObject *self, PyObject *args) {
    PyObject *t;
    if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &t)) return NULL;
    if (PyTuple_GET_SIZE(t) != N_BOUND) {
        PyErr_SetString(PyExc_ValueError, "bind() expects 17 function addresses");
        return NULL;
    }
    void *f[N_BOUND];
    for (int i = 0; i < N_BOUND; i++) {
        if (as_ptr(PyTuple_GET_ITEM(t, i), &f[i]) < 0) return NULL;
        if (!f[i]) {
            PyErr_SetString(PyExc_ValueError, "bind(): null function address");
            return NULL;
        }
    }
    p_func_call = (func_call_fn)f[0];
    p_set_fuel = (set_fuel_fn)f[1];
    p_set_epoch = (set_epoch_fn)f[2];
    p_mem_size = (mem_size_fn)f[3];
    p_store_new = (store_new_fn)f[4];
    p_store_context = (store_context_fn)f[5];
    p_store_limiter = (store_limiter_fn)f[6];
    p_store_delete = (store_delete_fn)f[7];
    p_pre_instantiate = (pre_instantiate_fn)f[8];
    p_export_get = (export_get_fn)f[9];
    p_error_delete = (error_delete_fn)f[10];
    p_vallist_new_uninit = (vallist_new_uninit_fn)f[11];
    p_increment_epoch = (increment_epoch_fn)f[12];
    p_trap_new = (trap_new_fn)f[13];
    p_error_new = (error_new_fn)f[14];
    p_set_epoch_cb = (set_epoch_cb_fn)f[15];
    p_get_fuel = (get_fuel_fn)f[16];
    bound = 1;
    Py_RETURN_NONE;
}

/* Run one guest function; the caller has released the GIL. Returns a status (ST_OK, ST_TRAP,
 * ST_ERROR); *fault receives the trap or error pointer. */
static int guest_call_nogil(void *ctx, const void *func, raw_val *args, size_t n, void **fault) {
    void *trap = NULL, *err;
    err = p_func_call(ctx, func, args, n, &trap);
    if (err) { *fault = err; return ST_ERROR; }
    if (trap) { *fault = trap; return ST_TRAP; }
    return ST_OK;
}

/* Run one guest function with the GIL released. */
static int guest_call(void *ctx, const void *func, raw_val *args, size_t n, void **fault) {
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = guest_call_nogil(ctx, func, args, n, fault);
    Py_END_ALLOW_THREADS
    return st;
}

/* cabi_realloc(0, 0, align, size) and copy data in; the caller has released the GIL. */
static int lower(void *ctx, const void *mem, uint8_t *base, const void *realloc_fn,
                 const uint8_t *data, size_t size, uint32_t align, uint32_t *out_ptr,
                 void **fault, uint64_t *bad_a, uint64_t *bad_b) {
    if (size == 0) { *out_ptr = align; return ST_OK; }
    raw_val a[4];
    memset(a, 0, sizeof a);
    a[2].i32 = (int32_t)align;
    a[3].i32 = (int32_t)size;
    int st = guest_call_nogil(ctx, realloc_fn, a, 4, fault);
    if (st != ST_OK) return st;
    uint32_t p = (uint32_t)a[0].i32;
    size_t msize = p_mem_size(ctx, mem);
    if ((p % align) != 0 || (uint64_t)p + size > msize) {
        *bad_a = p; *bad_b = size;
        return ST_BAD_ALLOC;
    }
    memcpy(base + p, data, size);
    *out_ptr = p;
    return ST_OK;
}

static int64_t monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* The store's epoch-deadline callback (data: the instance's control words). Runs on the guest's
 * thread without the GIL whenever the epoch reaches the store's deadline: ends the call when it
 * was interrupted or its clock deadline passed, else lets it run CHECK_TICKS more ticks (or
 * until the deadline, if sooner). */
static void *epoch_callback(void *ctx, void *data, uint64_t *delta, uint8_t *kind) {
    (void)ctx;
    int64_t *ctl = (int64_t *)data;
    if (__atomic_load_n(&ctl[CTL_INTERRUPTED], __ATOMIC_SEQ_CST)) return p_error_new(MSG_INTERRUPTED);
    int64_t deadline = ctl[CTL_DEADLINE], tick = ctl[CTL_TICK] > 0 ? ctl[CTL_TICK] : 1;
    if (!deadline) return p_error_new(MSG_DEADLINE);
    int64_t left = deadline - monotonic_ns();
    if (left <= 0) return p_error_new(MSG_DEADLINE);
    int64_t ticks = left / tick + 1;
    *delta = (uint64_t)(ticks < CHECK_TICKS ? ticks : CHECK_TICKS);
    *kind = 0; /* WASMTIME_UPDATE_DEADLINE_CONTINUE */
    return NULL;
}

/* The epoch deadline a call starts with: the first check-in, or ``ticks`` when no clock
 * deadline is set (instantiation). */
static uint64_t first_check(const int64_t *ctl, uint64_t ticks) {
    if (ctl[CTL_DEADLINE] && ticks > CHECK_TICKS) return CHECK_TICKS;
    return ticks;
}

/* Bytes left below this point on the calling thread's stack, or -1 when unknown. */
static __thread uintptr_t t_stack_low = 0;

static long long stack_room_c(void) {
    if (!t_stack_low) {
        pthread_attr_t attr;
        void *addr = NULL;
        size_t size = 0;
        if (pthread_getattr_np(pthread_self(), &attr) != 0) return -1;
        pthread_attr_getstack(&attr, &addr, &size);
        pthread_attr_destroy(&attr);
        if (!addr) return -1;
        t_stack_low = (uintptr_t)addr;
    }
    volatile char here = 0;
    uintptr_t sp = (uintptr_t)&here;
    return sp > t_stack_low ? (long long)(sp - t_stack_low) : 0;
}

static PyObject *status2(int st, uint64_t a, uint64_t b) {
    return Py_BuildValue("(iKK)", st, (unsigned long long)a, (unsigned long long)b);
}

/*
 * call_entry(ctx, mem, base, realloc, func, post, first, second, fuel, ticks, ctl, deadline)
 *   first: bytes or None (None: the export takes one string argument, e.g. on-init)
 *   second: bytes-like payload
 *   ctl: address of the instance's int64[8] control words (CTL_*)
 *   deadline: time.monotonic() seconds when the call must end (stored in ctl), or None
 * Returns (0, payload) | (1, kind, message, bytes dropped) | (status, a, b) for failures.
 */
static PyObject *speedups_call_entry(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (!bound) { PyErr_SetString(PyExc_RuntimeError, "_speedups not bound"); return NULL; }
    if (nargs != 12) { PyErr_SetString(PyExc_TypeError, "call_entry() takes 12 arguments"); return NULL; }
    void *ctx, *mem, *base_v, *realloc_fn, *func, *post, *ctl_v;
    if (as_ptr(args[0], &ctx) < 0 || as_ptr(args[1], &mem) < 0 || as_ptr(args[2], &base_v) < 0 ||
        as_ptr(args[3], &realloc_fn) < 0 || as_ptr(args[4], &func) < 0 || as_ptr(args[5], &post) < 0 ||
        as_ptr(args[10], &ctl_v) < 0)
        return NULL;
    int64_t *ctl = (int64_t *)ctl_v;
    long long room = stack_room_c();
    if (room >= 0 && room < ctl[CTL_STACK]) return status2(ST_SMALL_STACK, (uint64_t)room, (uint64_t)ctl[CTL_STACK]);
    uint8_t *base = (uint8_t *)base_v;
    unsigned long long fuel = PyLong_AsUnsignedLongLong(args[8]);
    if (fuel == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    unsigned long long ticks = PyLong_AsUnsignedLongLong(args[9]);
    if (ticks == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    double deadline = 0.0;
    if (args[11] != Py_None) {
        deadline = PyFloat_AsDouble(args[11]);
        if (deadline == -1.0 && PyErr_Occurred()) return NULL;
    }
    ctl[CTL_DEADLINE] = deadline > 0 ? (int64_t)(deadline * 1e9) : 0;

    Py_buffer first = {0}, second = {0};
    int have_first = args[6] != Py_None;
    if (have_first && PyObject_GetBuffer(args[6], &first, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[7], &second, PyBUF_SIMPLE) < 0) {
        if (have_first) PyBuffer_Release(&first);
        return NULL;
    }
    PyObject *result = NULL;
    void *fault = NULL;
    uint64_t bad_a = 0, bad_b = 0;
    int st;
    int ran = 0; /* the guest was given its fuel: account for what it used */

    void *fuel_err = p_set_fuel(ctx, fuel);
    if (fuel_err) { result = status2(ST_ERROR, (uint64_t)(uintptr_t)fuel_err, 0); goto done; }
    ran = have_first;
    /* An interrupt that came before the call began ends it at its first instruction. */
    p_set_epoch(ctx, __atomic_load_n(&ctl[CTL_INTERRUPTED], __ATOMIC_SEQ_CST) ? 0
                                                                           : first_check(ctl, ticks));

    raw_val a[4];
    uint32_t p1 = 0, p2 = 0;
    ctl[CTL_PHASE] = 1;
    /* Argument allocation, copies and the export run in one stretch without the GIL: each
     * reacquisition can cost a switch interval (5 ms) when Python threads are busy, and a
     * deadline is only as good as the wait for the GIL after it. The buffers stay exported
     * (pinned) meanwhile. */
    Py_BEGIN_ALLOW_THREADS
    st = ST_OK;
    if (have_first)
        st = lower(ctx, mem, base, realloc_fn, first.buf, (size_t)first.len, 1, &p1, &fault, &bad_a, &bad_b);
    if (st == ST_OK)
        st = lower(ctx, mem, base, realloc_fn, second.buf, (size_t)second.len, 1, &p2, &fault, &bad_a, &bad_b);
    if (st == ST_OK) {
        size_t n;
        memset(a, 0, sizeof a);
        if (have_first) {
            a[0].i32 = (int32_t)p1; a[1].i32 = (int32_t)first.len;
            a[2].i32 = (int32_t)p2; a[3].i32 = (int32_t)second.len;
            n = 4;
        } else {
            a[0].i32 = (int32_t)p2; a[1].i32 = (int32_t)second.len;
            n = 2;
        }
        ctl[CTL_PHASE] = 0;
        st = guest_call_nogil(ctx, func, a, n, &fault);
    }
    Py_END_ALLOW_THREADS
    if (st != ST_OK) goto fail;

    uint32_t ret = (uint32_t)a[0].i32;
    size_t msize = p_mem_size(ctx, mem);
    if ((ret & 3) != 0 || (uint64_t)ret + 16 > msize) {
        st = ST_BAD_RETPTR; bad_a = ret; bad_b = msize;
        goto fail;
    }
    uint8_t tag = base[ret];
    uint32_t w[3];
    memcpy(w, base + ret + 4, sizeof w);
    if (tag == 0) {
        if (!have_first) {
            result = Py_BuildValue("(iy#)", ST_OK, "", (Py_ssize_t)0);
        } else {
            if ((uint64_t)w[0] + w[1] > msize) { st = ST_BAD_RANGE; bad_a = w[0]; bad_b = w[1]; goto fail; }
            result = Py_BuildValue("(iy#)", ST_OK, (const char *)(base + w[0]), (Py_ssize_t)w[1]);
        }
    } else if (tag == 1) {
        uint8_t kind = base[ret + 4];
        uint32_t mptr, mlen;
        memcpy(&mptr, base + ret + 8, 4);
        memcpy(&mlen, base + ret + 12, 4);
        if (kind >= N_ERROR_KINDS) { st = ST_BAD_ERRTAG; bad_a = kind; goto fail; }
        if ((uint64_t)mptr + mlen > msize) { st = ST_BAD_RANGE; bad_a = mptr; bad_b = mlen; goto fail; }
        uint32_t kept = mlen > GUEST_ERROR_MAX ? GUEST_ERROR_MAX : mlen;
        result = Py_BuildValue("(iiy#K)", ST_GUEST_ERR, (int)kind, (const char *)(base + mptr),
                               (Py_ssize_t)kept, (unsigned long long)(mlen - kept));
    } else {
        st = ST_BAD_TAG; bad_a = tag;
        goto fail;
    }
    if (!result) goto done;
    if (post) {
        memset(a, 0, sizeof a);
        a[0].i32 = (int32_t)ret;
        ctl[CTL_PHASE] = 1;
        st = guest_call(ctx, post, a, 1, &fault);
        if (st != ST_OK) {
            Py_DECREF(result);
            result = status2(st, (uint64_t)(uintptr_t)fault, 0);
        }
    }
    goto done;

fail:
    if (st == ST_TRAP || st == ST_ERROR) result = status2(st, (uint64_t)(uintptr_t)fault, 0);
    else result = status2(st, bad_a, bad_b);
done:
    ctl[CTL_PHASE] = 0;
    if (ran) {
        uint64_t left = 0;
        void *get_err = p_get_fuel(ctx, &left);
        if (get_err) p_error_delete(get_err);
        else {
            int64_t used = left < fuel ? (int64_t)(fuel - left) : 0;
            ctl[CTL_FUEL_LAST] = used;
            ctl[CTL_FUEL_TOTAL] += used;
        }
        ctl[CTL_MEMORY] = (int64_t)p_mem_size(ctx, mem);
    }
    if (have_first) PyBuffer_Release(&first);
    PyBuffer_Release(&second);
    return result;
}

/*
 * instantiate(engine, pre, memory_cap, fuel, ticks, names, out, instance_out, ctl, start)
 *   names: tuple of bytes export names; out: address of len(names) * 32 writable bytes that
 *   receive each export's wasmtime_extern_t (zeroed when absent); instance_out: address of
 *   a wasmtime_instance_t; ctl: the instance's control words (epoch-callback data); start:
 *   true when the module has a start function (the GIL is released only then).
 * Returns (0, store, ctx, found_mask) or (2|3, fault, 0) with the store already freed.
 */
static PyObject *speedups_instantiate(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (!bound) { PyErr_SetString(PyExc_RuntimeError, "_speedups not bound"); return NULL; }
    if (nargs != 10) { PyErr_SetString(PyExc_TypeError, "instantiate() takes 10 arguments"); return NULL; }
    void *engine, *pre, *out, *instance, *ctl;
    if (as_ptr(args[0], &engine) < 0 || as_ptr(args[1], &pre) < 0 ||
        as_ptr(args[6], &out) < 0 || as_ptr(args[7], &instance) < 0 || as_ptr(args[8], &ctl) < 0)
        return NULL;
    long long cap = PyLong_AsLongLong(args[2]);
    if (cap == -1 && PyErr_Occurred()) return NULL;
    unsigned long long fuel = PyLong_AsUnsignedLongLong(args[3]);
    if (fuel == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    unsigned long long ticks = PyLong_AsUnsignedLongLong(args[4]);
    if (ticks == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    PyObject *names = args[5];
    if (!PyTuple_Check(names)) { PyErr_SetString(PyExc_TypeError, "names must be a tuple"); return NULL; }

    void *store = p_store_new(engine, NULL, NULL);
    if (!store) { PyErr_SetString(PyExc_MemoryError, "wasmtime_store_new failed"); return NULL; }
    void *ctx = p_store_context(store);
    /* memory bytes, table elements, instances, tables, memories */
    p_store_limiter(store, cap, 100000, 1, 4, 1);
    void *fuel_err = p_set_fuel(ctx, fuel);
    if (fuel_err) {
        p_store_delete(store);
        return Py_BuildValue("(iKii)", ST_ERROR, (unsigned long long)(uintptr_t)fuel_err, 0, 0);
    }
    p_set_epoch(ctx, ticks);
    void *trap = NULL, *err;
    /* Only a start function runs guest code while instantiating. Without one, instantiation
     * takes microseconds, and releasing the GIL for it would cost the caller a wait to get it
     * back, which under load (busy Python threads) is several switch intervals. */
    if (PyObject_IsTrue(args[9])) {
        Py_BEGIN_ALLOW_THREADS
        err = p_pre_instantiate(pre, ctx, instance, &trap);
        Py_END_ALLOW_THREADS
    } else {
        err = p_pre_instantiate(pre, ctx, instance, &trap);
    }
    if (err || trap) {
        p_store_delete(store);
        return Py_BuildValue("(iKii)", err ? ST_ERROR : ST_TRAP,
                             (unsigned long long)(uintptr_t)(err ? err : trap), 0, 0);
    }
    /* Installed after instantiation, so start-up code still ends in a plain interrupt trap. */
    p_set_epoch_cb(store, epoch_callback, ctl, NULL);
    unsigned long long mask = 0;
    Py_ssize_t count = PyTuple_GET_SIZE(names);
    for (Py_ssize_t i = 0; i < count && i < 64; i++) {
        char *name; Py_ssize_t len;
        if (PyBytes_AsStringAndSize(PyTuple_GET_ITEM(names, i), &name, &len) < 0) {
            p_store_delete(store);
            return NULL;
        }
        uint8_t *slot = (uint8_t *)out + 32 * i;
        memset(slot, 0, 32);
        if (p_export_get(ctx, instance, name, (size_t)len, slot)) mask |= 1ULL << i;
    }
    return Py_BuildValue("(iKKK)", ST_OK, (unsigned long long)(uintptr_t)store,
                         (unsigned long long)(uintptr_t)ctx, mask);
}


/*
 * Host-function trampolines. wasmtime calls them with env = the Python body (kept alive by the
 * template that linked it). The body returns None (success) or bytes (trap with that message);
 * anything else, including an exception raised before the body's own handler could run, becomes
 * a trap made here. Nothing can leave these functions but NULL or a valid trap/error.
 */
static const char FAIL_NESTED[] = "plugbox: host call nested too deep (host stack exhausted)";
static const char FAIL_OTHER[] = "plugbox: host function could not run";

static const char *failure_message(void) {
    const char *msg = PyErr_ExceptionMatches(PyExc_RecursionError) ? FAIL_NESTED : FAIL_OTHER;
    PyErr_Clear();
    return msg;
}

/* wasmtime_func_unchecked_callback_t */
static void *core_trampoline(void *env, void *caller, raw_val *args, size_t nargs) {
    (void)caller; (void)nargs;
    PyGILState_STATE gil = PyGILState_Ensure();
    void *trap = NULL;
    PyObject *addr = PyLong_FromVoidPtr(args);
    PyObject *r = addr ? PyObject_CallOneArg((PyObject *)env, addr) : NULL;
    Py_XDECREF(addr);
    if (r == NULL) {
        const char *msg = failure_message();
        trap = p_trap_new(msg, strlen(msg));
    } else if (r != Py_None) {
        char *msg; Py_ssize_t len;
        if (PyBytes_Check(r) && PyBytes_AsStringAndSize(r, &msg, &len) == 0) {
            trap = p_trap_new(msg, (size_t)len);
        } else {
            PyErr_Clear();
            trap = p_trap_new(FAIL_OTHER, sizeof FAIL_OTHER - 1);
        }
    }
    Py_XDECREF(r);
    PyGILState_Release(gil);
    return trap;
}

/* wasmtime_component_func_callback_t: the body gets (args, nargs, results, nresults). */
static void *component_trampoline(void *env, void *ctx, const void *ty, void *args, size_t nargs,
                                  void *results, size_t nresults) {
    (void)ctx; (void)ty;
    PyGILState_STATE gil = PyGILState_Ensure();
    void *err = NULL;
    PyObject *r = PyObject_CallFunction((PyObject *)env, "KnKn",
                                        (unsigned long long)(uintptr_t)args, (Py_ssize_t)nargs,
                                        (unsigned long long)(uintptr_t)results,
                                        (Py_ssize_t)nresults);
    if (r == NULL) {
        err = p_error_new(failure_message());
    } else if (r != Py_None) {
        /* PyBytes are NUL-terminated, as wasmtime_error_new wants */
        err = p_error_new(PyBytes_Check(r) ? PyBytes_AS_STRING(r) : FAIL_OTHER);
    }
    Py_XDECREF(r);
    PyGILState_Release(gil);
    return err;
}

static PyObject *speedups_trampolines(PyObject *self, PyObject *unused) {
    if (!bound) { PyErr_SetString(PyExc_RuntimeError, "_speedups not bound"); return NULL; }
    return Py_BuildValue("(KKK)", (unsigned long long)(uintptr_t)core_trampoline,
                         (unsigned long long)(uintptr_t)component_trampoline,
                         (unsigned long long)(uintptr_t)epoch_callback);
}

/*
 * The epoch ticker: one pthread per engine, ticking on an absolute CLOCK_MONOTONIC schedule.
 * It never touches Python objects, so it needs no GIL; it holds only the engine pointer, whose
 * engine plugbox.engine._fastpath.Engine keeps alive until ticker_stop has returned.
 */
typedef struct {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void *engine;
    long long tick_ns;
    int stop;
} ticker_t;

static void add_ns(struct timespec *t, long long ns) {
    long long total = (long long)t->tv_nsec + ns;
    t->tv_sec += (time_t)(total / 1000000000LL);
    t->tv_nsec = (long)(total % 1000000000LL);
}

static void *ticker_main(void *arg) {
    ticker_t *t = (ticker_t *)arg;
    struct timespec next, now;
    clock_gettime(CLOCK_MONOTONIC, &next);
    pthread_mutex_lock(&t->mu);
    while (!t->stop) {
        add_ns(&next, t->tick_ns);
        clock_gettime(CLOCK_MONOTONIC, &now);
        /* Far behind (the machine was suspended): resume from now instead of a burst. */
        if ((now.tv_sec - next.tv_sec) * 1000000000LL + (now.tv_nsec - next.tv_nsec) >
            100 * t->tick_ns)
            next = now;
        int rc = 0;
        while (!t->stop && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&t->cv, &t->mu, &next);
        if (t->stop) break;
        pthread_mutex_unlock(&t->mu);
        p_increment_epoch(t->engine);
        pthread_mutex_lock(&t->mu);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* ticker_start(engine address, tick seconds) -> handle for ticker_stop */
static PyObject *speedups_ticker_start(PyObject *self, PyObject *args) {
    unsigned long long engine;
    double tick;
    if (!PyArg_ParseTuple(args, "Kd", &engine, &tick)) return NULL;
    if (!bound) { PyErr_SetString(PyExc_RuntimeError, "_speedups not bound"); return NULL; }
    if (!engine || !(tick > 0)) { PyErr_SetString(PyExc_ValueError, "ticker_start: bad arguments"); return NULL; }
    ticker_t *t = calloc(1, sizeof *t);
    if (!t) return PyErr_NoMemory();
    t->engine = (void *)(uintptr_t)engine;
    t->tick_ns = (long long)(tick * 1e9);
    if (t->tick_ns < 1000) t->tick_ns = 1000;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&t->mu, NULL);
    pthread_attr_t ta;
    pthread_attr_init(&ta);
    pthread_attr_setstacksize(&ta, 64 * 1024);
    int rc = pthread_create(&t->thread, &ta, ticker_main, t);
    pthread_attr_destroy(&ta);
    if (rc != 0) {
        pthread_cond_destroy(&t->cv);
        pthread_mutex_destroy(&t->mu);
        free(t);
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromVoidPtr(t);
}

/* ticker_stop(handle): stop and join the thread, free the handle. Call once per handle. */
static PyObject *speedups_ticker_stop(PyObject *self, PyObject *arg) {
    void *h;
    if (as_ptr(arg, &h) < 0) return NULL;
    ticker_t *t = (ticker_t *)h;
    if (!t) Py_RETURN_NONE;
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(t->thread, NULL);
    Py_END_ALLOW_THREADS
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
    Py_RETURN_NONE;
}

/* stack_room() -> bytes left below this point on the calling thread's stack, or -1 unknown. */
static PyObject *speedups_stack_room(PyObject *self, PyObject *unused) {
    return PyLong_FromLongLong(stack_room_c());
}

/*
 * Component values (wasmtime_component_val_t: a 1-byte kind, the payload at offset 8, 32 bytes
 * in all). wasmtime's component API passes list<u8> as one value per byte; these two helpers
 * are why a 1 MiB payload costs milliseconds instead of the seconds a per-element Python loop
 * takes.
 */
#define CVAL_SIZE 32
#define CVAL_OF 8
#define CKIND_U8 2
#define CKIND_LIST 13

/* list_u8_to_bytes(address of a wasmtime_component_vallist_t) -> bytes, or None when an
 * element is not a u8 (the caller reports the type error). */
static PyObject *speedups_list_u8_to_bytes(PyObject *self, PyObject *arg) {
    void *addr;
    if (as_ptr(arg, &addr) < 0) return NULL;
    size_t n;
    uint8_t *data;
    memcpy(&n, addr, sizeof n);
    memcpy(&data, (uint8_t *)addr + sizeof n, sizeof data);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (!out) return NULL;
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *v = data + i * CVAL_SIZE;
        if (v[0] != CKIND_U8) { Py_DECREF(out); Py_RETURN_NONE; }
        dst[i] = v[CVAL_OF];
    }
    return out;
}

/* set_list_u8(address of a wasmtime_component_val_t, bytes-like): makes it a list<u8>. */
static PyObject *speedups_set_list_u8(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (!bound) { PyErr_SetString(PyExc_RuntimeError, "_speedups not bound"); return NULL; }
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "set_list_u8() takes 2 arguments"); return NULL; }
    void *addr;
    if (as_ptr(args[0], &addr) < 0) return NULL;
    Py_buffer buf;
    if (PyObject_GetBuffer(args[1], &buf, PyBUF_SIMPLE) < 0) return NULL;
    uint8_t *val = (uint8_t *)addr;
    val[0] = CKIND_LIST;
    p_vallist_new_uninit(val + CVAL_OF, (size_t)buf.len);
    uint8_t *data;
    memcpy(&data, val + CVAL_OF + sizeof(size_t), sizeof data);
    const uint8_t *src = (const uint8_t *)buf.buf;
    for (Py_ssize_t i = 0; i < buf.len; i++) {
        uint8_t *v = data + (size_t)i * CVAL_SIZE;
        memset(v, 0, CVAL_SIZE);
        v[0] = CKIND_U8;
        v[CVAL_OF] = src[i];
    }
    PyBuffer_Release(&buf);
    Py_RETURN_NONE;
}

/*
 * observe(slots, started) -> now
 *   slots: address of a metrics accumulator, int64[65] (plugbox._metrics.CallStats): slot b
 *   counts durations of b bits in nanoseconds, slot 64 their total;
 *   started: time.monotonic() seconds when the call began.
 * Counts the call that just ended and returns time.monotonic() now, so the caller needs no
 * clock read of its own (the metrics' whole per-call cost in Plugin._call).
 */
static PyObject *speedups_observe(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "observe() takes 2 arguments"); return NULL; }
    void *p;
    if (as_ptr(args[0], &p) < 0) return NULL;
    double started = PyFloat_AsDouble(args[1]);
    if (started == -1.0 && PyErr_Occurred()) return NULL;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - (int64_t)(started * 1e9);
    if (ns < 0) ns = 0;
    int64_t *slots = (int64_t *)p;
    slots[ns ? 64 - __builtin_clzll((unsigned long long)ns) : 0] += 1;
    slots[64] += ns;
    return PyFloat_FromDouble((double)ts.tv_sec + (double)ts.tv_nsec * 1e-9);
}

/* ------------------------------------------------------------------------------------------
 * Bulk payload encoding (helper "payload"): the hexadecimal text of the component bulk
 * interface's on-hook-hex (abi/plugbox.wit), two ASCII digits per byte. Both loops are
 * table-driven and branch-free in the bytes' values; the GIL is released around large ones.
 */
#define BULK_NOGIL_MIN (64 * 1024)

static uint16_t bulk_hex_pair[256]; /* byte -> its two lowercase digits, in memory order */
static uint8_t bulk_hex_val[256];   /* digit -> value 0..15; 0x80 for a non-digit */
static int bulk_tables_ready = 0;

static void bulk_tables(void) {
    if (bulk_tables_ready) return;
    static const char digits[] = "0123456789abcdef";
    for (int b = 0; b < 256; b++) {
        uint8_t pair[2] = {(uint8_t)digits[b >> 4], (uint8_t)digits[b & 15]};
        memcpy(&bulk_hex_pair[b], pair, 2);
        bulk_hex_val[b] = 0x80;
    }
    for (int d = 0; d < 10; d++) bulk_hex_val['0' + d] = (uint8_t)d;
    for (int d = 0; d < 6; d++) {
        bulk_hex_val['a' + d] = (uint8_t)(10 + d);
        bulk_hex_val['A' + d] = (uint8_t)(10 + d);
    }
    bulk_tables_ready = 1;
}

static void bulk_hex_loop(const uint8_t *src, size_t n, uint8_t *out) {
    for (size_t i = 0; i < n; i++) memcpy(out + 2 * i, &bulk_hex_pair[src[i]], 2);
}

/* Decodes 2 * half digits into half bytes; the result has bit 0x80 set if any was no digit. */
static uint8_t bulk_unhex_loop(const uint8_t *data, size_t half, uint8_t *dst) {
    uint8_t bad = 0;
    for (size_t i = 0; i < half; i++) {
        uint8_t hi = bulk_hex_val[data[2 * i]], lo = bulk_hex_val[data[2 * i + 1]];
        bad |= hi | lo;
        dst[i] = (uint8_t)((hi << 4) | (lo & 15));
    }
    return bad;
}

/* bulk_hex_into(destination address, bytes-like): writes the lowercase hex of the data, 2 *
 * len(data) bytes, at the destination (a buffer the caller allocated with that size, e.g. a
 * wasm_byte_vec_t's data from wasm_byte_vec_new_uninitialized). */
static PyObject *speedups_bulk_hex_into(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "bulk_hex_into() takes 2 arguments"); return NULL; }
    void *dst;
    if (as_ptr(args[0], &dst) < 0) return NULL;
    Py_buffer buf;
    if (PyObject_GetBuffer(args[1], &buf, PyBUF_SIMPLE) < 0) return NULL;
    bulk_tables();
    const uint8_t *src = (const uint8_t *)buf.buf;
    uint8_t *out = (uint8_t *)dst;
    size_t n = (size_t)buf.len;
    if (n >= BULK_NOGIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        bulk_hex_loop(src, n, out);
        Py_END_ALLOW_THREADS
    } else {
        bulk_hex_loop(src, n, out);
    }
    PyBuffer_Release(&buf);
    Py_RETURN_NONE;
}

/* bulk_unhex(address of a wasm_byte_vec_t) -> bytes, or None when its text is not hexadecimal
 * (odd length, or a character other than 0-9, a-f, A-F). The caller checks the length against
 * its caps before calling. */
static PyObject *speedups_bulk_unhex(PyObject *self, PyObject *arg) {
    void *addr;
    if (as_ptr(arg, &addr) < 0) return NULL;
    size_t n;
    const uint8_t *data;
    memcpy(&n, addr, sizeof n);
    memcpy(&data, (uint8_t *)addr + sizeof n, sizeof data);
    if (n % 2 || n / 2 > (size_t)PY_SSIZE_T_MAX) Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n / 2));
    if (!out) return NULL;
    bulk_tables();
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    uint8_t bad;
    size_t half = n / 2;
    if (half >= BULK_NOGIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        bad = bulk_unhex_loop(data, half, dst);
        Py_END_ALLOW_THREADS
    } else {
        bad = bulk_unhex_loop(data, half, dst);
    }
    if (bad & 0x80) { Py_DECREF(out); Py_RETURN_NONE; }
    return out;
}
/* ---------------------------------------------------------------- end of bulk payload encoding */

/* ==========================================================================================
 * Section: dispatch (owned by plugbox.host; issue 8 §8).
 *
 * The PluginHost's hot loop: dispatch(host, point, payload) runs one top-level dispatch of a
 * point whose precomputed plan (plugbox.host._host._Plan, a tuple: see P_* below; host._plans by point) is marked
 * fast, and returns the DispatchResult; for anything else (no plan, a nested dispatch, a
 * background/concurrent/pipeline point, quarantined or probed implementations) it returns
 * NotImplemented and PluginHost.call takes its Python path. _host._run_plan is its pure-Python
 * twin (same plan, same steps, same results): tests run both.
 *
 * Hot swap: a dispatch is a reader of the table generation it read (host._readers, gen ->
 * count). readers_enter/readers_hold/readers_leave and dispatch change that dict only here,
 * with the GIL held and no Python code in between (ints and strs as keys), so the read of
 * host._plans (published right after host._tables) and the count going up are one step as seen by any other thread: a plugin
 * swapped out after that step is closed only once the count is back to zero (the last
 * reader of an older generation calls host._drain(), which closes what PluginHost._retire
 * queued). No lock on the way in or out.
 *
 * The plan's Python steps (encode, decode, failed) take the host as their first argument, so
 * a plan holds no reference to its host (no cycle through host._tables).
 *
 * DispatchResult and Result are slotted dataclasses; they are made here by allocating the
 * instance and filling its slots (offsets read from their member descriptors by
 * dispatch_setup, which checks them), not by running their generated __init__.
 * ========================================================================================== */
#include <structmember.h>

enum {
    P_FAST, P_GEN, P_POINT, P_MODE, P_MODE_NAME, P_JSON, P_CALLS, P_HOOKS, P_NAMES, P_KWARGS,
    P_HOST_NAMES, P_CHAIN, P_NEEDS_CHAIN, P_RUNTIME, P_COUNTERS, P_DISPATCH_SLOTS, P_ENCODE,
    P_DECODE, P_FAILED, P_READERS, P_SIZE_MIN
};
enum { MODE_EACH = 0, MODE_FIRST = 1, MODE_NOTIFY = 2 };

static PyObject *d_points_var, *d_plugins_var, *d_result_cls, *d_dresult_cls, *d_error_cls;
static PyObject *d_kwnames, *s_tables, *s_plans, *s_readers, *s_drain, *s_monitors, *s_gen;
static Py_ssize_t off_r[2], off_d[5];
static int d_ready = 0;

static int slot_offsets(PyObject *cls, const char *const *names, Py_ssize_t *out, int n) {
    if (!PyType_Check(cls)) { PyErr_SetString(PyExc_TypeError, "dispatch_setup: not a class"); return -1; }
    for (int i = 0; i < n; i++) {
        PyObject *d = PyDict_GetItemString(((PyTypeObject *)cls)->tp_dict, names[i]);
        if (!d || !Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "dispatch_setup: %R.%s is not a slot", cls, names[i]);
            return -1;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY)) {
            PyErr_Format(PyExc_TypeError, "dispatch_setup: %R.%s is not a writable object slot",
                         cls, names[i]);
            return -1;
        }
        out[i] = m->offset;
    }
    return 0;
}

/* A new instance of slotted class cls with its n slots (offsets off) set to vals. */
static PyObject *new_slotted(PyObject *cls, const Py_ssize_t *off, PyObject *const *vals, int n) {
    PyTypeObject *t = (PyTypeObject *)cls;
    PyObject *o = t->tp_alloc(t, 0);
    if (!o) return NULL;
    for (int i = 0; i < n; i++) {
        Py_INCREF(vals[i]);
        *(PyObject **)((char *)o + off[i]) = vals[i];
    }
    return o;
}

/*
 * dispatch_setup(points_var, plugins_var, Result, DispatchResult, PlugboxError)
 */
static PyObject *speedups_dispatch_setup(PyObject *self, PyObject *args) {
    PyObject *pv, *av, *rc, *dc, *ec;
    if (!PyArg_ParseTuple(args, "OOOOO", &pv, &av, &rc, &dc, &ec)) return NULL;
    if (!PyContextVar_CheckExact(pv) || !PyContextVar_CheckExact(av)) {
        PyErr_SetString(PyExc_TypeError, "dispatch_setup: expected two ContextVars");
        return NULL;
    }
    static const char *const rn[] = {"plugin", "value"};
    static const char *const dn[] = {"point", "mode", "value", "results", "failures"};
    if (slot_offsets(rc, rn, off_r, 2) < 0 || slot_offsets(dc, dn, off_d, 5) < 0) return NULL;
    if (!s_tables) {
        s_tables = PyUnicode_InternFromString("_tables");
        s_plans = PyUnicode_InternFromString("_plans");
        s_readers = PyUnicode_InternFromString("_readers");
        s_drain = PyUnicode_InternFromString("_drain");
        s_monitors = PyUnicode_InternFromString("_monitors");
        s_gen = PyUnicode_InternFromString("gen");
        d_kwnames = Py_BuildValue("(ss)", "fuel", "deadline_ms");
        if (!s_tables || !s_plans || !s_readers || !s_drain || !s_monitors || !s_gen || !d_kwnames)
            return NULL;
    }
    PyObject *old[5] = {d_points_var, d_plugins_var, d_result_cls, d_dresult_cls, d_error_cls};
    d_points_var = Py_NewRef(pv); d_plugins_var = Py_NewRef(av); d_result_cls = Py_NewRef(rc);
    d_dresult_cls = Py_NewRef(dc); d_error_cls = Py_NewRef(ec);
    for (int i = 0; i < 5; i++) Py_XDECREF(old[i]);
    d_ready = 1;
    Py_RETURN_NONE;
}

/* readers[gen] += delta (delta +1 or -1); the count left, or -1 on error. */
static Py_ssize_t readers_add(PyObject *readers, PyObject *gen, int delta) {
    if (!PyDict_CheckExact(readers)) { PyErr_SetString(PyExc_TypeError, "host._readers is not a dict"); return -1; }
    PyObject *had = PyDict_GetItemWithError(readers, gen);
    if (!had && PyErr_Occurred()) return -1;
    Py_ssize_t n = had ? PyLong_AsSsize_t(had) : 0;
    if (n == -1 && PyErr_Occurred()) return -1;
    n += delta;
    if (n < 0) { PyErr_SetString(PyExc_RuntimeError, "plugbox host: reader count below zero"); return -1; }
    if (n == 0) {
        if (PyDict_DelItem(readers, gen) < 0) return -1;
        return 0;
    }
    PyObject *v = PyLong_FromSsize_t(n);
    if (!v) return -1;
    int rc = PyDict_SetItem(readers, gen, v);
    Py_DECREF(v);
    return rc < 0 ? -1 : n;
}

/* The reader of generation gen leaves; the last one of a generation older than the host's
 * current tables lets host._drain() close what was retired meanwhile. ``read`` is the tables
 * plans dict the reader read (NULL: compare generations): when host._plans is still that very
 * object, nothing was published since, so nothing can have been retired. */
static int readers_leave(PyObject *host, PyObject *readers, PyObject *gen, PyObject *read) {
    Py_ssize_t left = readers_add(readers, gen, -1);
    if (left != 0) return left < 0 ? -1 : 0;
    int same;
    if (read) {  /* the plans dict it read: published together with the tables */
        PyObject *plans = PyObject_GetAttr(host, s_plans);
        if (!plans) return -1;
        same = plans == read;
        Py_DECREF(plans);
    } else {
        PyObject *tables = PyObject_GetAttr(host, s_tables);
        if (!tables) return -1;
        PyObject *cur = PyObject_GetAttr(tables, s_gen);
        Py_DECREF(tables);
        if (!cur) return -1;
        same = PyObject_RichCompareBool(cur, gen, Py_EQ);
        Py_DECREF(cur);
        if (same < 0) return -1;
    }
    if (same) return 0;
    PyObject *r = PyObject_CallMethodNoArgs(host, s_drain);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* readers_enter(host) -> host._tables, counted as a reader of its generation. */
static PyObject *speedups_readers_enter(PyObject *self, PyObject *host) {
    PyObject *tables = PyObject_GetAttr(host, s_tables);
    if (!tables) return NULL;
    PyObject *gen = PyObject_GetAttr(tables, s_gen);
    PyObject *readers = gen ? PyObject_GetAttr(host, s_readers) : NULL;
    Py_ssize_t n = readers ? readers_add(readers, gen, +1) : -1;
    Py_XDECREF(gen);
    Py_XDECREF(readers);
    if (n < 0) { Py_DECREF(tables); return NULL; }
    return tables;
}

/* readers_hold(host, gen): one more reader of gen, which has one already (the caller). */
static PyObject *speedups_readers_hold(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "readers_hold() takes 2 arguments"); return NULL; }
    PyObject *readers = PyObject_GetAttr(args[0], s_readers);
    if (!readers) return NULL;
    Py_ssize_t n = readers_add(readers, args[1], +1);
    Py_DECREF(readers);
    if (n < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *speedups_readers_leave(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "readers_leave() takes 2 arguments"); return NULL; }
    PyObject *readers = PyObject_GetAttr(args[0], s_readers);
    if (!readers) return NULL;
    int rc = readers_leave(args[0], readers, args[1], NULL);
    Py_DECREF(readers);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

#define PLAN(i) PyTuple_GET_ITEM(plan, (i))

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The implementations' loop; a new DispatchResult, or NULL with an error set. */
static PyObject *run_plan(PyObject *host, PyObject *plan, PyObject *data) {
    PyObject *calls = PLAN(P_CALLS), *hooks = PLAN(P_HOOKS), *names = PLAN(P_NAMES);
    PyObject *kwargs = PLAN(P_KWARGS), *host_names = PLAN(P_HOST_NAMES);
    PyObject *counters = PLAN(P_COUNTERS), *decode = PLAN(P_DECODE), *failed = PLAN(P_FAILED);
    long mode = PyLong_AsLong(PLAN(P_MODE));
    int json = PLAN(P_JSON) == Py_True;
    Py_ssize_t n = PyTuple_GET_SIZE(calls);
    PyObject *results = PyList_New(0), *failures = PyList_New(0), *value = Py_NewRef(Py_None);
    if (!results || !failures) goto error;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (counters != Py_None) {
            void *p = PyLong_AsVoidPtr(PyTuple_GET_ITEM(counters, i));
            if (!p) goto error;
            *(int64_t *)p += 1;
        }
        PyObject *token = NULL, *own = PyTuple_GET_ITEM(host_names, i);
        if (own != Py_None && !(token = PyContextVar_Set(d_plugins_var, own))) goto error;
        PyObject *kw = PyTuple_GET_ITEM(kwargs, i), *raw;
        /* a[0] is free for the bound method's self (PY_VECTORCALL_ARGUMENTS_OFFSET) */
        if (kw == Py_None) {
            PyObject *a[3] = {NULL, PyTuple_GET_ITEM(hooks, i), data};
            raw = PyObject_Vectorcall(PyTuple_GET_ITEM(calls, i), a + 1,
                                      2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        } else {
            PyObject *a[5] = {NULL, PyTuple_GET_ITEM(hooks, i), data, PyTuple_GET_ITEM(kw, 0),
                              PyTuple_GET_ITEM(kw, 1)};
            raw = PyObject_Vectorcall(PyTuple_GET_ITEM(calls, i), a + 1,
                                      2 | PY_VECTORCALL_ARGUMENTS_OFFSET, d_kwnames);
        }
        if (token) {
            PyObject *et, *ev, *etb;
            PyErr_Fetch(&et, &ev, &etb);
            int rc = PyContextVar_Reset(d_plugins_var, token);
            Py_DECREF(token);
            if (rc < 0) { Py_XDECREF(et); Py_XDECREF(ev); Py_XDECREF(etb); Py_XDECREF(raw); goto error; }
            PyErr_Restore(et, ev, etb);
        }
        PyObject *got = NULL;
        if (raw) {
            if (json) {
                PyObject *index = PyLong_FromSsize_t(i);
                if (index) {
                    PyObject *a[3] = {host, index, raw};
                    got = PyObject_Vectorcall(decode, a, 3, NULL);
                    Py_DECREF(index);
                }
            } else if (mode == MODE_FIRST && PyBytes_Check(raw) && PyBytes_GET_SIZE(raw) == 0) {
                got = Py_NewRef(Py_None);
            } else {
                got = Py_NewRef(raw);
            }
            Py_DECREF(raw);
        }
        if (!got) {
            if (!PyErr_ExceptionMatches(d_error_cls)) goto error;
            PyObject *et, *ev, *etb;
            PyErr_Fetch(&et, &ev, &etb);
            PyErr_NormalizeException(&et, &ev, &etb);
            if (etb) PyException_SetTraceback(ev, etb);
            PyObject *index = PyLong_FromSsize_t(i);
            PyObject *r = NULL;
            if (index) {
                PyObject *a[4] = {host, index, ev, failures};
                r = PyObject_Vectorcall(failed, a, 4, NULL);  /* propagate: raises */
                Py_DECREF(index);
            }
            Py_XDECREF(et); Py_XDECREF(ev); Py_XDECREF(etb);
            if (!r) goto error;
            Py_DECREF(r);
            continue;
        }
        if (mode == MODE_NOTIFY || (mode == MODE_FIRST && got == Py_None)) {
            Py_DECREF(got);
            continue;
        }
        PyObject *rv[2] = {name, got};
        PyObject *result = new_slotted(d_result_cls, off_r, rv, 2);
        if (!result || PyList_Append(results, result) < 0) { Py_XDECREF(result); Py_DECREF(got); goto error; }
        Py_DECREF(result);
        if (mode == MODE_FIRST) {
            Py_SETREF(value, got);
            break;
        }
        Py_DECREF(got);
    }
    PyObject *dv[5] = {PLAN(P_POINT), PLAN(P_MODE_NAME), value, results, failures};
    PyObject *out = new_slotted(d_dresult_cls, off_d, dv, 5);
    Py_DECREF(value); Py_DECREF(results); Py_DECREF(failures);
    return out;
error:
    Py_XDECREF(value); Py_XDECREF(results); Py_XDECREF(failures);
    return NULL;
}

/*
 * dispatch(host, point, payload) -> DispatchResult, or NotImplemented (take the Python path)
 */
static PyObject *speedups_dispatch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "dispatch() takes 3 arguments"); return NULL; }
    if (!d_ready) Py_RETURN_NOTIMPLEMENTED;
    PyObject *host = args[0], *point = args[1], *payload = args[2];
    /* Nested dispatches (the chain is not empty) take the Python path. */
    PyObject *chain = NULL, *active = NULL;
    if (PyContextVar_Get(d_points_var, NULL, &chain) < 0) return NULL;
    int nested = chain && PyObject_Length(chain) != 0;
    Py_XDECREF(chain);
    if (!nested) {
        if (PyContextVar_Get(d_plugins_var, NULL, &active) < 0) return NULL;
        nested = active && PyObject_Length(active) != 0;
        Py_XDECREF(active);
    }
    if (nested) { PyErr_Clear(); Py_RETURN_NOTIMPLEMENTED; }
    /* From reading the tables to counting this reader: no Python code runs (see above). */
    PyObject *tables = PyObject_GetAttr(host, s_plans);  /* host._plans (see _publish) */
    if (!tables) return NULL;
    PyObject *plan = PyDict_CheckExact(tables) ? PyDict_GetItemWithError(tables, point) : NULL;
    if (!plan || !PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) < P_SIZE_MIN ||
            PLAN(P_FAST) != Py_True || !PyDict_CheckExact(PLAN(P_READERS))) {
        Py_DECREF(tables);
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NOTIMPLEMENTED;
    }
    Py_INCREF(plan);
    PyObject *gen = PLAN(P_GEN), *readers = PLAN(P_READERS);
    Py_ssize_t counted = readers_add(readers, gen, +1);
    if (counted < 0) { Py_DECREF(plan); Py_DECREF(tables); return NULL; }
    /* A reader now: every way out below leaves. */
    PyObject *out = NULL, *token = NULL, *data;
    int64_t started = 0;
    if (PLAN(P_JSON) == Py_True || !PyBytes_CheckExact(payload)) {
        PyObject *a[2] = {host, payload};
        data = PyObject_Vectorcall(PLAN(P_ENCODE), a, 2, NULL);
        if (!data) goto leave;
    } else {
        data = Py_NewRef(payload);
    }
    int needs = PLAN(P_NEEDS_CHAIN) == Py_True;
    if (!needs) {  /* a monitor's callbacks run inside the dispatch: they see its chain */
        PyObject *monitors = PyObject_GetAttr(PLAN(P_RUNTIME), s_monitors);
        if (!monitors) goto leave;
        needs = PyObject_IsTrue(monitors);
        Py_DECREF(monitors);
        if (needs < 0) goto leave;
    }
    if (needs && !(token = PyContextVar_Set(d_points_var, PLAN(P_CHAIN)))) goto leave;
    PyObject *slots_addr = PLAN(P_DISPATCH_SLOTS);
    if (slots_addr != Py_None) started = now_ns();
    out = run_plan(host, plan, data);
leave:;
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    if (token) {
        if (PyContextVar_Reset(d_points_var, token) < 0) PyErr_WriteUnraisable(point);
        Py_DECREF(token);
    }
    if (started) {
        int64_t ns = now_ns() - started;
        int64_t *slots = (int64_t *)PyLong_AsVoidPtr(PLAN(P_DISPATCH_SLOTS));
        if (slots) {
            if (ns < 0) ns = 0;
            slots[ns ? 64 - __builtin_clzll((unsigned long long)ns) : 0] += 1;
            slots[64] += ns;
        } else {
            PyErr_WriteUnraisable(point);
        }
    }
    Py_XDECREF(data);
    int left = readers_leave(host, readers, gen, tables);
    Py_DECREF(tables);
    if (left < 0) {
        if (et) PyErr_WriteUnraisable(point);  /* the dispatch's own error wins */
        else { Py_XDECREF(out); out = NULL; Py_DECREF(plan); return NULL; }
    }
    Py_DECREF(plan);
    if (et) { PyErr_Restore(et, ev, etb); Py_XDECREF(out); return NULL; }
    return out;
}
/* ====================================================================== end of dispatch == */

static PyMethodDef methods[] = {
    {"observe", (PyCFunction)(void (*)(void))speedups_observe, METH_FASTCALL,
     "Count a finished call in a metrics accumulator; returns time.monotonic()."},
    {"list_u8_to_bytes", speedups_list_u8_to_bytes, METH_O,
     "Copy a component list<u8> value's bytes out."},
    {"set_list_u8", (PyCFunction)(void (*)(void))speedups_set_list_u8, METH_FASTCALL,
     "Make a component value a list<u8> holding the given bytes."},
    {"bind", speedups_bind, METH_VARARGS, "Hand over the wasmtime C API function addresses."},
    {"call_entry", (PyCFunction)(void (*)(void))speedups_call_entry, METH_FASTCALL,
     "Call a plugin entry point with canonical-ABI lowering and lifting."},
    {"instantiate", (PyCFunction)(void (*)(void))speedups_instantiate, METH_FASTCALL,
     "Create a store and instantiate an InstancePre into it, looking up exports."},
    {"trampolines", speedups_trampolines, METH_NOARGS,
     "Addresses of the core and component host-function trampolines and the epoch callback."},
    {"ticker_start", speedups_ticker_start, METH_VARARGS,
     "Start a native epoch ticker for an engine; returns a handle."},
    {"ticker_stop", speedups_ticker_stop, METH_O, "Stop and free a native epoch ticker."},
    {"stack_room", speedups_stack_room, METH_NOARGS,
     "Bytes left on the calling thread's stack (-1 when unknown)."},
    /* bulk payload encoding (helper "payload") */
    {"bulk_hex_into", (PyCFunction)(void (*)(void))speedups_bulk_hex_into, METH_FASTCALL,
     "Write the lowercase hexadecimal text of bytes at an address (2 bytes per byte)."},
    {"bulk_unhex", speedups_bulk_unhex, METH_O,
     "The bytes a wasm_byte_vec_t of hexadecimal text spells, or None when it is not hex."},
    /* dispatch section (plugbox.host) */
    {"dispatch_setup", speedups_dispatch_setup, METH_VARARGS,
     "Hand over the dispatch chain variables and result classes (plugbox.host)."},
    {"dispatch", (PyCFunction)(void (*)(void))speedups_dispatch, METH_FASTCALL,
     "Run a fast-planned PluginHost dispatch; NotImplemented for the Python path."},
    {"readers_enter", speedups_readers_enter, METH_O,
     "Count a reader of the host's current table generation; returns the tables."},
    {"readers_hold", (PyCFunction)(void (*)(void))speedups_readers_hold, METH_FASTCALL,
     "Count one more reader of a table generation."},
    {"readers_leave", (PyCFunction)(void (*)(void))speedups_readers_leave, METH_FASTCALL,
     "A reader of a table generation is done (the last of an old one drains retirements)."},
    /* end of dispatch section */
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "plugbox.engine._speedups",
    "C hot loop for plugbox.engine._fastpath (see the comment at the top of _speedups.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddIntConstant(m, "GUEST_ERROR_MAX", GUEST_ERROR_MAX) < 0 ||
              PyModule_AddIntConstant(m, "CHECK_TICKS", CHECK_TICKS) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
