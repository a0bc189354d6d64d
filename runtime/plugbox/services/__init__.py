"""Host services a plugin reaches through the ABI: log, config, kv, events, clock, random, http."""
