"""The emulator's own tests: IMDS token rules, lifecycle states, fault injection, the request log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import boto3
import botocore.exceptions
import pytest
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"


@pytest.fixture(scope="module")
def emu():
    ready = os.path.join(tempfile.mkdtemp(), "ready.json")
    proc = subprocess.Popen([sys.executable, "-m", "embark_emulator", "--ready-file", ready],
                            cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        if os.path.exists(ready):
            break
        time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("emulator did not start within 30 s")
    with open(ready) as fh:
        info = json.load(fh)
    yield info
    proc.terminate()
    proc.wait(timeout=10)


def ctl(emu, method, path, body=None):
    r = requests.request(method, f"{emu['endpoint']}/_embark/{path}", json=body, timeout=30)
    return r


def aws(emu, service):
    return boto3.client(service, region_name="eu-west-1", endpoint_url=emu["endpoint"],
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}))


@pytest.fixture(scope="module")
def account(emu):
    r = ctl(emu, "POST", "seed", {"name": "pyweb", "heartbeat_timeout": 2, "pool_size": 3})
    assert r.status_code == 200, r.text
    return r.json()


def launch(emu, **spec):
    r = ctl(emu, "POST", "launch", spec)
    assert r.status_code == 200, r.text
    return r.json()[0]


def token(endpoint, ttl="60"):
    return requests.put(f"{endpoint}/latest/api/token", headers={TTL: ttl}, timeout=5)


# ---- IMDS token rules ----

def test_imds_requires_a_token(emu, account):
    inst = launch(emu, group="pyweb")
    r = requests.get(f"{inst['imds_endpoint']}/latest/meta-data/instance-id", timeout=5)
    assert r.status_code == 401
    r = requests.get(f"{inst['imds_endpoint']}/latest/meta-data/instance-id",
                     headers={TOKEN: "not-a-token"}, timeout=5)
    assert r.status_code == 401


@pytest.mark.parametrize("ttl", ["", "0", "21601", "abc"])
def test_imds_bad_ttl_is_400(emu, account, ttl):
    inst = launch(emu, group="pyweb")
    headers = {TTL: ttl} if ttl else {}
    r = requests.put(f"{inst['imds_endpoint']}/latest/api/token", headers=headers, timeout=5)
    assert r.status_code == 400


def test_imds_ttl_echoed_and_expiry(emu, account):
    inst = launch(emu, group="pyweb")
    r = token(inst["imds_endpoint"], "1")
    assert r.status_code == 200
    assert r.headers[TTL] == "1"
    url = f"{inst['imds_endpoint']}/latest/meta-data/instance-id"
    assert requests.get(url, headers={TOKEN: r.text}, timeout=5).text == inst["instance_id"]
    time.sleep(1.2)
    assert requests.get(url, headers={TOKEN: r.text}, timeout=5).status_code == 401


def test_imds_default_instance_answers_unprefixed_paths_as_on_ec2(emu, account):
    inst = launch(emu, group="pyweb")
    base = inst["imds_endpoint"].rsplit("/", 1)[0]
    assert token(base).status_code == 404, "no default instance: nothing at /latest"
    assert ctl(emu, "POST", "imds/default", {"instance_id": inst["instance_id"]}).status_code == 200
    try:
        tok = token(base).text
        r = requests.get(f"{base}/latest/meta-data/instance-id", headers={TOKEN: tok}, timeout=5)
        assert r.text == inst["instance_id"]
        # The prefixed form still answers for each instance.
        other = launch(emu, group="pyweb")
        tok = token(other["imds_endpoint"]).text
        r = requests.get(f"{other['imds_endpoint']}/latest/meta-data/instance-id",
                         headers={TOKEN: tok}, timeout=5)
        assert r.text == other["instance_id"]
    finally:
        ctl(emu, "POST", "imds/default", {"instance_id": None})
    assert token(base).status_code == 404


def test_token_of_one_instance_is_refused_by_another(emu, account):
    a = launch(emu, group="pyweb")
    b = launch(emu, group="pyweb")
    tok = token(a["imds_endpoint"]).text
    r = requests.get(f"{b['imds_endpoint']}/latest/meta-data/instance-id", headers={TOKEN: tok}, timeout=5)
    assert r.status_code == 401


def test_imds_consistent_with_ec2(emu, account):
    inst = launch(emu, group="pyweb", az="eu-west-1b")
    tok = token(inst["imds_endpoint"]).text

    def md(path):
        r = requests.get(f"{inst['imds_endpoint']}/latest/meta-data/{path}", headers={TOKEN: tok}, timeout=5)
        return r.status_code, r.text

    desc = aws(emu, "ec2").describe_instances(InstanceIds=[inst["instance_id"]])
    ec2_inst = desc["Reservations"][0]["Instances"][0]
    zones = {z["ZoneName"]: z["ZoneId"] for z in
             aws(emu, "ec2").describe_availability_zones()["AvailabilityZones"]}
    assert md("instance-id") == (200, inst["instance_id"])
    assert md("placement/availability-zone") == (200, "eu-west-1b")
    assert md("placement/availability-zone-id") == (200, zones["eu-west-1b"])
    assert md("placement/region") == (200, "eu-west-1")
    assert md("local-ipv4") == (200, ec2_inst["PrivateIpAddress"])
    assert md("instance-type") == (200, ec2_inst["InstanceType"])
    assert md("tags/instance/aws:autoscaling:groupName") == (200, "pyweb")
    assert md("tags/instance/embark:eip-pool") == (200, "pyweb")
    assert md("autoscaling/target-lifecycle-state") == (200, "InService")
    assert md("no/such/path")[0] == 404


def test_public_ip_follows_elastic_ip_association(emu, account):
    inst = launch(emu, group="pyweb")
    tok = token(inst["imds_endpoint"]).text
    ec2 = aws(emu, "ec2")
    alloc = ec2.allocate_address(Domain="vpc")
    ec2.associate_address(AllocationId=alloc["AllocationId"], InstanceId=inst["instance_id"])
    r = requests.get(f"{inst['imds_endpoint']}/latest/meta-data/public-ipv4", headers={TOKEN: tok}, timeout=5)
    assert r.text == alloc["PublicIp"]


def test_metadata_tags_disabled_and_endpoint_disabled(emu, account):
    inst = launch(emu, group="pyweb", metadata_tags=False)
    tok = token(inst["imds_endpoint"]).text
    r = requests.get(f"{inst['imds_endpoint']}/latest/meta-data/tags/instance", headers={TOKEN: tok}, timeout=5)
    assert r.status_code == 404
    ctl(emu, "POST", f"instances/{inst['instance_id']}", {"http_endpoint": "disabled"})
    assert token(inst["imds_endpoint"]).status_code == 403


def test_instance_outside_group(emu, account):
    inst = launch(emu, az="eu-west-1a", tags={"Name": "manual"})
    tok = token(inst["imds_endpoint"]).text
    r = requests.get(f"{inst['imds_endpoint']}/latest/meta-data/tags/instance", headers={TOKEN: tok}, timeout=5)
    assert r.text == "Name"
    r = requests.get(f"{inst['imds_endpoint']}/latest/meta-data/autoscaling/target-lifecycle-state",
                     headers={TOKEN: tok}, timeout=5)
    assert r.status_code == 404


def test_imds_unavailable_then_back(emu, account):
    inst = launch(emu, group="pyweb")
    assert ctl(emu, "POST", "imds/unavailable", {"seconds": 1.5}).status_code == 200
    with pytest.raises(requests.ConnectionError):
        token(inst["imds_endpoint"])
    time.sleep(2.5)
    assert token(inst["imds_endpoint"]).status_code == 200


# ---- lifecycle ----

def group_state(emu, iid):
    return ctl(emu, "GET", f"instances/{iid}").json()["lifecycle_state"]


def test_launching_hook_waits_then_continue(emu, account):
    inst = launch(emu, group="pyweb")
    assert inst["lifecycle_state"] == "Pending:Wait"
    asg = aws(emu, "autoscaling")
    desc = asg.describe_auto_scaling_instances(InstanceIds=[inst["instance_id"]])
    assert desc["AutoScalingInstances"][0]["LifecycleState"] == "Pending:Wait"
    asg.complete_lifecycle_action(LifecycleHookName=account["hook"], AutoScalingGroupName="pyweb",
                                  InstanceId=inst["instance_id"], LifecycleActionResult="CONTINUE")
    assert group_state(emu, inst["instance_id"]) == "InService"
    with pytest.raises(botocore.exceptions.ClientError) as err:
        asg.complete_lifecycle_action(LifecycleHookName=account["hook"], AutoScalingGroupName="pyweb",
                                      InstanceId=inst["instance_id"], LifecycleActionResult="CONTINUE")
    assert err.value.response["Error"]["Code"] == "ValidationError"


def test_abandon_terminates(emu, account):
    inst = launch(emu, group="pyweb")
    aws(emu, "autoscaling").complete_lifecycle_action(
        LifecycleHookName=account["hook"], AutoScalingGroupName="pyweb",
        InstanceId=inst["instance_id"], LifecycleActionResult="ABANDON")
    ec2 = aws(emu, "ec2").describe_instances(InstanceIds=[inst["instance_id"]])
    assert ec2["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
    members = aws(emu, "autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=["pyweb"])
    ids = [i["InstanceId"] for i in members["AutoScalingGroups"][0]["Instances"]]
    assert inst["instance_id"] not in ids


def test_heartbeat_timeout_applies_default_result_and_heartbeat_extends(emu, account):
    # The hook's heartbeat timeout is 2 s and its default result ABANDON.
    idle = launch(emu, group="pyweb")
    beating = launch(emu, group="pyweb")
    asg = aws(emu, "autoscaling")
    for _ in range(6):
        time.sleep(0.5)
        asg.record_lifecycle_action_heartbeat(LifecycleHookName=account["hook"],
                                              AutoScalingGroupName="pyweb",
                                              InstanceId=beating["instance_id"])
    assert group_state(emu, beating["instance_id"]) == "Pending:Wait"
    history = {h["instance_id"]: h for h in ctl(emu, "GET", "lifecycle").json()}
    assert history[idle["instance_id"]]["result"] == "ABANDON"
    assert history[idle["instance_id"]]["timed_out"] is True
    asg.complete_lifecycle_action(LifecycleHookName=account["hook"], AutoScalingGroupName="pyweb",
                                  InstanceId=beating["instance_id"], LifecycleActionResult="CONTINUE")
    assert group_state(emu, beating["instance_id"]) == "InService"


# ---- faults, throttling, request log ----

def test_fault_count_then_success(emu, account):
    ctl(emu, "DELETE", "faults")
    ctl(emu, "POST", "faults", {"service": "ec2", "operation": "DescribeAddresses", "status": 500,
                                "code": "InternalError", "count": 2})
    ec2 = aws(emu, "ec2")
    for _ in range(2):
        with pytest.raises(botocore.exceptions.ClientError) as err:
            ec2.describe_addresses()
        assert err.value.response["Error"]["Code"] == "InternalError"
    assert "Addresses" in ec2.describe_addresses()
    ctl(emu, "DELETE", "faults")


def test_fault_path_glob_matches_only_its_keys(emu, account):
    s3 = aws(emu, "s3")
    s3.create_bucket(Bucket="globbed", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    ctl(emu, "DELETE", "faults")
    ctl(emu, "POST", "faults", {"service": "s3", "operation": "PutObject", "status": 500,
                                "path": "/globbed/app/ready/*/_go-*", "count": 100})
    s3.put_object(Bucket="globbed", Key="app/ready/r1/i-123", Body=b"{}")
    s3.put_object(Bucket="globbed", Key="app/ready/r1/_members-abc", Body=b"{}")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        s3.put_object(Bucket="globbed", Key="app/ready/r1/_go-abc", Body=b"{}")
    ctl(emu, "DELETE", "faults")
    assert err.value.response["Error"]["Code"] == "InternalError"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="globbed", Prefix="app/")["Contents"]]
    assert keys == ["app/ready/r1/_members-abc", "app/ready/r1/i-123"]


def test_fault_fraction(emu, account):
    ctl(emu, "DELETE", "faults")
    ctl(emu, "POST", "faults", {"service": "s3", "operation": "ListBuckets", "status": 503,
                                "code": "SlowDown", "fraction": 0.5})
    s3 = aws(emu, "s3")
    failures = 0
    for _ in range(60):
        try:
            s3.list_buckets()
        except botocore.exceptions.ClientError:
            failures += 1
    ctl(emu, "DELETE", "faults")
    assert 10 <= failures <= 50


def test_latency(emu, account):
    ctl(emu, "DELETE", "faults")
    ctl(emu, "POST", "faults", {"service": "ec2", "operation": "DescribeRegions", "latency_ms": 300})
    ctl(emu, "DELETE", "requests")
    aws(emu, "ec2").describe_regions()
    ctl(emu, "DELETE", "faults")
    log = [e for e in ctl(emu, "GET", "requests").json() if e["operation"] == "DescribeRegions"]
    assert len(log) == 1 and log[0]["status"] == 200


def test_throttling_uses_service_code(emu, account):
    ctl(emu, "DELETE", "faults")
    ctl(emu, "POST", "throttle", {"service": "ec2", "operation": "DescribeAddresses", "rps": 2})
    ec2 = aws(emu, "ec2")
    codes = []
    for _ in range(6):
        try:
            ec2.describe_addresses()
            codes.append("ok")
        except botocore.exceptions.ClientError as err:
            codes.append(err.response["Error"]["Code"])
    ctl(emu, "DELETE", "faults")
    assert codes[:2] == ["ok", "ok"]
    assert "RequestLimitExceeded" in codes


def test_imds_fault_count(emu, account):
    inst = launch(emu, group="pyweb")
    ctl(emu, "POST", "faults", {"service": "imds", "instance": inst["instance_id"], "status": 500,
                                "count": 3})
    statuses = [token(inst["imds_endpoint"]).status_code for _ in range(4)]
    ctl(emu, "DELETE", "faults")
    assert statuses == [500, 500, 500, 200]


def test_request_log_records_operations(emu, account):
    ctl(emu, "DELETE", "requests")
    aws(emu, "ec2").describe_addresses(Filters=[{"Name": "tag:embark:pool", "Values": ["pyweb"]}])
    aws(emu, "s3").list_objects_v2(Bucket=account["bucket"])
    ops = [(e["service"], e["operation"]) for e in ctl(emu, "GET", "requests").json()]
    assert ("ec2", "DescribeAddresses") in ops
    assert ("s3", "ListObjectsV2") in ops


def test_seeded_account(emu, account):
    ec2 = aws(emu, "ec2")
    pool = ec2.describe_addresses(Filters=[{"Name": "tag:embark:pool", "Values": ["pyweb"]}])
    assert len(pool["Addresses"]) == 3
    mts = aws(emu, "efs").describe_mount_targets(FileSystemId=account["file_system_id"])
    assert {m["AvailabilityZoneId"] for m in mts["MountTargets"]} == \
        {s["availability_zone_id"] for s in account["subnets"]}
    sns = aws(emu, "sns")
    sns.publish(TopicArn=account["topics"]["ok"]["topic_arn"], Subject="hello", Message="body")
    msgs = aws(emu, "sqs").receive_message(QueueUrl=account["topics"]["ok"]["queue_url"],
                                           WaitTimeSeconds=1)
    assert json.loads(msgs["Messages"][0]["Body"])["Subject"] == "hello"


def test_loopback_only():
    r = subprocess.run([sys.executable, "-m", "embark_emulator", "--host", "0.0.0.0"], cwd=HERE,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "loopback" in r.stderr


# ---- EC2 as AWS documents it where moto is more forgiving ----

def test_associate_without_allow_reassociation_reassociates_as_ec2_does(emu):
    # AssociateAddress: in a VPC "reassociation is automatic" unless AllowReassociation=false.
    ec2 = aws(emu, "ec2")
    alloc = ctl(emu, "POST", "addresses", {"count": 1, "pool": "steal"}).json()[0]["allocation_id"]
    first, second = launch(emu, az="eu-west-1a"), launch(emu, az="eu-west-1a")
    ec2.associate_address(AllocationId=alloc, InstanceId=first["instance_id"])
    ec2.associate_address(AllocationId=alloc, InstanceId=second["instance_id"])
    now = ec2.describe_addresses(AllocationIds=[alloc])["Addresses"][0]
    assert now["InstanceId"] == second["instance_id"]
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ec2.associate_address(AllocationId=alloc, InstanceId=first["instance_id"], AllowReassociation=False)
    assert err.value.response["Error"]["Code"] == "Resource.AlreadyAssociated"


def test_an_instance_with_several_interfaces_refuses_an_instance_id_alone(emu):
    ec2 = aws(emu, "ec2")
    alloc = ctl(emu, "POST", "addresses", {"count": 1, "pool": "enis"}).json()[0]["allocation_id"]
    inst = launch(emu, az="eu-west-1a", extra_enis=1)
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ec2.associate_address(AllocationId=alloc, InstanceId=inst["instance_id"], AllowReassociation=False)
    assert err.value.response["Error"]["Code"] == "InvalidInstanceID"
    base = inst["imds_endpoint"]
    token = requests.put(f"{base}/latest/api/token", headers={TTL: "60"}, timeout=5).text
    macs = requests.get(f"{base}/latest/meta-data/network/interfaces/macs/", headers={TOKEN: token},
                        timeout=5).text.split()
    assert len(macs) == 2
    primary = requests.get(f"{base}/latest/meta-data/mac", headers={TOKEN: token}, timeout=5).text
    eni = requests.get(f"{base}/latest/meta-data/network/interfaces/macs/{primary}/interface-id",
                       headers={TOKEN: token}, timeout=5).text
    ec2.associate_address(AllocationId=alloc, NetworkInterfaceId=eni, AllowReassociation=False)
    assert ec2.describe_addresses(AllocationIds=[alloc])["Addresses"][0]["NetworkInterfaceId"] == eni


def test_describe_addresses_can_lag_behind_an_association(emu):
    ec2 = aws(emu, "ec2")
    alloc = ctl(emu, "POST", "addresses", {"count": 1, "pool": "lagging"}).json()[0]["allocation_id"]
    inst = launch(emu, az="eu-west-1a")
    ctl(emu, "POST", "consistency", {"describe_addresses_lag_ms": 1500})
    try:
        ec2.associate_address(AllocationId=alloc, InstanceId=inst["instance_id"], AllowReassociation=False)
        assert "InstanceId" not in ec2.describe_addresses(AllocationIds=[alloc])["Addresses"][0]
        time.sleep(1.6)
        assert ec2.describe_addresses(AllocationIds=[alloc])["Addresses"][0]["InstanceId"] == inst["instance_id"]
    finally:
        ctl(emu, "POST", "consistency", {"describe_addresses_lag_ms": 0})


# ---- KMS signing, as embark's signed releases use it (docs/signing.md) ----
def test_a_kms_raw_signature_verifies_with_a_verifier_that_is_not_embark(emu):
    """moto's KMS `Sign` with MessageType=RAW and ECDSA_SHA_256 hashes the message with SHA-256 and
    signs it, as KMS does (https://docs.aws.amazon.com/kms/latest/APIReference/API_Sign.html); the
    signature is DER and verifies with the key's SPKI public key in Python's `cryptography`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    r = ctl(emu, "POST", "kms", {"alias": "pytest-signing"})
    assert r.status_code == 200, r.text
    key = r.json()
    public = serialization.load_pem_public_key(key["public_key_pem"].encode())
    message = b"embark-signature/1\nsource: s3://b/app\nrelease: 20261127T101010Z-abcdef\n"
    kms = aws(emu, "kms")
    signed = kms.sign(KeyId="alias/pytest-signing", Message=message, MessageType="RAW",
                      SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    public.verify(signed, message, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public.verify(signed, message + b"x", ec.ECDSA(hashes.SHA256()))


def test_the_sso_portal_answers_signed_in_tokens_only(emu):
    ctl(emu, "POST", "sso", {"token": "tok-1", "account_id": "123456789012", "role_name": "Dev"})
    url = f"{emu['endpoint']}/federation/credentials?role_name=Dev&account_id=123456789012"
    ok = requests.get(url, headers={"x-amz-sso_bearer_token": "tok-1"}, timeout=5)
    assert ok.status_code == 200, ok.text
    assert ok.json()["roleCredentials"]["accessKeyId"].startswith("ASIA")
    bad = requests.get(url, headers={"x-amz-sso_bearer_token": "tok-2"}, timeout=5)
    assert bad.status_code == 401 and bad.headers["x-amzn-ErrorType"] == "UnauthorizedException"
    other = requests.get(url.replace("Dev", "Admin"), headers={"x-amz-sso_bearer_token": "tok-1"}, timeout=5)
    assert other.status_code == 404


def test_ranged_gets_read_only_their_range_and_answer_as_s3_does(emu):
    """A single-range GET is served from the range alone (embark_emulator/ranges.py), with S3's answer:
    206, Content-Range with the whole size, the object's ETag, If-Match honoured, 416 past the end; a
    GET without a range, or with several, is the whole object as before."""
    import botocore.exceptions

    s3 = aws(emu, "s3")
    s3.create_bucket(Bucket="pyranges", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    body = bytes(range(256)) * 40_000  # 10,240,000 bytes
    etag = s3.put_object(Bucket="pyranges", Key="big", Body=body)["ETag"]
    got = s3.get_object(Bucket="pyranges", Key="big", Range="bytes=5000000-5999999")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == f"bytes 5000000-5999999/{len(body)}"
    assert got["ETag"] == etag
    assert got["Body"].read() == body[5_000_000:6_000_000]
    tail = s3.get_object(Bucket="pyranges", Key="big", Range="bytes=10000000-20000000", IfMatch=etag)
    assert tail["ContentRange"] == f"bytes 10000000-{len(body) - 1}/{len(body)}"
    assert tail["Body"].read() == body[10_000_000:]
    with pytest.raises(botocore.exceptions.ClientError) as failed:
        s3.get_object(Bucket="pyranges", Key="big", Range="bytes=0-9", IfMatch='"another"')
    assert failed.value.response["Error"]["Code"] == "PreconditionFailed"
    with pytest.raises(botocore.exceptions.ClientError) as past:
        s3.get_object(Bucket="pyranges", Key="big", Range=f"bytes={len(body)}-")
    assert past.value.response["Error"]["Code"] == "InvalidRange"
    assert s3.get_object(Bucket="pyranges", Key="big")["Body"].read() == body
    several = s3.get_object(Bucket="pyranges", Key="big", Range="bytes=0-9,20-29")
    assert several["Body"].read() == body
