"""Fault injection and the request log.

Rules are matched by service and operation ("*" matches any). A rule either fails a call (status + the
service's own error code) for a `count` of calls or a `fraction` of them, or only adds latency. Throttling
answers with the service's throttling error code above `rps` requests per second.
"""

from __future__ import annotations

import fnmatch
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

# The error code and HTTP status each service uses when it throttles a caller.
THROTTLE = {
    "ec2": ("RequestLimitExceeded", 503),
    "autoscaling": ("Throttling", 400),
    "s3": ("SlowDown", 503),
    "sns": ("Throttling", 400),
    "sqs": ("ThrottlingException", 400),
    "elasticfilesystem": ("ThrottlingException", 429),
    "elasticloadbalancing": ("Throttling", 400),
    "imds": ("Throttling", 429),
}


@dataclass
class Rule:
    service: str = "*"
    operation: str = "*"
    status: int | None = None
    code: str = "InternalError"
    message: str = "injected fault"
    count: int | None = None
    fraction: float | None = None
    latency_ms: int = 0
    # A path prefix: under /latest/ for IMDS, the request path (/bucket/key) for AWS; with a `*` inside,
    # a glob over the whole path (`/bucket/app/ready/*/_go-*`).
    path: str = "*"
    instance: str = "*"  # IMDS rules: one instance id
    params: dict | None = None  # AWS rules: only calls with these parameters (e.g. {"InstanceId": ...})
    after: bool = False  # the call takes effect, then its answer is replaced by the error (a lost answer)
    hits: int = 0

    def matches(self, service: str, operation: str, path: str = "", instance: str = "",
                params: dict | None = None) -> bool:
        if self.params and any((params or {}).get(k) != v for k, v in self.params.items()):
            return False
        if self.service not in ("*", service):
            return False
        if self.operation not in ("*", operation):
            return False
        if self.path != "*" and not (fnmatch.fnmatchcase(path, self.path) if "*" in self.path
                                     else path.startswith(self.path)):
            return False
        if self.instance not in ("*", instance):
            return False
        return True


@dataclass
class Throttle:
    service: str
    operation: str
    rps: float
    stamps: list = field(default_factory=list)


class Faults:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[Rule] = []
        self.throttles: list[Throttle] = []
        self.rng = random.Random(20261126)

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.throttles.clear()

    def add_rule(self, spec: dict) -> Rule:
        allowed = set(Rule.__dataclass_fields__) - {"hits"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        rule = Rule(**spec)
        if rule.status is None and not rule.latency_ms:
            raise ValueError("a fault needs a status or a latency_ms")
        with self.lock:
            self.rules.append(rule)
        return rule

    def add_throttle(self, spec: dict) -> None:
        with self.lock:
            self.throttles.append(
                Throttle(spec.get("service", "*"), spec.get("operation", "*"), float(spec["rps"]))
            )

    def decide(self, service: str, operation: str, path: str = "", instance: str = "",
               params: dict | None = None):
        """Returns (latency_seconds, error): error is None or (status, code, message, after)."""
        latency = 0.0
        error = None
        now = time.monotonic()
        with self.lock:
            for rule in self.rules:
                if not rule.matches(service, operation, path, instance, params):
                    continue
                latency += rule.latency_ms / 1000.0
                if rule.status is None or error is not None:
                    continue
                if rule.count is not None:
                    if rule.count <= 0:
                        continue
                    rule.count -= 1
                elif rule.fraction is not None:
                    if self.rng.random() >= rule.fraction:
                        continue
                rule.hits += 1
                error = (rule.status, rule.code, rule.message, rule.after)
            for th in self.throttles:
                if th.service not in ("*", service) or th.operation not in ("*", operation):
                    continue
                th.stamps = [s for s in th.stamps if now - s < 1.0]
                if len(th.stamps) >= th.rps and error is None:
                    code, status = THROTTLE.get(service, ("Throttling", 400))
                    error = (status, code, "Rate exceeded", False)
                else:
                    th.stamps.append(now)
        return latency, error


class RequestLog:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: list[dict] = []
        self.seq = 0

    def add(self, entry: dict) -> dict:
        with self.lock:
            self.seq += 1
            entry["seq"] = self.seq
            self.entries.append(entry)
        return entry

    def snapshot(self) -> list[dict]:
        with self.lock:
            return [dict(e) for e in self.entries]

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


def request_id() -> str:
    return str(uuid.uuid4())
