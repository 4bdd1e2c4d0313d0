"""Who may use the review page: per-person tokens, and rate limits on failed attempts.

Per-person tokens come from a file (``reviewer.human.tokens_file``, e.g. a mounted Secret), one
person a line: ``name token`` or ``name token admin``; ``#`` starts a comment. The person's
identity comes from the token they present, never from the request body. A person may undo or
correct only their own labels; an admin may undo or correct anyone's.

Without a tokens file the single shared token (``reviewer.human.token_env``) is accepted as the
person ``human`` (an admin): fine for one person on a laptop, logged as a warning.

The token is checked first: a request with a valid token always passes. Failed attempts are
counted per presented credential (a hash of it) and per client IP; either count reaching the
limit within a minute answers 429 to further *failed* attempts, so a shared ingress IP full of
bad requests never locks out the holders of valid tokens. Both maps are bounded (oldest keys are
dropped first), so a flood of distinct credentials cannot grow memory.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

from autoannotator.exceptions import ConfigError

MIN_TOKEN_CHARS = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class Person:
    """An authenticated reviewer."""

    name: str
    admin: bool = False


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Tokens:
    """Token → person, looked up by the token's SHA-256 (no secret compared byte by byte)."""

    def __init__(self, people: dict[str, Person]) -> None:
        self._by_digest = {_digest(token): person for token, person in people.items()}

    def __len__(self) -> int:
        return len(self._by_digest)

    def person(self, token: str) -> Person | None:
        """The token's holder, or None."""
        return self._by_digest.get(_digest(token)) if token else None

    @classmethod
    def single(cls, token: str) -> Tokens:
        """The shared-token mode: whoever holds ``token`` is ``human``, an admin."""
        return cls({token: Person("human", admin=True)})

    @classmethod
    def from_file(cls, path: str | Path) -> Tokens:
        """Read ``name token [admin]`` lines; errors name the file and line."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"reviewer.human.tokens_file: cannot read {path}: {exc.strerror}") from exc
        people: dict[str, Person] = {}
        names: set[str] = set()
        for n, line in enumerate(text.splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            where = f"reviewer.human.tokens_file: {path} line {n}"
            if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] != "admin"):
                raise ConfigError(f"{where}: expected 'name token' or 'name token admin'")
            name, token = fields[0], fields[1]
            if not _NAME.match(name):
                raise ConfigError(f"{where}: name {name!r} must be letters, digits, . _ @ - (at most 64)")
            if len(token) < MIN_TOKEN_CHARS:
                raise ConfigError(f"{where}: the token of {name} is shorter than {MIN_TOKEN_CHARS} characters")
            if token in people or name in names:
                raise ConfigError(f"{where}: {name} or its token appears twice")
            people[token] = Person(name, admin=len(fields) == 3)
            names.add(name)
        if not people:
            raise ConfigError(f"reviewer.human.tokens_file: {path} names no person")
        return cls(people)


class FailureLimiter:
    """Failed attempts per key in a sliding minute, in a map of at most ``max_keys`` keys."""

    def __init__(self, max_per_minute: int, *, max_keys: int = 10_000, window_s: float = 60.0) -> None:
        self.max_per_minute = max_per_minute
        self.max_keys = max_keys
        self.window_s = window_s
        self._fails: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._fails)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        fails = self._fails.get(key)
        if fails is None:
            return None
        while fails and fails[0] <= now - self.window_s:
            fails.popleft()
        if not fails:
            del self._fails[key]
            return None
        return fails

    def wait_s(self, key: str, now: float | None = None) -> float:
        """Seconds until ``key`` may fail again (0: not limited)."""
        now = time.monotonic() if now is None else now
        fails = self._recent(key, now)
        if fails is None or len(fails) < self.max_per_minute:
            return 0.0
        return max(0.0, fails[-self.max_per_minute] + self.window_s - now)

    def fail(self, key: str, now: float | None = None) -> None:
        """Count one failed attempt of ``key``."""
        now = time.monotonic() if now is None else now
        fails = self._recent(key, now) or deque(maxlen=self.max_per_minute)
        fails.append(now)
        self._fails[key] = fails
        self._fails.move_to_end(key)
        while len(self._fails) > self.max_keys:
            self._fails.popitem(last=False)


def credential_key(token: str) -> str:
    """What the limiter counts a presented (wrong) token as: a short hash, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:16] if token else "-"
