"""The long fuzz run is only collected when asked for with ``-m fuzz_long``."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "fuzz_long" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="long fuzz run: select it with -m fuzz_long")
    for item in items:
        if item.get_closest_marker("fuzz_long"):
            item.add_marker(skip)
