# plugbox recipes. `python3 dev.py <recipe>` sets up .venv and the Rust toolchain first, then
# runs these with .venv/bin first on PATH; `.venv/bin/just <recipe>` works too once set up.

set positional-arguments

# The venv's interpreter, so recipes work without an activated venv; plain python3 otherwise.
python := if path_exists(justfile_directory() / ".venv/bin/python") == "true" { justfile_directory() / ".venv/bin/python" } else { "python3" }

# List the recipes.
default:
    @"{{just_executable()}}" --justfile "{{justfile()}}" --list

# Run the demo: load sample plugins and call them.
demo:
    "{{python}}" -m plugbox.demo

# Run the test suite; extra arguments go to pytest (just test -k kv -x).
test *ARGS:
    "{{python}}" -m pytest -q "$@"

# Run the benchmarks (see docs/benchmarks.md); extra arguments go to bench/run.py (--only dispatch).
bench *ARGS:
    "{{python}}" bench/run.py "$@"

# Soak and fault scenarios with pass/fail bounds (see docs/reliability.md); --quick, --json.
soak *ARGS:
    "{{python}}" bench/soak.py "$@"

# Type-check the runtime.
lint:
    "{{python}}" -m mypy --strict runtime/plugbox
    "{{python}}" -m mypy --strict sdk-python/src/plugbox_sdk

# Build the sample Rust plugins into .build/plugins.
build-samples:
    "{{python}}" -c "from pathlib import Path; from plugbox.authoring._build import build_rust_plugins; build_rust_plugins(Path('sample-plugins/rust'), Path('.build/plugins'))"

# Remove build outputs and caches (keeps .venv).
clean:
    rm -rf .build sample-plugins/rust/target sdk-rust/target plugbox-state .pytest_cache .mypy_cache .hypothesis
    find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
