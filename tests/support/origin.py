"""The test origin lives in ``damselfly.devtools.origin`` (the demo uses it too); this module
keeps the name tests use: ``python -m tests.support.origin`` or ``from tests.support.origin
import Origin, make_app``."""

from damselfly.devtools.origin import Origin, main, make_app

__all__ = ["Origin", "main", "make_app"]

if __name__ == "__main__":
    main()
