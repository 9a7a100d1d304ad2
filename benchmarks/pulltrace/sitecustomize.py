"""Installs benchmarks.pulltrace's timing hooks in every Python process started with this
directory on PYTHONPATH and ``DAMSELFLY_PULLTRACE`` set (registry_pull.py --trace does both)."""

import os

if os.environ.get("DAMSELFLY_PULLTRACE"):
    from benchmarks.pulltrace.hooks import install

    install(os.environ["DAMSELFLY_PULLTRACE"])
