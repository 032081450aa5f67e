"""IMDSv2 for every instance the emulator launched, on one port.

Each instance answers under its own path prefix: the endpoint of instance i-0abc is
`http://127.0.0.1:<port>/i-0abc` (set it as AWS_EC2_METADATA_SERVICE_ENDPOINT). The rules follow AWS:
a session token from `PUT /latest/api/token` with a TTL of 1..21600 seconds is required (400 without a
valid TTL, 401 without a valid token), the TTL header is echoed, and an instance whose metadata endpoint is
disabled answers 403. Answers are read live from moto's EC2 and Auto Scaling state.
"""

from __future__ import annotations

import json
import secrets
import threading
import time

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from .faults import Faults, RequestLog
from .fleet import Fleet

TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


def _text(body: str, status: int = 200, headers: dict | None = None) -> Response:
    return Response(body, status=status, headers=headers or {}, content_type="text/plain")


class Imds:
    def __init__(self, fleet: Fleet, faults: Faults, log: RequestLog, host: str, port: int):
        self.fleet = fleet
        self.faults = faults
        self.log = log
        self.host = host
        self.port = port
        self.tokens: dict[str, tuple[str, float]] = {}
        self.token_lifetime: float | None = None
        self.lock = threading.Lock()
        self.server = None
        self.thread = None
        self.down_until = 0.0
        # The instance that un-prefixed paths (`/latest/...`, as on EC2) answer for: set only by an
        # end-to-end test that runs the emulator on the link-local address inside a network namespace
        # of its own, so that shipped units and user-data run unchanged (docs/emulator.md).
        self.default_instance: str | None = None

    # ---- serving, stopping and restarting (unreachable IMDS) ----
    def start(self) -> None:
        self.server = make_server(self.host, self.port, self, threaded=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def unavailable_for(self, seconds: float) -> None:
        """Closes the listening socket (connections are refused) and reopens it after `seconds`."""
        with self.lock:
            if self.server is not None:
                self.server.shutdown()
                self.server.server_close()
                self.server = None
            self.down_until = time.monotonic() + seconds

        def reopen() -> None:
            time.sleep(seconds)
            with self.lock:
                if self.server is None:
                    self.start()

        threading.Thread(target=reopen, daemon=True).start()

    def reset(self) -> None:
        with self.lock:
            self.default_instance = None
            self.tokens.clear()
            self.token_lifetime = None

    def tokens_expire_after(self, seconds: float | None) -> None:
        """Tokens stop working after `seconds`, whatever TTL they were given: what a restarted metadata
        proxy, or IMDS after a host event, does to a client that caches its token until its TTL."""
        with self.lock:
            self.token_lifetime = seconds

    # ---- WSGI ----
    def __call__(self, environ, start_response):
        request = Request(environ)
        response = self.handle(request)
        self.log.add({"time": time.time(), "service": "imds", "operation": request.method + " " +
                      request.path, "method": request.method, "path": request.path,
                      "status": response.status_code})
        return response(environ, start_response)

    def handle(self, request: Request) -> Response:
        parts = request.path.strip("/").split("/", 1)
        if parts[0] == "latest" and self.default_instance is not None:
            parts = [self.default_instance, request.path.strip("/")]
        if len(parts) < 2 or not parts[1].startswith("latest"):
            return _text("Not Found", 404)
        instance_id, rest = parts[0], parts[1][len("latest"):].lstrip("/")
        member = self.fleet.member(instance_id)
        if member is None:
            return _text("Not Found", 404)
        if member.http_endpoint != "enabled":
            return _text("Forbidden", 403)

        latency, error = self.faults.decide("imds", request.method, "/" + rest, instance_id)
        if latency:
            time.sleep(latency)
        if error is not None:
            return _text(error[2], error[0])

        if rest == "api/token":
            if request.method != "PUT":
                return _text("Method Not Allowed", 405)
            if request.headers.get("X-Forwarded-For"):
                return _text("Forbidden", 403)
            ttl = request.headers.get(TTL_HEADER, "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return _text("Bad Request", 400)
            token = secrets.token_urlsafe(32)
            with self.lock:
                life = int(ttl) if self.token_lifetime is None else min(int(ttl), self.token_lifetime)
                self.tokens[token] = (instance_id, time.monotonic() + life)
            return _text(token, 200, {TTL_HEADER: ttl})

        if request.method != "GET":
            return _text("Method Not Allowed", 405)
        token = request.headers.get(TOKEN_HEADER, "")
        with self.lock:
            owner, expiry = self.tokens.get(token, (None, 0.0))
        if owner != instance_id or time.monotonic() >= expiry:
            return _text("Unauthorized", 401)

        path = rest.rstrip("/")
        info = self.fleet.describe(instance_id, tags=path.startswith("meta-data/tags"),
                                   lifecycle=path.endswith("target-lifecycle-state"))
        if info is None:
            return _text("Not Found", 404)
        body = self.lookup(info, path)
        if body is None:
            return _text("Not Found", 404)
        return _text(body)

    @staticmethod
    def lookup(info: dict, path: str) -> str | None:
        mac = info["mac"] or "02:00:00:00:00:01"
        net = f"meta-data/network/interfaces/macs/{mac}/"
        values = {
            "meta-data/instance-id": info["instance_id"],
            "meta-data/instance-type": info["instance_type"],
            "meta-data/ami-id": info["ami_id"],
            "meta-data/local-ipv4": info["private_ipv4"],
            "meta-data/public-ipv4": info["public_ipv4"],
            "meta-data/mac": mac,
            "meta-data/placement/region": info["region"],
            "meta-data/placement/availability-zone": info["availability_zone"],
            "meta-data/placement/availability-zone-id": info["availability_zone_id"],
            "meta-data/autoscaling/target-lifecycle-state": info["target_lifecycle_state"],
            "meta-data/local-hostname": f"ip-{(info['private_ipv4'] or '').replace('.', '-')}."
                                        f"{info['region']}.compute.internal",
            net + "local-ipv4s": info["private_ipv4"],
            net + "interface-id": info.get("interface_id"),
            net + "device-number": "0",
            "meta-data/network/interfaces/macs": "\n".join(f"{n['mac']}/" for n in info.get("nics", []))
                                                 or f"{mac}/",
            net + "public-ipv4s": info["public_ipv4"],
            "dynamic/instance-identity/document": json.dumps({
                "accountId": "123456789012",
                "architecture": "x86_64",
                "availabilityZone": info["availability_zone"],
                "imageId": info["ami_id"],
                "instanceId": info["instance_id"],
                "instanceType": info["instance_type"],
                "privateIp": info["private_ipv4"],
                "region": info["region"],
                "version": "2017-09-30",
            }, indent=2),
        }
        if info.get("role"):
            values["meta-data/iam/security-credentials"] = info["role"]
            if path == f"meta-data/iam/security-credentials/{info['role']}":
                creds = info.get("credentials")
                return json.dumps(creds) if creds else None
            values["meta-data/iam/info"] = json.dumps({
                "Code": "Success", "InstanceProfileId": "AIPAEMBARKTEST",
                "InstanceProfileArn": f"arn:aws:iam::123456789012:instance-profile/{info['role']}"})
        if info.get("spot_action"):
            values["meta-data/spot/instance-action"] = json.dumps(info["spot_action"])
        if info.get("rebalance"):
            values["meta-data/events/recommendations/rebalance"] = json.dumps(info["rebalance"])
        for nic in info.get("nics", [])[1:]:
            other = f"meta-data/network/interfaces/macs/{nic['mac']}/"
            values[other + "interface-id"] = nic["interface_id"]
            values[other + "device-number"] = str(nic["device"])
            values[other + "local-ipv4s"] = nic["private_ipv4"]
        if path in values:
            return values[path]
        if info["metadata_tags"]:
            tags = info["tags"]
            if path == "meta-data/tags/instance":
                return "\n".join(sorted(tags))
            if path.startswith("meta-data/tags/instance/"):
                return tags.get(path[len("meta-data/tags/instance/"):])
        if path == "meta-data":
            keys = sorted({k[len("meta-data/"):].split("/")[0] + ("/" if k.count("/") > 1 else "")
                           for k, v in values.items() if k.startswith("meta-data/") and v})
            if info["metadata_tags"]:
                keys.append("tags/")
            return "\n".join(keys)
        return None
