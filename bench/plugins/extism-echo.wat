;; Extism echo plugin for the benchmark: export `echo` returns its input unchanged.
;;
;; Written against the raw Extism kernel imports (module "extism:host/env"), the same calls the
;; Extism PDKs make (signatures as in extism/go-pdk env.go: pointers and lengths are i64, u8
;; values travel as i32). Compiled at bench time with wasmtime.wat2wasm.
;;
;; It copies input to output 8 bytes per host call (input_load_u64 / store_u64) and the tail
;; byte by byte, directly from the input buffer to a fresh output block in Extism memory: one
;; copy, where the Rust PDK's `input()` + `output()` make two (input -> guest memory -> Extism
;; memory). So this is, if anything, a slightly flattering Extism echo.
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (memory (export "memory") 1)
  (func (export "echo") (result i32)
    (local $len i64) (local $out i64) (local $i i64) (local $end8 i64)
    (local.set $len (call $input_length))
    (local.set $out (call $alloc (local.get $len)))
    (local.set $end8 (i64.and (local.get $len) (i64.const -8)))
    (local.set $i (i64.const 0))
    (block $done8
      (loop $copy8
        (br_if $done8 (i64.ge_u (local.get $i) (local.get $end8)))
        (call $store_u64 (i64.add (local.get $out) (local.get $i))
                         (call $input_load_u64 (local.get $i)))
        (local.set $i (i64.add (local.get $i) (i64.const 8)))
        (br $copy8)))
    (block $done1
      (loop $copy1
        (br_if $done1 (i64.ge_u (local.get $i) (local.get $len)))
        (call $store_u8 (i64.add (local.get $out) (local.get $i))
                        (call $input_load_u8 (local.get $i)))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $copy1)))
    (call $output_set (local.get $out) (local.get $len))
    (i32.const 0))
)
