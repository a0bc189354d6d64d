/*
 * plugbox._speedups: the hot loop of plugbox._fastpath in C.
 *
 * A call into a plugin is a fixed sequence of wasmtime C API calls (set fuel, set the epoch
 * deadline, cabi_realloc per argument, copy the arguments in, call the export, read the
 * result area, copy the result out, call cabi_post_*). From Python each step is a ctypes
 * call costing ~0.5 us; here the whole sequence is one call. Instantiation (store, limiter,
 * InstancePre, export lookups) likewise.
 *
 * This module never links against wasmtime: plugbox._fastpath hands it the addresses of the
 * C API functions (resolved by ctypes from wasmtime-py's library) through bind(). It keeps no
 * state besides those pointers, and it never decides policy: every outcome other than a clean
 * result goes back to Python as a status tuple, and _fastpath turns it into a typed error.
 *
 * Every guest pointer is checked against the memory's current size before it is touched.
 * Guest code always runs with the GIL released, so other Python threads (the epoch ticker
 * among them) keep running; host functions reacquire it through ctypes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

typedef union {
    int32_t i32;
    int64_t i64;
    uint8_t v128[16];
} raw_val;

typedef void *(*func_call_fn)(void *ctx, const void *func, raw_val *args, size_t n, void **trap);
typedef void *(*set_fuel_fn)(void *ctx, uint64_t fuel);
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
static int bound = 0;

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
    if (PyTuple_GET_SIZE(t) != 12) {
        PyErr_SetString(PyExc_ValueError, "bind() expects 12 function addresses");
        return NULL;
    }
    void *f[12];
    for (int i = 0; i < 12; i++) {
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
    bound = 1;
    Py_RETURN_NONE;
}

/* Run one guest function with the GIL released. Returns a status (ST_OK, ST_TRAP, ST_ERROR);
 * *fault receives the trap or error pointer. */
static int guest_call(void *ctx, const void *func, raw_val *args, size_t n, void **fault) {
    void *trap = NULL, *err;
    Py_BEGIN_ALLOW_THREADS
    err = p_func_call(ctx, func, args, n, &trap);
    Py_END_ALLOW_THREADS
    if (err) { *fault = err; return ST_ERROR; }
    if (trap) { *fault = trap; return ST_TRAP; }
    return ST_OK;
}

/* cabi_realloc(0, 0, align, size) and copy data in. */
static int lower(void *ctx, const void *mem, uint8_t *base, const void *realloc_fn,
                 const uint8_t *data, size_t size, uint32_t align, uint32_t *out_ptr,
                 void **fault, uint64_t *bad_a, uint64_t *bad_b) {
    if (size == 0) { *out_ptr = align; return ST_OK; }
    raw_val a[4];
    memset(a, 0, sizeof a);
    a[2].i32 = (int32_t)align;
    a[3].i32 = (int32_t)size;
    int st = guest_call(ctx, realloc_fn, a, 4, fault);
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

static PyObject *status2(int st, uint64_t a, uint64_t b) {
    return Py_BuildValue("(iKK)", st, (unsigned long long)a, (unsigned long long)b);
}

/*
 * call_entry(ctx, mem, base, realloc, func, post, first, second, fuel, ticks)
 *   first: bytes or None (None: the export takes one string argument, e.g. on-init)
 *   second: bytes-like payload
 * Returns (0, payload) | (1, kind, message) | (status, a, b) for failures.
 */
static PyObject *speedups_call_entry(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (!bound) { PyErr_SetString(PyExc_RuntimeError, "_speedups not bound"); return NULL; }
    if (nargs != 10) { PyErr_SetString(PyExc_TypeError, "call_entry() takes 10 arguments"); return NULL; }
    void *ctx, *mem, *base_v, *realloc_fn, *func, *post;
    if (as_ptr(args[0], &ctx) < 0 || as_ptr(args[1], &mem) < 0 || as_ptr(args[2], &base_v) < 0 ||
        as_ptr(args[3], &realloc_fn) < 0 || as_ptr(args[4], &func) < 0 || as_ptr(args[5], &post) < 0)
        return NULL;
    uint8_t *base = (uint8_t *)base_v;
    unsigned long long fuel = PyLong_AsUnsignedLongLong(args[8]);
    if (fuel == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    unsigned long long ticks = PyLong_AsUnsignedLongLong(args[9]);
    if (ticks == (unsigned long long)-1 && PyErr_Occurred()) return NULL;

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

    void *fuel_err = p_set_fuel(ctx, fuel);
    if (fuel_err) { result = status2(ST_ERROR, (uint64_t)(uintptr_t)fuel_err, 0); goto done; }
    p_set_epoch(ctx, ticks);

    raw_val a[4];
    size_t n;
    uint32_t p1 = 0, p2 = 0;
    if (have_first) {
        st = lower(ctx, mem, base, realloc_fn, first.buf, (size_t)first.len, 1, &p1, &fault, &bad_a, &bad_b);
        if (st != ST_OK) goto fail;
    }
    st = lower(ctx, mem, base, realloc_fn, second.buf, (size_t)second.len, 1, &p2, &fault, &bad_a, &bad_b);
    if (st != ST_OK) goto fail;
    memset(a, 0, sizeof a);
    if (have_first) {
        a[0].i32 = (int32_t)p1; a[1].i32 = (int32_t)first.len;
        a[2].i32 = (int32_t)p2; a[3].i32 = (int32_t)second.len;
        n = 4;
    } else {
        a[0].i32 = (int32_t)p2; a[1].i32 = (int32_t)second.len;
        n = 2;
    }
    st = guest_call(ctx, func, a, n, &fault);
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
        result = Py_BuildValue("(iiy#)", ST_GUEST_ERR, (int)kind, (const char *)(base + mptr), (Py_ssize_t)mlen);
    } else {
        st = ST_BAD_TAG; bad_a = tag;
        goto fail;
    }
    if (!result) goto done;
    if (post) {
        memset(a, 0, sizeof a);
        a[0].i32 = (int32_t)ret;
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
    if (have_first) PyBuffer_Release(&first);
    PyBuffer_Release(&second);
    return result;
}

/*
 * instantiate(engine, pre, memory_cap, fuel, ticks, names, out, instance_out)
 *   names: tuple of bytes export names; out: address of len(names) * 32 writable bytes that
 *   receive each export's wasmtime_extern_t (zeroed when absent); instance_out: address of
 *   a wasmtime_instance_t.
 * Returns (0, store, ctx, found_mask) or (2|3, fault, 0) with the store already freed.
 */
static PyObject *speedups_instantiate(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (!bound) { PyErr_SetString(PyExc_RuntimeError, "_speedups not bound"); return NULL; }
    if (nargs != 8) { PyErr_SetString(PyExc_TypeError, "instantiate() takes 8 arguments"); return NULL; }
    void *engine, *pre, *out, *instance;
    if (as_ptr(args[0], &engine) < 0 || as_ptr(args[1], &pre) < 0 ||
        as_ptr(args[6], &out) < 0 || as_ptr(args[7], &instance) < 0)
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
    Py_BEGIN_ALLOW_THREADS
    err = p_pre_instantiate(pre, ctx, instance, &trap);
    Py_END_ALLOW_THREADS
    if (err || trap) {
        p_store_delete(store);
        return Py_BuildValue("(iKii)", err ? ST_ERROR : ST_TRAP,
                             (unsigned long long)(uintptr_t)(err ? err : trap), 0, 0);
    }
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

static PyMethodDef methods[] = {
    {"list_u8_to_bytes", speedups_list_u8_to_bytes, METH_O,
     "Copy a component list<u8> value's bytes out."},
    {"set_list_u8", (PyCFunction)(void (*)(void))speedups_set_list_u8, METH_FASTCALL,
     "Make a component value a list<u8> holding the given bytes."},
    {"bind", speedups_bind, METH_VARARGS, "Hand over the wasmtime C API function addresses."},
    {"call_entry", (PyCFunction)(void (*)(void))speedups_call_entry, METH_FASTCALL,
     "Call a plugin entry point with canonical-ABI lowering and lifting."},
    {"instantiate", (PyCFunction)(void (*)(void))speedups_instantiate, METH_FASTCALL,
     "Create a store and instantiate an InstancePre into it, looking up exports."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "plugbox._speedups",
    "C hot loop for plugbox._fastpath (see the comment at the top of _speedups.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
