"""Signing, trust policy and packages: what is checked before anything compiles."""
