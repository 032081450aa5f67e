"""Who signs a request, and what they may do.

- The SSO portal's `GetRoleCredentials`, for `AWS_PROFILE`s with `sso_*` settings (an operator pushing a
  release from an SSO laptop). moto has no SSO portal.
- IAM enforcement: every call is decided by the signer's policy (a user's, or an instance role's through
  the credentials IMDS serves), to prove that `embark iam-policy` is enough for what embark does.
"""

from __future__ import annotations

import json
import secrets
import threading
import time

from moto import settings
from moto.core import DEFAULT_ACCOUNT_ID
from werkzeug.wrappers import Response

ADMIN_USER = "embark-emulator-admin"
EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}


def _error(status: int, code: str, message: str) -> Response:
    # restJson errors: the code in x-amzn-ErrorType, the message in the body.
    return Response(json.dumps({"message": message}), status=status,
                    headers={"x-amzn-ErrorType": code}, content_type="application/json")


class Sso:
    """`GET /federation/credentials?role_name=R&account_id=A` with the header `x-amz-sso_bearer_token`
    (https://docs.aws.amazon.com/singlesignon/latest/PortalAPIReference/API_GetRoleCredentials.html):
    short-term credentials for a role the token's user is assigned; 401 UnauthorizedException for a
    token the portal does not know, 404 ResourceNotFoundException for a role it is not assigned."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens: dict[str, set[tuple[str, str]]] = {}

    def reset(self) -> None:
        with self.lock:
            self.tokens.clear()

    def sign_in(self, token: str, account_id: str, role_name: str) -> None:
        with self.lock:
            self.tokens.setdefault(token, set()).add((account_id, role_name))

    def role_credentials(self, token: str | None, account_id: str, role_name: str) -> Response:
        with self.lock:
            roles = self.tokens.get(token or "")
        if roles is None:
            return _error(401, "UnauthorizedException", "Session token not found or invalid")
        if (account_id, role_name) not in roles:
            return _error(404, "ResourceNotFoundException", "No access")
        body = {"roleCredentials": {
            "accessKeyId": "ASIA" + secrets.token_hex(8).upper(),
            "secretAccessKey": secrets.token_urlsafe(30),
            "sessionToken": secrets.token_urlsafe(60),
            "expiration": int((time.time() + 3600) * 1000),
        }}
        return Response(json.dumps(body), status=200, content_type="application/json")


def moto_evaluable(policy: dict) -> dict:
    """The policy as moto can evaluate it. moto checks a statement's Resource only for S3 (every other
    service's call is checked against "*"), and it evaluates no Condition keys but the ones of a role's
    trust (a statement with any other Condition is treated as a Deny). So: S3 statements keep their
    resources, the others apply to "*", and conditions go. What moto then proves is that every call is
    allowed by an action the policy names, and every S3 call by the bucket and key prefix it names."""
    statements = policy.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    out = []
    for statement in statements:
        statement = {k: v for k, v in statement.items() if k != "Condition"}
        resources = statement.get("Resource", "*")
        resources = resources if isinstance(resources, list) else [resources]
        if not all(r == "*" or r.startswith(("arn:aws:s3:::", "arn:*:s3:::")) for r in resources):
            statement["Resource"] = "*"
        out.append(statement)
    return {"Version": "2012-10-17", "Statement": out}


class Iam:
    """IAM enforcement on (moto's `INITIAL_NO_AUTH_ACTION_COUNT` set to 0), with the emulator's own
    control calls signed by an administrator it creates first, and instance roles' credentials issued
    by STS so that moto finds the role's policy behind them (as EC2 does behind IMDS's credentials)."""

    def __init__(self) -> None:
        self.admin_keys: tuple[str, str] | None = None
        self.roles: set[str] = set()

    @staticmethod
    def _iam():
        from moto.iam.models import iam_backends

        return iam_backends[DEFAULT_ACCOUNT_ID]["aws"]

    def enforce(self, spec: dict) -> dict:
        """`spec`: {"users": {name: policy}, "roles": {name: policy}}. Returns each user's keys."""
        iam = self._iam()
        if self.admin_keys is None:
            iam.create_user("us-east-1", ADMIN_USER)
            iam.put_user_policy(ADMIN_USER, "admin", json.dumps(
                {"Version": "2012-10-17",
                 "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
            key = iam.create_access_key(ADMIN_USER, prefix="AKIA")
            self.admin_keys = (key.access_key_id, key.secret_access_key)
        keys = {}
        for name, policy in spec.get("users", {}).items():
            iam.create_user("us-east-1", name)
            iam.put_user_policy(name, "embark", json.dumps(moto_evaluable(policy)))
            key = iam.create_access_key(name, prefix="AKIA")
            keys[name] = {"access_key_id": key.access_key_id, "secret_access_key": key.secret_access_key}
        for name, policy in spec.get("roles", {}).items():
            iam.create_role(role_name=name, assume_role_policy_document=json.dumps(EC2_TRUST), path="/",
                            permissions_boundary=None, description="", tags=[],
                            max_session_duration=None)
            iam.put_role_policy(name, "embark", json.dumps(moto_evaluable(policy)))
            self.roles.add(name)
        # moto recomputes a query-API call's signature over the form as it re-encodes it (werkzeug has
        # consumed the body the client signed), which differs from the Rust SDK's encoding of a space or
        # a parenthesis: an SNS Publish with a subject fails SignatureDoesNotMatch although it is signed
        # right. What is proven here is permission, not signing: the signature is not checked (the
        # access key must still be one IAM or STS issued).
        from moto.iam.access_control import IAMRequestBase

        IAMRequestBase.check_signature = lambda _self: None
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
        return {"users": keys}

    @property
    def enforcing(self) -> bool:
        return settings.INITIAL_NO_AUTH_ACTION_COUNT == 0

    def reset(self) -> None:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
        self.admin_keys = None
        self.roles.clear()

    def role_credentials(self, role: str, session: str, region: str, lifetime: float) -> dict | None:
        """Credentials of an IAM role the emulator knows, issued by STS (moto then evaluates the role's
        policy for calls signed with them); None for a role it does not know."""
        if role not in self.roles:
            return None
        from moto.sts.models import sts_backends

        assumed = sts_backends[DEFAULT_ACCOUNT_ID]["aws"].assume_role(
            region, session, f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/{role}", None,
            int(lifetime), None)
        return {"AccessKeyId": assumed.access_key_id, "SecretAccessKey": assumed.secret_access_key,
                "Token": assumed.session_token}

    def denial(self, environ, body: bytes, params: dict, operation: str) -> Response | None:
        """For the calls the emulator answers itself (moto never sees them): the signer's policy must
        allow the action, as moto decides it for the calls it answers. The signature is moto's to check
        on every other call; here only the permission is."""
        if not self.enforcing:
            return None
        from moto.iam.access_control import IAMRequest
        from werkzeug.exceptions import HTTPException

        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        try:
            request = IAMRequest(account_id=DEFAULT_ACCOUNT_ID, method=environ.get("REQUEST_METHOD", "POST"),
                                 path=environ.get("PATH_INFO", "/"), data=params, body=body,
                                 headers=headers, action=operation)
            request.check_action_permitted("*")
        except HTTPException as err:
            return Response(err.get_body(), status=err.code, headers={"Content-Type": "text/xml"})
        return None
