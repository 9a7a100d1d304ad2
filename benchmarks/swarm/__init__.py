"""The swarm benchmark: Damselfly vs BitTorrent (aria2c) vs direct HTTP, in network namespaces.

``python -m benchmarks.swarm`` (as root; see ``__main__``). Modules: ``topology`` (namespaces,
bridge, veth, tc shaping, teardown), ``delay`` (added latency without netem), ``probe`` and
``check`` (measuring that the shaping holds), ``methods`` / ``damselfly_method`` /
``bittorrent`` (the three methods on the same file), ``torrent`` (bencode), ``procs`` (every
process started, stopped by pid), ``runner`` (one scenario end to end), ``report`` (T_min,
tables, plot, docs section).
"""
