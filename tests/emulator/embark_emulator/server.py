"""moto's server plus what embark's tests need: lifecycle actions, IMDS, faults, a request log, seeding.

Everything listens on 127.0.0.1 only. The control API lives under /_embark/ on the AWS port:

  POST   /_embark/seed                {region?, name?, pool_size?, ...} -> ids of a ready-made account
  POST   /_embark/launch              {region?, group?, az?, count?, tags?, metadata_tags?, extra_enis?,
                                       role?, credential_lifetime?, warm_pool?}: role → IMDS serves rotating
                                       credentials; warm_pool ("Warmed:Stopped", …) → launched into the
                                       group's warm pool (Warmed:Pending:Wait with a launching hook)
  POST   /_embark/instances/<id>      {http_endpoint?: "enabled"|"disabled", metadata_tags?: bool,
                                       warmed?: "Warmed:Stopped"|…|null: into the warm pool or out of it
                                       (IMDS target-lifecycle-state; the launching hook fires again)}
  GET    /_embark/instances/<id>      the instance as IMDS shows it, with its lifecycle state
  POST   /_embark/addresses           {count, pool?, az?, region?}: allocate (tagged) Elastic IPs
  GET    /_embark/addresses?pool=P    addresses (of a pool) with their associations
  POST   /_embark/efs                 {zones?: [az names], region?}: a file system, mount targets in those zones
  POST   /_embark/efs/mount-target    {file_system_id, az, region?}: a mount target (in the default VPC)
  POST   /_embark/disassociate        {allocation_id}: free an address (another instance let go)
  GET    /_embark/lifecycle           completed lifecycle actions (result, heartbeats, timed out)
  POST   /_embark/faults              {service, operation, status, code, count | fraction, latency_ms}
  POST   /_embark/throttle            {service, operation?, rps}
  DELETE /_embark/faults              clears faults and throttles
  POST   /_embark/imds/unavailable    {seconds}: IMDS refuses connections for that long
  POST   /_embark/imds/default        {instance_id|null}: `/latest/...` (no instance prefix, as on EC2)
                                      answers as that instance (end-to-end tests in a namespace)
  POST   /_embark/imds/token-lifetime {seconds|null}: tokens stop working that soon, whatever their TTL
  GET    /_embark/requests            the request log (?service=, ?operation= filter);  DELETE clears it
  POST   /_embark/buckets             {name, region?}: create a bucket; requests signed for another
                                      region are answered 301 PermanentRedirect (x-amz-bucket-region)
  PUT    /_embark/s3/<bucket>/<key>   write an object as it is (corrupting a release on purpose)
  GET    /_embark/s3/<bucket>/<key>   read an object;  GET /_embark/s3/<bucket>?prefix= lists keys
  POST   /_embark/target-groups       {name, region?}: a target group in the default VPC -> {arn}
  GET    /_embark/targets?arn=        the targets registered in a target group
  GET    /_embark/messages?queue_url= what an SQS queue holds (SNS envelopes decoded), emptying it
  POST   /_embark/terminate           {instance_id}: the group terminates an instance (scale-in, failure);
                                      with a terminating hook it waits in Terminating:Wait first
  POST   /_embark/draining            {seconds}: deregistered targets stay `draining` that long
  POST   /_embark/spot                {instance_id, action?: "terminate"|"stop"|"hibernate", rebalance?}
  POST   /_embark/reset               forget everything (moto state too)
  POST   /_embark/consistency         {describe_addresses_lag_ms}: DescribeAddresses shows an address's old
                                      association state for that long after AssociateAddress changed it
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from . import ranges, seed
from .faults import Faults, RequestLog, request_id
from .fleet import Fleet, LifecycleError
from .identity import Iam, Sso
from .imds import Imds

ASG_NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
# moto checks and sets an address's association in two steps; AWS does it atomically. Serialise the
# calls that change associations so that a race test measures embark, not the emulator.
ATOMIC_EC2 = {"AssociateAddress", "DisassociateAddress", "AllocateAddress", "ReleaseAddress"}


class RequestHandler(MotoRequestHandler):
    """Werkzeug drops headers with an underscore in their name; the SSO portal's bearer token comes in
    one (`x-amz-sso_bearer_token`)."""

    def log_request(self, code="-", size="-"):
        """No access-log line per request: `GET /_embark/requests` has every call, with more. Under a
        200-agent bench, writing these lines (under the logging lock) took a sixth of the emulator's
        time."""

    def make_environ(self):
        environ = super().make_environ()
        token = self.headers.get("x-amz-sso_bearer_token")
        if token is not None:
            environ["embark.sso_bearer_token"] = token
        return environ


def service_of(environ) -> str:
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if "Credential=" in auth:
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        if len(scope) >= 4:
            return scope[3]
    return "unknown"


def access_key_of(environ) -> str | None:
    """The access key id a request was signed with (which credentials a client used)."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if "Credential=" in auth:
        return auth.split("Credential=", 1)[1].split("/", 1)[0]
    return None


def s3_operation(method: str, path: str, query: dict, environ) -> str:
    if not path.strip("/"):
        return "ListBuckets"
    has_key = len(path.strip("/").split("/", 1)) > 1
    if not has_key:
        if method == "GET":
            return "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"
        return {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket",
                "POST": "DeleteObjects"}.get(method, method)
    if method == "GET":
        return "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    if method == "PUT":
        if "partNumber" in query:
            return "UploadPart"
        if environ.get("HTTP_X_AMZ_COPY_SOURCE"):
            return "CopyObject"
        return "PutObject"
    if method == "POST":
        return "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
    return method


def key_arn_answer(region: str, body: bytes) -> bytes:
    """KMS answers `GetPublicKey` and `Sign` with the key's ARN in `KeyId`
    (https://docs.aws.amazon.com/kms/latest/APIReference/API_GetPublicKey.html#API_GetPublicKey_ResponseSyntax,
    https://docs.aws.amazon.com/kms/latest/APIReference/API_Sign.html#API_Sign_ResponseSyntax); moto
    answers the bare key id."""
    answer = json.loads(body)
    key = answer.get("KeyId", "")
    if key and not key.startswith("arn:"):
        answer["KeyId"] = f"arn:aws:kms:{region}:123456789012:key/{key}"
    return json.dumps(answer).encode()


def error_response(service: str, status: int, code: str, message: str) -> Response:
    rid = request_id()
    if service == "ec2":
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
                f"<Message>{message}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>")
        return Response(body, status=status, content_type="text/xml")
    if service == "s3":
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>{message}</Message><RequestId>{rid}</RequestId></Error>")
        return Response(body, status=status, content_type="application/xml")
    if service in ("elasticfilesystem", "sqs"):
        body = json.dumps({"__type": code, "ErrorCode": code, "message": message, "Message": message})
        return Response(body, status=status, content_type="application/json",
                        headers={"x-amzn-ErrorType": code, "x-amzn-RequestId": rid})
    body = (f'<ErrorResponse xmlns="{ASG_NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
            f"<Message>{message}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>")
    return Response(body, status=status, content_type="text/xml")


def query_response(action: str) -> Response:
    body = (f'<{action}Response xmlns="{ASG_NS}"><{action}Result/><ResponseMetadata>'
            f"<RequestId>{request_id()}</RequestId></ResponseMetadata></{action}Response>")
    return Response(body, status=200, content_type="text/xml")


def json_response(value, status: int = 200) -> Response:
    return Response(json.dumps(value, indent=1, default=str), status=status,
                    content_type="application/json")


class Emulator:
    def __init__(self, host: str, port: int, imds_port: int, default_region: str):
        self.host = host
        self.default_region = default_region
        ranges.install()
        self.moto = DomainDispatcherApplication(create_backend_app)
        self.moto.get_application = self.cached_application(self.moto.get_application)
        self.faults = Faults()
        self.log = RequestLog()
        self.fleet = Fleet()
        self.sso = Sso()
        self.iam = Iam()
        self.fleet.issuer = self.iam.role_credentials
        self.imds = Imds(self.fleet, self.faults, self.log, host, imds_port)
        self.ec2_lock = threading.Lock()
        self.address_lag = 0.0
        self.address_changes: dict[str, tuple] = {}
        # Deregistered targets shown as `draining` for the deregistration delay
        # (https://docs.aws.amazon.com/elasticloadbalancing/latest/application/load-balancer-target-groups.html#deregistration-delay);
        # moto drops them at once.
        self.draining_for = 0.0
        self.draining: dict[tuple[str, str], float] = {}
        self.server = make_server(host, port, self, threaded=True, request_handler=RequestHandler)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://{host}:{self.port}"

    @staticmethod
    def cached_application(find):
        """moto looks up the backend of every request under one lock, listing its package directory
        and matching every service's URL patterns each time. A signed request's backend follows from
        its host and its signature's scope (service, region): remembered per pair. Unsigned requests
        and moto's own paths are looked up every time."""
        cache: dict[tuple, object] = {}

        def get_application(environ):
            auth = environ.get("HTTP_AUTHORIZATION", "")
            path = environ.get("PATH_INFO", "")
            if "Credential=" not in auth or path.startswith(("/moto-api", "/latest/")):
                return find(environ)
            scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")[2:4]
            # moto tells a few services apart by path prefix (S3 Control: /v20180820/, SES v2: /v2/).
            key = (environ.get("HTTP_HOST", ""), environ.get("HTTP_X_AMZ_TARGET", "").split(".")[0],
                   path.split("/", 2)[1] if path.startswith(("/v2", "/execute-api")) else "", *scope)
            app = cache.get(key)
            if app is None:
                app = cache[key] = find(environ)
            return app

        return get_application

    # ---- WSGI entry ----
    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_embark/"):
            return self.control(Request(environ))(environ, start_response)
        return self.aws(environ, start_response)

    def aws(self, environ, start_response):
        started = time.time()
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        if path == "/federation/credentials" and method == "GET":
            return self.sso_credentials(environ, started)(environ, start_response)
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        service = service_of(environ)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        params: dict[str, str] = {}
        ctype = environ.get("CONTENT_TYPE", "")
        if service != "s3" and (ctype.startswith("application/x-www-form-urlencoded") or
                                (body[:7] == b"Action=")):
            params = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if "Action" in params:
            operation = params["Action"]
        elif target:
            operation = target.rsplit(".", 1)[-1]
        elif service == "s3":
            operation = s3_operation(method, path, query, environ)
        elif service == "elasticfilesystem":
            resource = path.rstrip("/").split("/")[2] if path.count("/") >= 2 else path
            verb = {"GET": "Describe", "POST": "Create", "DELETE": "Delete", "PUT": "Put"}.get(method, method)
            name = "".join(p.capitalize() for p in resource.split("-"))
            operation = verb + name + ("s" if verb == "Describe" and not name.endswith("s") else "")
        else:
            operation = f"{method} {path}"
        region = self.region_of(environ)

        entry = {"time": started, "service": service, "operation": operation, "method": method,
                 "path": path, "query": environ.get("QUERY_STRING", ""), "region": region,
                 "access_key": access_key_of(environ)}
        if params:
            entry["params"] = {k: v for k, v in params.items() if len(v) < 512}

        if seed.CONTROL_AGENT in environ.get("HTTP_USER_AGENT", ""):
            return self.moto(environ, start_response)
        if service == "s3" and operation not in ("ListBuckets", "CreateBucket"):
            redirect = self.s3_redirect(region, path, method)
            if redirect is not None:
                entry.update(status=redirect.status_code, bytes_out=len(redirect.get_data()), end=time.time())
                self.log.add(entry)
                return redirect(environ, start_response)
        if service == "ec2" and operation == "AssociateAddress":
            refusal = self.ec2_strictness(region, params, environ)
            if refusal is not None:
                entry.update(status=refusal.status_code, bytes_out=len(refusal.get_data()), end=time.time())
                self.log.add(entry)
                return refusal(environ, start_response)
        latency, error = self.faults.decide(service, operation, path=path, params=params)
        if latency:
            time.sleep(latency)
        if error is not None and error[3]:
            # The call happens; only its answer is lost.
            list(self.moto(environ, lambda *a, **k: None))
            response = error_response(service, *error[:3])
        elif error is not None:
            response = error_response(service, *error[:3])
        elif service == "autoscaling" and operation in ("CompleteLifecycleAction",
                                                        "RecordLifecycleActionHeartbeat"):
            response = (self.iam.denial(environ, body, params, operation)
                        or self.lifecycle_call(region, operation, params))
        else:
            response = None

        if response is not None:
            entry.update(status=response.status_code, bytes_out=len(response.get_data()),
                         injected=error is not None, end=time.time())
            self.log.add(entry)
            return response(environ, start_response)

        status_holder = {}

        def capture(status, headers, exc_info=None):
            status_holder["status"] = int(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        def run():
            return self.moto(environ, capture)

        conditional_put = service == "s3" and operation == "PutObject" and (
            environ.get("HTTP_IF_MATCH") or environ.get("HTTP_IF_NONE_MATCH"))
        if (service == "ec2" and operation in ATOMIC_EC2) or conditional_put:
            # moto checks a write's condition and writes in two steps; S3 does it atomically.
            with self.ec2_lock:
                before = self.address_states(region) if operation == "AssociateAddress" else None
                chunks = list(run())
                if before is not None and status_holder.get("status") == 200:
                    self.remember_changes(region, before)
        elif service == "ec2" and operation == "DescribeAddresses" and self.address_lag:
            chunks = self.rewritten(environ, start_response, status_holder, self.lagging_addresses)
        elif service == "elasticloadbalancing" and operation == "DeregisterTargets" and self.draining_for:
            chunks = list(run())
            if status_holder.get("status") == 200:
                self.start_draining(params)
        elif service == "kms" and operation in ("GetPublicKey", "Sign"):
            chunks = self.rewritten(environ, start_response, status_holder,
                                    lambda body: key_arn_answer(region, body))
        elif service == "elasticloadbalancing" and operation == "DescribeTargetHealth" and self.draining:
            chunks = self.rewritten(environ, start_response, status_holder,
                                    lambda body: self.with_draining(params, body))
        else:
            chunks = run()
        return self._counted(chunks, entry, status_holder)

    # ---- S3 as AWS documents it: a bucket is reached in its own region ----
    def s3_redirect(self, region: str, path: str, method: str) -> Response | None:
        """A request signed for another region than the bucket's is answered 301 PermanentRedirect with
        the bucket's region in `x-amz-bucket-region` (moto serves every bucket from every region).
        https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html (PermanentRedirect, 301) and
        https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadBucket.html (x-amz-bucket-region)."""
        name = path.strip("/").split("/", 1)[0]
        bucket = seed.s3_bucket(name)
        if bucket is None or bucket.region_name == region:
            return None
        body = b"" if method == "HEAD" else (
            '<?xml version="1.0" encoding="UTF-8"?><Error><Code>PermanentRedirect</Code>'
            "<Message>The bucket you are attempting to access must be addressed using the specified "
            "endpoint. Please send all future requests to this endpoint.</Message>"
            f"<Bucket>{name}</Bucket><Endpoint>{name}.s3.{bucket.region_name}.amazonaws.com</Endpoint>"
            f"<RequestId>{request_id()}</RequestId></Error>").encode()
        return Response(body, status=301, content_type="application/xml",
                        headers={"x-amz-bucket-region": bucket.region_name})

    # ---- EC2 as AWS documents it, where moto is more forgiving ----
    def ec2_strictness(self, region: str, params: dict, environ) -> Response | None:
        """AssociateAddress (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_AssociateAddress.html):
        - "If the instance has more than one network interface, you must specify a network interface
          ID": an InstanceId alone for a multi-ENI instance is refused (moto picks the first ENI).
        - AllowReassociation: "In a VPC ... reassociation is automatic, therefore you can specify false
          to ensure the operation fails if the Elastic IP address is already associated": absent means
          reassociate (moto treats absent as false). The request is rewritten to say so explicitly."""
        instance_id = params.get("InstanceId")
        if instance_id and not params.get("NetworkInterfaceId"):
            nics = self.fleet.nic_count(region, instance_id)
            if nics > 1:
                return error_response(
                    "ec2", 400, "InvalidInstanceID",
                    f"There are multiple interfaces attached to instance '{instance_id}'. "
                    "Please specify an interface ID for the operation instead.")
        if "AllowReassociation" not in params:
            body = environ["wsgi.input"].read()
            body += b"&AllowReassociation=true"
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return None

    def rewritten(self, environ, start_response, status_holder, rewrite) -> list[bytes]:
        """moto's answer with its body rewritten: the status and headers are held back until the new
        body is known, so that Content-Length matches it (a client reading a shorter body than announced
        would see a broken answer and retry, hiding what the rewrite shows)."""
        held = {}

        def hold(status, headers, exc_info=None):
            held["status"], held["headers"] = status, headers
            status_holder["status"] = int(status.split(" ", 1)[0])
            return lambda _data: None

        body = b"".join(self.moto(environ, hold))
        if status_holder.get("status") == 200:
            body = rewrite(body)
        headers = [(k, v) for k, v in held.get("headers", []) if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(held.get("status", "500 Internal Server Error"), headers)
        return [body]

    def start_draining(self, params: dict) -> None:
        arn = params.get("TargetGroupArn", "")
        until = time.time() + self.draining_for
        for key, value in params.items():
            if key.startswith("Targets.member.") and key.endswith(".Id"):
                self.draining[(arn, value)] = until

    def with_draining(self, params: dict, body: bytes) -> bytes:
        import xml.etree.ElementTree as ET
        arn = params.get("TargetGroupArn", "")
        now = time.time()
        ids = [tid for (a, tid), until in self.draining.items() if a == arn and until > now]
        if not ids:
            return body
        ns = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"
        ET.register_namespace("", ns)
        root = ET.fromstring(body)
        q = lambda tag: f"{{{ns}}}{tag}"  # noqa: E731
        descriptions = root.find(f"{q('DescribeTargetHealthResult')}/{q('TargetHealthDescriptions')}")
        if descriptions is None:
            return body
        for tid in ids:
            member = ET.SubElement(descriptions, q("member"))
            target = ET.SubElement(member, q("Target"))
            ET.SubElement(target, q("Id")).text = tid
            health = ET.SubElement(member, q("TargetHealth"))
            ET.SubElement(health, q("State")).text = "draining"
            ET.SubElement(health, q("Reason")).text = "Target.DeregistrationInProgress"
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    def address_states(self, region: str) -> dict:
        ec2 = self.fleet.ec2(region)
        return {a.allocation_id: (a.instance or None, a.association_id) for a in ec2.addresses}

    def remember_changes(self, region: str, before: dict) -> None:
        now = time.time()
        for alloc, state in before.items():
            if self.address_states(region).get(alloc) != state:
                self.address_changes[alloc] = (now, state)

    def lagging_addresses(self, body: bytes) -> bytes:
        """DescribeAddresses is eventually consistent
        (https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html): for a while after an
        association it may still show the address as it was. Shown here as unassociated."""
        import xml.etree.ElementTree as ET
        now = time.time()
        lagging = {alloc for alloc, (at, (inst, _)) in self.address_changes.items()
                   if now - at < self.address_lag and inst is None}
        if not lagging:
            return body
        ns = "http://ec2.amazonaws.com/doc/2016-11-15"
        ET.register_namespace("", ns)
        root = ET.fromstring(body)
        q = lambda tag: f"{{{ns}}}{tag}"  # noqa: E731
        for item in root.iter(q("item")):
            alloc = item.find(q("allocationId"))
            if alloc is None or alloc.text not in lagging:
                continue
            for tag in ("instanceId", "associationId", "networkInterfaceId",
                        "networkInterfaceOwnerId", "privateIpAddress"):
                for child in item.findall(q(tag)):
                    item.remove(child)
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    def _counted(self, chunks, entry, status_holder):
        """The answer, logged before its last chunk goes out: a client that has read the whole answer
        (and a test that then reads the log) finds the request there. Logging after the last chunk
        raced with the client on a busy machine."""
        total = 0
        logged = False

        def log():
            nonlocal logged
            if not logged:
                logged = True
                entry.update(status=status_holder.get("status"), bytes_out=total, end=time.time())
                self.log.add(entry)

        try:
            held = None
            for chunk in chunks:
                if held is not None:
                    yield held
                total += len(chunk)
                held = chunk
            log()
            if held is not None:
                yield held
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
            log()

    def sso_credentials(self, environ, started: float) -> Response:
        args = parse_qs(environ.get("QUERY_STRING", ""))
        response = self.sso.role_credentials(environ.get("embark.sso_bearer_token"),
                                             args.get("account_id", [""])[0], args.get("role_name", [""])[0])
        self.log.add({"time": started, "service": "sso", "operation": "GetRoleCredentials", "method": "GET",
                      "path": environ.get("PATH_INFO", ""), "query": environ.get("QUERY_STRING", ""),
                      "region": self.default_region, "access_key": None,
                      "status": response.status_code, "bytes_out": len(response.get_data())})
        return response

    def region_of(self, environ) -> str:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if "Credential=" in auth:
            scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
            if len(scope) >= 3:
                return scope[2]
        return self.default_region

    def lifecycle_call(self, region: str, operation: str, params: dict) -> Response:
        try:
            if operation == "CompleteLifecycleAction":
                self.fleet.complete(region, params)
            else:
                self.fleet.heartbeat(region, params)
        except LifecycleError as err:
            return error_response("autoscaling", 400, err.code, err.message)
        return query_response(operation)

    # ---- control API ----
    def control(self, request: Request) -> Response:
        try:
            return self._control(request)
        except (LifecycleError,) as err:
            return json_response({"error": err.message}, 400)
        except (ValueError, KeyError, TypeError) as err:
            return json_response({"error": f"{type(err).__name__}: {err}"}, 400)

    def _control(self, request: Request) -> Response:
        path = request.path[len("/_embark/"):].strip("/")
        method = request.method
        spec = request.get_json(silent=True) or {}
        if path == "health":
            return json_response({"ok": True, "endpoint": self.endpoint, "imds_port": self.imds.port})
        if path == "seed" and method == "POST":
            return json_response(seed.seed(self, spec))
        if path == "launch" and method == "POST":
            region = spec.get("region", self.default_region)
            launched = self.fleet.launch(region, spec.get("group"), spec.get("az"),
                                         int(spec.get("count", 1)), spec.get("tags", {}),
                                         bool(spec.get("metadata_tags", True)),
                                         spec.get("instance_type", "t3.micro"),
                                         int(spec.get("extra_enis", 0)),
                                         spec.get("role"),
                                         float(spec.get("credential_lifetime", 3600)),
                                         spec.get("warm_pool"))
            for item in launched:
                item["imds_endpoint"] = self.imds_endpoint(item["instance_id"])
            return json_response(launched)
        if path.startswith("instances/"):
            iid = path.split("/", 1)[1]
            member = self.fleet.member(iid)
            if member is None:
                return json_response({"error": f"unknown instance {iid}"}, 404)
            if method == "POST":
                if "http_endpoint" in spec:
                    member.http_endpoint = spec["http_endpoint"]
                if "metadata_tags" in spec:
                    member.metadata_tags = bool(spec["metadata_tags"])
                if "warmed" in spec:
                    self.fleet.set_warm(iid, spec["warmed"])
            info = self.fleet.describe(iid) or {"instance_id": iid, "state": "unknown"}
            info["lifecycle_state"] = self.fleet.lifecycle_state(member.region, iid)
            info["imds_endpoint"] = self.imds_endpoint(iid)
            return json_response(info)
        if path == "sso" and method == "POST":
            self.sso.sign_in(spec["token"], str(spec["account_id"]), spec["role_name"])
            return json_response({"ok": True})
        if path == "kms" and method == "POST":
            return json_response(seed.signing_key(self, spec))
        if path == "iam" and method == "POST":
            return json_response(self.iam.enforce(spec))
        if path == "addresses" and method == "POST":
            return json_response(seed.allocate(self, spec))
        if path == "addresses" and method == "GET":
            return json_response(seed.addresses(self, request.args.get("pool"),
                                                request.args.get("region", self.default_region)))
        if path == "efs" and method == "POST":
            return json_response(seed.file_system(self, spec))
        if path == "efs/mount-target" and method == "POST":
            return json_response(seed.mount_target(self, spec))
        if path == "spot" and method == "POST":
            self.fleet.spot_notice(spec["instance_id"], spec.get("action"), bool(spec.get("rebalance")))
            return json_response({"ok": True})
        if path == "terminate" and method == "POST":
            self.fleet.terminate(spec["instance_id"])
            return json_response({"ok": True})
        if path == "buckets" and method == "POST":
            return json_response(seed.bucket(self, spec))
        if path == "target-groups" and method == "POST":
            return json_response(seed.target_group(self, spec))
        if path == "targets":
            return json_response(seed.targets(self, request.args["arn"],
                                              request.args.get("region", self.default_region)))
        if path == "messages":
            return json_response(seed.messages(self, request.args["queue_url"],
                                               request.args.get("region", self.default_region)))
        if path.startswith("s3/"):
            return seed.s3_object(self, method, path[3:], request)
        if path == "disassociate" and method == "POST":
            seed.disassociate(self, spec)
            return json_response({"ok": True})
        if path == "lifecycle":
            with self.fleet.lock:
                return json_response(list(self.fleet.history))
        if path == "faults":
            if method == "DELETE":
                self.faults.clear()
                return json_response({"ok": True})
            rules = spec if isinstance(spec, list) else [spec]
            for rule in rules:
                self.faults.add_rule(rule)
            return json_response({"ok": True, "rules": len(rules)})
        if path == "consistency" and method == "POST":
            self.address_lag = float(spec.get("describe_addresses_lag_ms", 0)) / 1000.0
            return json_response({"ok": True})
        if path == "draining" and method == "POST":
            self.draining_for = float(spec.get("seconds", 0))
            return json_response({"ok": True})
        if path == "throttle" and method == "POST":
            self.faults.add_throttle(spec)
            return json_response({"ok": True})
        if path == "imds/token-lifetime" and method == "POST":
            seconds = spec.get("seconds")
            self.imds.tokens_expire_after(None if seconds is None else float(seconds))
            return json_response({"ok": True})
        if path == "imds/default" and method == "POST":
            self.imds.default_instance = spec.get("instance_id")
            return json_response({"ok": True})
        if path == "imds/unavailable" and method == "POST":
            self.imds.unavailable_for(float(spec["seconds"]))
            return json_response({"ok": True})
        if path == "requests":
            if method == "DELETE":
                self.log.clear()
                return json_response({"ok": True})
            entries = self.log.snapshot()
            for key in ("service", "operation"):
                if request.args.get(key):
                    entries = [e for e in entries if e.get(key) == request.args[key]]
            return json_response(entries)
        if path == "reset" and method == "POST":
            from moto.backends import get_backend  # noqa: F401  (imported for side effects)
            from moto.core.models import base_decorator  # noqa: F401
            from moto.moto_api._internal.models import moto_api_backend

            moto_api_backend.reset()
            self.fleet.reset()
            self.faults.clear()
            self.log.clear()
            self.imds.reset()
            self.sso.reset()
            self.iam.reset()
            self.address_lag = 0.0
            self.address_changes.clear()
            self.draining_for = 0.0
            self.draining.clear()
            return json_response({"ok": True})
        return json_response({"error": f"no control call {method} /_embark/{path}"}, 404)

    def imds_endpoint(self, instance_id: str) -> str:
        return f"http://{self.host}:{self.imds.port}/{instance_id}"

    def serve(self, ready_file: str | None) -> None:
        self.imds.start()
        info = {"endpoint": self.endpoint, "port": self.port, "imds_port": self.imds.port,
                "imds_base": f"http://{self.host}:{self.imds.port}", "pid": os.getpid(),
                "region": self.default_region}
        if ready_file:
            tmp = ready_file + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(info, fh)
            os.replace(tmp, ready_file)
        print(json.dumps(info), flush=True)
        self.server.serve_forever()


def watch_parent(parent: int) -> None:
    def loop() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=loop, daemon=True).start()


def in_own_network_namespace() -> bool:
    """This process is in a network namespace with no interface but the loopback (what the end-to-end
    suite creates with `unshare --net`): answering there on the link-local IMDS address reaches nothing
    but the suite's own containers. /proc/self/net/dev lists the interfaces of this process's namespace."""
    try:
        with open("/proc/self/net/dev") as fh:
            names = [line.split(":", 1)[0].strip() for line in fh.readlines()[2:]]
    except OSError:
        return False
    return names == ["lo"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="embark-emulator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="AWS API port (0: any free port)")
    parser.add_argument("--imds-port", type=int, default=0, help="IMDS port (0: any free port)")
    parser.add_argument("--region", default="eu-west-1")
    parser.add_argument("--ready-file", help="write the ports here as JSON once listening")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="exit when the process that started the emulator exits (test harnesses)")
    args = parser.parse_args(argv)
    if args.exit_with_parent:
        watch_parent(os.getppid())
    if args.host not in ("127.0.0.1", "localhost", "::1") and not (
            args.host == "169.254.169.254" and in_own_network_namespace()):
        sys.exit("the emulator listens on loopback only (or on 169.254.169.254 inside a network "
                 "namespace of its own, for the end-to-end suite)")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    Emulator(args.host, args.port, args.imds_port, args.region).serve(args.ready_file)


if __name__ == "__main__":
    main()
