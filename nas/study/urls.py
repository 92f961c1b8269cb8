"""Storage URLs as nas shows, stores and prints them: the password, if any, as ***."""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = [
    "hide_secrets",
    "public_url",
]

_SCHEME = re.compile(r"^[A-Za-z][\w+.-]*:?//")  # "postgresql://", or mistyped "postgresql//"


_SECRETS: set[str] = set()  # passwords seen in storage URLs: hidden in whatever nas prints


def public_url(url: str) -> str:
    """A storage URL as nas shows, stores and writes it: the password, if any, as ***
    (SQLAlchemy's convention). The password is remembered, so that hide_secrets also
    hides it where a database driver repeats it in a message. Mistyped URLs too: the
    user part is what stands before the last '@' (a password with an unescaped '@' is
    hidden whole, and each of its pieces)."""
    at = url.rfind("@")
    if at < 0:
        return url
    prefix = url[:at]
    scheme = _SCHEME.match(prefix)
    start = scheme.end() if scheme else 0
    colon = prefix.find(":", start)
    if colon < 0 or colon == len(prefix) - 1:
        return url
    password = prefix[colon + 1 :]
    pieces = {password, unquote(password), *password.split("@")}
    _SECRETS.update(p for p in pieces if p)
    return f"{prefix[: colon + 1]}***{url[at:]}"


def hide_secrets(text: str) -> str:
    """`text` with every password nas has seen in a storage URL shown as ***: the one
    place where nas hides them (public_url registers them), applied to every error line
    a command prints."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
