"""Real parts some tests need (PostgreSQL, Ray, Chromium): when one is missing, a test calls
`unavailable(part, reason)`. On a developer's machine that is a skip with the reason; where
$MMSEARCH_TEST_REQUIRE names the part (or says `all`), it is a failure, so CI, which installs every part and
sets the variable, can never pass on tests that silently did not run.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def required(part: str) -> bool:
    names = {p.strip() for p in os.environ.get("MMSEARCH_TEST_REQUIRE", "").split(",") if p.strip()}
    return part in names or "all" in names


def unavailable(part: str, reason: str) -> NoReturn:
    if required(part):
        pytest.fail(f"{part} is required here ($MMSEARCH_TEST_REQUIRE) but unavailable: {reason}", pytrace=False)
    pytest.skip(reason)
