"""The engine: wasmtime underneath, the fast paths that lift and lower the ABI, the C accelerator, the wasm reader, the compiled-artifact cache and the ABI tables."""
