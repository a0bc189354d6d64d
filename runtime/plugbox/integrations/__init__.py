"""Adapters that plug sandboxed plugins into other plugin systems. Each lives in its own module
and needs its own optional dependency: :mod:`plugbox.integrations.pluggy` (``plugbox[pluggy]``),
:mod:`plugbox.integrations.flask` (``plugbox[flask]``).
"""
