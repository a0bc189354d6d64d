"""plugbox.registry: the plugin registry server, its TUF metadata and its client."""
