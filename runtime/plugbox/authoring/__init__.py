"""Building and scaffolding plugins (Rust and Python)."""
