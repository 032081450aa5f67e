"""Ranged GETs at S3's cost: only the range is read.

moto answers `GetObject` with a `Range` header by reading the whole object (under the key's lock) and
slicing it, so ranges of one large object are served one after the other, each at the cost of the
whole: on a 56 MB bundle, ~45 ms a range. S3 serves byte ranges of one object in parallel, each at the
cost of its own bytes ("Use Byte-Range Fetches",
https://docs.aws.amazon.com/AmazonS3/latest/userguide/optimizing-performance-guidelines.html#optimizing-performance-guidelines-get-range).
Here a single-range GET hands moto a key whose value is read only where moto slices it; every header,
condition and error is still moto's own. Anything else (no range, several ranges, a range moto answers
whole) reads the value as before.
"""

from __future__ import annotations

from moto.s3.models import FakeKey
from moto.s3.responses import S3Response


class KeyBytes:
    """A key's value as moto's range code uses it: its length, and slices read from the key's buffer."""

    def __init__(self, key: FakeKey) -> None:
        self.key = key

    def __len__(self) -> int:
        return self.key.size

    def __getitem__(self, part: slice) -> bytes:
        start, stop, _ = part.indices(self.key.size)
        with self.key.lock:
            self.key._value_buffer.seek(start)
            return self.key._value_buffer.read(max(0, stop - start))


class RangedKey:
    """The key moto's `get_object` sees for a single-range GET: itself, but for `value`."""

    def __init__(self, key: FakeKey) -> None:
        self._key = key

    def __getattr__(self, name: str):
        return getattr(self._key, name)

    @property
    def value(self) -> KeyBytes:
        return KeyBytes(self._key)


def install() -> None:
    get_object = S3Response.get_object
    key_response = S3Response.key_response

    def ranged_get_object(self):
        asked = self.headers.get("range") or ""
        if not asked.startswith("bytes=") or "," in asked:
            return get_object(self)
        get_key = self._get_key

        def ranged_key(*args, **kwargs):
            key, not_modified = get_key(*args, **kwargs)
            return RangedKey(key), not_modified

        self._get_key = ranged_key
        try:
            return get_object(self)
        finally:
            del self._get_key

    def whole_body(self, *args, **kwargs):
        status, headers, body = key_response(self, *args, **kwargs)
        if isinstance(body, KeyBytes):  # a range moto answers with the whole object
            body = body.key.value
        return status, headers, body

    S3Response.get_object = ranged_get_object
    S3Response.key_response = whole_body
