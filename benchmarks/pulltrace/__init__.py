"""Per-piece timestamps of a pull through dfdaemon (a measuring tool, never used in production).

``hooks.install`` wraps, in a supernode or dfdaemon process, the few methods where a piece changes
hands, and appends one JSON line per event to the trace file: the CDN has the piece
(``cdn_done``), the peer's schedule call returned it (``assigned``), its fetch started and ended
(``fetch_start``/``fetched``), it was verified and written (``written``), the stream read it for
the client (``read``); and per blob the whole-file check, the placing, the stream's final
verification and the response's end. ``analyse`` turns the events into gaps. Wall-clock
``time.time()``: every process of a run is on the same machine.
"""
