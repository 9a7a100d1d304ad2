"""The scale simulator: the real scheduler core driven by a fluid network model.

``fluid.py`` is the network (equal share per link, event-driven), ``swarm.py`` the engines and
the supernode shell around a real ``damselfly.scheduler.Scheduler`` on a fake clock,
``bounds.py`` the lower bounds the results are compared with, ``__main__.py`` the command
(``python -m benchmarks.simulator``).
"""
