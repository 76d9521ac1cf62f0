"""Bearer-token checks, shared by the gRPC interceptor and the HTTP middleware.

With a token configured, every call but health, reflection and metrics must carry
`authorization: Bearer <token>`; the comparison takes constant time.
"""

from __future__ import annotations

import hmac

from mmsearch.errors import Unauthenticated


class TokenCheck:
    def __init__(self, token: str):
        if not token:
            raise ValueError("TokenCheck needs a non-empty token")  # a programming error, not user input
        self._expected = f"Bearer {token}".encode()

    def check(self, header: str | bytes | None) -> None:
        """Raise Unauthenticated unless `header` (the authorization value) carries the token."""
        if header is None:
            raise Unauthenticated("missing authorization metadata (expected 'Bearer <token>')")
        given = header.encode("utf-8", "surrogateescape") if isinstance(header, str) else bytes(header)
        if not hmac.compare_digest(given, self._expected):
            raise Unauthenticated("wrong bearer token")
