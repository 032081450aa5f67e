"""A ready-made account: subnets in two zones, a group with a launching hook and embark tags, a pool of
tagged Elastic IPs, an EFS file system with mount targets, a bucket, and SNS topics with SQS queues
subscribed so that tests can read what was published.

Created through the emulator's own API with boto3, so every resource is exactly what an AWS call makes.
"""

from __future__ import annotations

import boto3


# The control API's own calls carry this in their user agent: the emulator neither faults, throttles
# nor logs them (a test's setup and checks must not be disturbed by the faults it injects).
CONTROL_AGENT = "embark-emulator-control"


def client(emulator, service: str, region: str):
    from botocore.config import Config

    # With IAM enforcement on, the control calls are signed by the emulator's own administrator.
    key, secret = emulator.iam.admin_keys or ("testing", "testing")
    return boto3.client(service, region_name=region, endpoint_url=emulator.endpoint,
                        aws_access_key_id=key, aws_secret_access_key=secret,
                        config=Config(user_agent_extra=CONTROL_AGENT))


def seed(emulator, spec: dict) -> dict:
    region = spec.get("region", emulator.default_region)
    name = spec.get("name", "web")
    pool = spec.get("pool", name)
    pool_size = int(spec.get("pool_size", 4))
    hook_timeout = int(spec.get("heartbeat_timeout", 300))
    with_hook = bool(spec.get("lifecycle_hook", True))
    extra_tags = spec.get("group_tags", {})
    # PropagateAtLaunch=false: the group has the tags, its instances do not (a common mistake).
    propagate = bool(spec.get("propagate_tags", True))
    bucket = spec.get("bucket", f"{name}-deploy")

    ec2 = client(emulator, "ec2", region)
    zones = [z for z in ec2.describe_availability_zones()["AvailabilityZones"]][:2]
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnets = []
    for i, zone in enumerate(zones):
        sub = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{i}.0/24",
                                AvailabilityZone=zone["ZoneName"])["Subnet"]
        subnets.append({"subnet_id": sub["SubnetId"], "availability_zone": zone["ZoneName"],
                        "availability_zone_id": zone["ZoneId"]})

    addresses = []
    for _ in range(pool_size):
        alloc = ec2.allocate_address(Domain="vpc", TagSpecifications=[{
            "ResourceType": "elastic-ip", "Tags": [{"Key": "embark:pool", "Value": pool}]}])
        addresses.append({"allocation_id": alloc["AllocationId"], "public_ip": alloc["PublicIp"]})

    image = ec2.describe_images()["Images"][0]["ImageId"]
    template = ec2.create_launch_template(
        LaunchTemplateName=f"{name}-lt",
        LaunchTemplateData={"ImageId": image, "InstanceType": "t3.micro"})["LaunchTemplate"]

    asg = client(emulator, "autoscaling", region)
    tags = {"embark:eip-pool": pool, "embark:role": name, **extra_tags}
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name, MinSize=0, MaxSize=256, DesiredCapacity=0,
        LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"], "Version": "$Latest"},
        VPCZoneIdentifier=",".join(s["subnet_id"] for s in subnets),
        Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": propagate, "ResourceId": name,
               "ResourceType": "auto-scaling-group"} for k, v in tags.items()])
    hook = None
    if with_hook:
        hook = f"{name}-launching"
        asg.put_lifecycle_hook(LifecycleHookName=hook, AutoScalingGroupName=name,
                               LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING",
                               HeartbeatTimeout=hook_timeout, DefaultResult="ABANDON")
    if spec.get("terminating_hook"):
        asg.put_lifecycle_hook(LifecycleHookName=f"{name}-terminating", AutoScalingGroupName=name,
                               LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
                               HeartbeatTimeout=int(spec.get("terminating_timeout", 300)),
                               DefaultResult="CONTINUE")
    # Another team's launching hooks on the same group (a Lambda doing DNS, say).
    for other in spec.get("extra_launching_hooks", []):
        asg.put_lifecycle_hook(LifecycleHookName=other, AutoScalingGroupName=name,
                               LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING",
                               HeartbeatTimeout=hook_timeout, DefaultResult="CONTINUE")

    efs = client(emulator, "efs", region)
    fs = efs.create_file_system(CreationToken=f"{name}-fs")["FileSystemId"]
    mount_targets = []
    for sub in subnets:
        mt = efs.create_mount_target(FileSystemId=fs, SubnetId=sub["subnet_id"])
        mount_targets.append({"mount_target_id": mt["MountTargetId"], "ip": mt["IpAddress"],
                              "availability_zone_id": mt.get("AvailabilityZoneId")})

    s3 = client(emulator, "s3", region)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})

    sns = client(emulator, "sns", region)
    sqs = client(emulator, "sqs", region)
    topics = {}
    for kind in ("ok", "error"):
        arn = sns.create_topic(Name=f"{name}-deploy-{kind}")["TopicArn"]
        url = sqs.create_queue(QueueName=f"{name}-deploy-{kind}")["QueueUrl"]
        qarn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn,
                      Attributes={"RawMessageDelivery": "false"})
        topics[kind] = {"topic_arn": arn, "queue_url": url}

    return {"region": region, "vpc_id": vpc, "subnets": subnets, "group": name, "hook": hook,
            "pool": pool, "addresses": addresses, "file_system_id": fs,
            "mount_targets": mount_targets, "bucket": bucket, "topics": topics}


def allocate(emulator, spec: dict) -> list[dict]:
    """Elastic IPs, tagged `embark:pool=<pool>` (and `embark:az=<az>`) when asked."""
    ec2 = client(emulator, "ec2", spec.get("region", emulator.default_region))
    tags = []
    if spec.get("pool"):
        tags.append({"Key": "embark:pool", "Value": spec["pool"]})
    if spec.get("az"):
        tags.append({"Key": "embark:az", "Value": spec["az"]})
    out = []
    for _ in range(int(spec.get("count", 1))):
        kwargs = {"Domain": "vpc"}
        if tags:
            kwargs["TagSpecifications"] = [{"ResourceType": "elastic-ip", "Tags": tags}]
        alloc = ec2.allocate_address(**kwargs)
        out.append({"allocation_id": alloc["AllocationId"], "public_ip": alloc["PublicIp"]})
    return out


def addresses(emulator, pool: str | None, region: str) -> list[dict]:
    ec2 = client(emulator, "ec2", region)
    kwargs = {"Filters": [{"Name": "tag:embark:pool", "Values": [pool]}]} if pool else {}
    out = []
    for a in ec2.describe_addresses(**kwargs)["Addresses"]:
        out.append({"allocation_id": a["AllocationId"], "public_ip": a["PublicIp"],
                    "instance_id": a.get("InstanceId") or None,
                    "association_id": a.get("AssociationId") or None,
                    "tags": {t["Key"]: t["Value"] for t in a.get("Tags", [])}})
    return out


def disassociate(emulator, spec: dict) -> None:
    ec2 = client(emulator, "ec2", spec.get("region", emulator.default_region))
    addr = ec2.describe_addresses(AllocationIds=[spec["allocation_id"]])["Addresses"][0]
    ec2.disassociate_address(AssociationId=addr["AssociationId"])


def _subnet_in(emulator, region: str, az: str) -> str:
    ec2 = client(emulator, "ec2", region)
    subnets = ec2.describe_subnets(Filters=[{"Name": "availability-zone", "Values": [az]},
                                            {"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    return subnets[0]["SubnetId"]


def file_system(emulator, spec: dict) -> dict:
    """A file system with mount targets in the given zones (none: a file system without any yet)."""
    region = spec.get("region", emulator.default_region)
    efs = client(emulator, "efs", region)
    extra = {}
    if spec.get("one_zone"):
        # EFS One Zone: the file system (and its only mount target) lives in one zone.
        extra["AvailabilityZoneName"] = spec["one_zone"]
    fs = efs.create_file_system(CreationToken=spec.get("token", f"fs-{len(str(spec))}-{id(spec)}"),
                                **extra)
    targets = [mount_target(emulator, {"file_system_id": fs["FileSystemId"], "az": az, "region": region})
               for az in spec.get("zones", [])]
    return {"file_system_id": fs["FileSystemId"], "mount_targets": targets}


def mount_target(emulator, spec: dict) -> dict:
    region = spec.get("region", emulator.default_region)
    efs = client(emulator, "efs", region)
    mt = efs.create_mount_target(FileSystemId=spec["file_system_id"],
                                 SubnetId=_subnet_in(emulator, region, spec["az"]))
    return {"mount_target_id": mt["MountTargetId"], "ip": mt["IpAddress"],
            "availability_zone_id": mt.get("AvailabilityZoneId")}


def bucket(emulator, spec: dict) -> dict:
    region = spec.get("region", emulator.default_region)
    s3 = client(emulator, "s3", region)
    kwargs = {"Bucket": spec["name"]}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**kwargs)
    return {"bucket": spec["name"], "region": region}


def _s3_backend():
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


def s3_bucket(name: str):
    """moto's bucket of that name (it knows its region), or None."""
    return _s3_backend().buckets.get(name)


def s3_object(emulator, method: str, path: str, request):
    """Objects read and written behind embark's back: straight in moto's backend, so neither the
    request log nor the fault rules see them."""
    from werkzeug.wrappers import Response

    from .server import json_response

    backend = _s3_backend()
    bucket_name, _, key = path.partition("/")
    if method == "GET" and not key:
        prefix = request.args.get("prefix", "")
        bucket = backend.get_bucket(bucket_name)
        keys = sorted(k for k in bucket.keys.keys() if k.startswith(prefix))
        return json_response(keys)
    if method == "PUT":
        backend.put_object(bucket_name, key, request.get_data())
        return json_response({"ok": True})
    if method == "DELETE":
        backend.delete_object(bucket_name, key)
        return json_response({"ok": True})
    obj = backend.get_object(bucket_name, key)
    if obj is None:
        return json_response({"error": f"no object {key}"}, 404)
    return Response(obj.value, status=200, content_type="application/octet-stream")


def target_group(emulator, spec: dict) -> dict:
    """A target group (instance targets) in the default VPC: for instances outside a group."""
    region = spec.get("region", emulator.default_region)
    ec2 = client(emulator, "ec2", region)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    elb = client(emulator, "elbv2", region)
    tg = elb.create_target_group(Name=spec["name"], Protocol="HTTP", Port=80, VpcId=vpc,
                                 TargetType="instance")["TargetGroups"][0]
    return {"arn": tg["TargetGroupArn"]}


def targets(emulator, arn: str, region: str) -> list[dict]:
    elb = client(emulator, "elbv2", region)
    health = elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
    return [{"id": t["Target"]["Id"], "port": t["Target"].get("Port")} for t in health]


def messages(emulator, queue_url: str, region: str) -> list[dict]:
    """Everything waiting in an SQS queue (SNS envelopes decoded), removed from the queue."""
    import json as _json

    sqs = client(emulator, "sqs", region)
    out = []
    for _ in range(20):
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        batch = got.get("Messages", [])
        if not batch:
            break
        for m in batch:
            body = m["Body"]
            try:
                envelope = _json.loads(body)
                out.append({"subject": envelope.get("Subject"), "message": envelope.get("Message")})
            except ValueError:
                out.append({"subject": None, "message": body})
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    return out


def signing_key(emulator, spec: dict) -> dict:
    """A KMS asymmetric signing key (ECC_NIST_P256, SIGN_VERIFY) with an alias, as a release publisher
    creates one (docs/signing.md); its public key as SPKI PEM, what instances are given to trust."""
    import base64

    region = spec.get("region", emulator.default_region)
    kms = client(emulator, "kms", region)
    key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY",
                         Description=spec.get("description", "embark release signing"))["KeyMetadata"]
    alias = spec.get("alias")
    if alias:
        kms.create_alias(AliasName=f"alias/{alias}", TargetKeyId=key["KeyId"])
    der = kms.get_public_key(KeyId=key["KeyId"])["PublicKey"]
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    pem = "-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n"
    return {"key_id": key["KeyId"], "arn": key["Arn"], "alias": f"alias/{alias}" if alias else None,
            "public_key_pem": pem}
