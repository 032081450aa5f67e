"""What moto lacks for Auto Scaling: launch lifecycle hooks and the instances the emulator launched.

An instance launched into a group with an `autoscaling:EC2_INSTANCE_LAUNCHING` hook waits in
`Pending:Wait` until `CompleteLifecycleAction` (CONTINUE -> InService, ABANDON -> terminated) or until the
hook's heartbeat timeout passes, when the hook's DefaultResult applies. `RecordLifecycleActionHeartbeat`
restarts the timeout, as AWS documents.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

from moto.autoscaling.models import autoscaling_backends
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends

LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
ACCOUNT = DEFAULT_ACCOUNT_ID


class LifecycleError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class LifecycleAction:
    instance_id: str
    region: str
    group: str
    hook: str
    token: str
    heartbeat_timeout: float
    default_result: str
    deadline: float
    heartbeats: int = 0
    result: str | None = None
    timed_out: bool = False
    transition: str = LAUNCHING


@dataclass
class Member:
    instance_id: str
    region: str
    group: str | None
    metadata_tags: bool = True
    http_endpoint: str = "enabled"
    # IMDS spot/instance-action and events/recommendations/rebalance, when a notice was given.
    spot_action: dict | None = None
    rebalance: dict | None = None
    # An instance profile: IMDS serves its role's credentials, rotating them halfway through their
    # lifetime, as EC2 does ahead of expiry
    # (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-categories.html, iam/).
    role: str | None = None
    # A warm pool's state for IMDS (`Warmed:Stopped`, `Warmed:Running`, …) when the group is taking the
    # instance (back) into its warm pool; moto has no warm pools.
    warmed: str | None = None
    credential_lifetime: float = 3600.0
    credentials: dict | None = None
    credentials_issued: float = 0.0


class Fleet:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.actions: dict[str, LifecycleAction] = {}
        self.members: dict[str, Member] = {}
        self.history: list[dict] = []
        # Issues a role's credentials through STS when IAM enforcement knows the role (identity.Iam).
        self.issuer = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._expire_loop, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self.lock:
            self.actions.clear()
            self.members.clear()
            self.history.clear()

    # ---- backends ----
    @staticmethod
    def ec2(region: str):
        return ec2_backends[ACCOUNT][region]

    @staticmethod
    def asg(region: str):
        return autoscaling_backends[ACCOUNT][region]

    def instance_state(self, region: str, instance_id: str):
        for group in self.asg(region).autoscaling_groups.values():
            for state in group.instance_states:
                if state.instance.id == instance_id:
                    return group, state
        return None, None

    def terminating_hook(self, region: str, group: str):
        for hook in self.asg(region).describe_lifecycle_hooks(group):
            if hook.lifecycle_transition == TERMINATING:
                return hook
        return None

    def launching_hook(self, region: str, group: str):
        for hook in self.asg(region).describe_lifecycle_hooks(group):
            if hook.lifecycle_transition == LAUNCHING:
                return hook
        return None

    # ---- launching ----
    def launch(self, region: str, group: str | None, az: str | None, count: int,
               tags: dict[str, str], metadata_tags: bool, instance_type: str,
               extra_enis: int = 0, role: str | None = None,
               credential_lifetime: float = 3600.0, warm_pool: str | None = None) -> list[dict]:
        ec2 = self.ec2(region)
        asg = self.asg(region)
        with self.lock:
            grp = None
            all_tags = dict(tags)
            subnets = []
            if group:
                if group not in asg.autoscaling_groups:
                    raise LifecycleError("ValidationError", f"group {group} not found")
                grp = asg.autoscaling_groups[group]
                all_tags = {**grp.get_propagated_tags(), **tags}
                all_tags["aws:autoscaling:groupName"] = group
                if grp.vpc_zone_identifier:
                    subnets = [ec2.get_subnet(s) for s in grp.vpc_zone_identifier.split(",") if s]
            if not subnets:
                subnets = list(ec2.describe_subnets())
            if az:
                subnets = [s for s in subnets if s.availability_zone == az or
                           getattr(s, "availability_zone_id", None) == az]
                if not subnets:
                    raise LifecycleError("ValidationError", f"no subnet in availability zone {az}")
            image_id = next(iter(ec2.describe_images()), None)
            image_id = image_id.id if image_id else "ami-12c6146b"
            out = []
            for i in range(count):
                subnet = subnets[(len(self.members) + i) % len(subnets)]
                reservation = ec2.run_instances(
                    image_id, 1, "", [], instance_type=instance_type,
                    tags={"instance": all_tags} if all_tags else {},
                    placement=subnet.availability_zone, subnet_id=subnet.id,
                    is_instance_type_default=False,
                )
                inst = reservation.instances[0]
                for index in range(1, extra_enis + 1):
                    eni = ec2.create_network_interface(subnet, None)
                    ec2.attach_network_interface(eni.id, inst.id, index)
                self.members[inst.id] = Member(inst.id, region, group, metadata_tags, role=role,
                                               credential_lifetime=credential_lifetime,
                                               warmed=warm_pool)
                state = "InService"
                if grp is not None:
                    grp.max_size = max(grp.max_size or 0, len(grp.instance_states) + 1)
                    asg.attach_instances(group, [inst.id])
                    hook = self.launching_hook(region, group)
                    _, istate = self.instance_state(region, inst.id)
                    if hook is not None:
                        # Launched into a warm pool, the hook's action comes at Warmed:Pending:Wait.
                        state = "Warmed:Pending:Wait" if warm_pool else "Pending:Wait"
                        self._wait(region, group, inst.id, hook, state)
                    elif warm_pool:
                        istate.lifecycle_state = state = warm_pool
                out.append({"instance_id": inst.id, "availability_zone": subnet.availability_zone,
                            "lifecycle_state": state, "group": group})
            return out

    def _wait(self, region: str, group: str, instance_id: str, hook, state: str) -> None:
        """A new launching action: the instance waits in `state` until it completes or times out."""
        _, istate = self.instance_state(region, instance_id)
        istate.lifecycle_state = state
        timeout = float(hook.heartbeat_timeout)
        self.actions[instance_id] = LifecycleAction(
            instance_id, region, group, hook.name, str(uuid.uuid4()), timeout,
            hook.default_result, time.monotonic() + timeout)

    def set_warm(self, instance_id: str, warmed: str | None) -> None:
        """The group takes the instance into its warm pool (`warmed`: Warmed:Stopped, …) or out of it
        (None). Either way the launching hook fires again, for the same instance id: at
        Warmed:Pending:Wait going in, at Pending:Wait coming out
        (https://docs.aws.amazon.com/autoscaling/ec2/userguide/warm-pool-instance-lifecycle.html)."""
        with self.lock:
            member = self.members[instance_id]
            was = member.warmed
            member.warmed = warmed
            if was == warmed or member.group is None:
                return
            action = self.actions.get(instance_id)
            if action is not None and action.result is None:
                return  # the action under way (the instance never finished launching) stays
            hook = self.launching_hook(member.region, member.group)
            if hook is not None:
                state = "Warmed:Pending:Wait" if warmed else "Pending:Wait"
                self._wait(member.region, member.group, instance_id, hook, state)
            else:
                _, istate = self.instance_state(member.region, instance_id)
                if istate is not None:
                    istate.lifecycle_state = warmed or "InService"

    # ---- lifecycle API ----
    def _find_action(self, region: str, params: dict) -> LifecycleAction:
        group = params.get("AutoScalingGroupName", "")
        hook = params.get("LifecycleHookName", "")
        iid = params.get("InstanceId")
        token = params.get("LifecycleActionToken")
        if not any(h.name == hook for h in self.asg(region).describe_lifecycle_hooks(group)):
            raise LifecycleError("ValidationError", f"No Lifecycle Hook found with name {hook} "
                                 f"for group {group}")
        for action in self.actions.values():
            if action.result is not None or action.group != group or action.hook != hook:
                continue
            if (iid and action.instance_id == iid) or (token and action.token == token):
                return action
        what = f"instance ID {iid}" if iid else f"token {token}"
        raise LifecycleError("ValidationError", f"No active Lifecycle Action found with {what}")

    def complete(self, region: str, params: dict) -> None:
        result = params.get("LifecycleActionResult", "")
        if result not in ("CONTINUE", "ABANDON"):
            raise LifecycleError("ValidationError", "LifecycleActionResult must be CONTINUE or ABANDON")
        with self.lock:
            action = self._find_action(region, params)
            self._apply(action, result, timed_out=False)

    def heartbeat(self, region: str, params: dict) -> None:
        with self.lock:
            action = self._find_action(region, params)
            action.heartbeats += 1
            action.deadline = time.monotonic() + action.heartbeat_timeout

    def _apply(self, action: LifecycleAction, result: str, timed_out: bool) -> None:
        action.result = result
        action.timed_out = timed_out
        self.history.append({"instance_id": action.instance_id, "group": action.group,
                             "hook": action.hook, "result": result, "timed_out": timed_out,
                             "heartbeats": action.heartbeats, "time": time.time(),
                             "transition": action.transition})
        group, state = self.instance_state(action.region, action.instance_id)
        if state is None:
            return
        if action.transition == TERMINATING:
            # "ABANDON ... For Terminating:Wait hooks, the instance is terminated either way"
            # (https://docs.aws.amazon.com/autoscaling/ec2/userguide/completing-lifecycle-hooks.html).
            state.lifecycle_state = "Terminating:Proceed"
            self.asg(action.region).detach_instances(group.name, [action.instance_id], True)
            self.ec2(action.region).terminate_instances([action.instance_id])
            return
        if result == "CONTINUE" and state.lifecycle_state.startswith("Warmed:"):
            member = self.members.get(action.instance_id)
            state.lifecycle_state = (member.warmed if member else None) or "Warmed:Stopped"
        elif result == "CONTINUE":
            state.lifecycle_state = "InService"
        else:
            # The group terminates an abandoned instance. No replacement is launched here.
            state.lifecycle_state = "Terminating"
            self.asg(action.region).detach_instances(group.name, [action.instance_id], True)
            self.ec2(action.region).terminate_instances([action.instance_id])

    def _expire_loop(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self.lock:
                for action in list(self.actions.values()):
                    if action.result is None and now >= action.deadline:
                        try:
                            self._apply(action, action.default_result, timed_out=True)
                        except Exception:  # keep the loop alive; the history says what happened
                            action.result = action.default_result

    def terminate(self, instance_id: str) -> None:
        with self.lock:
            member = self.members.get(instance_id)
            if member is None:
                raise LifecycleError("ValidationError", f"unknown instance {instance_id}")
            group, state = self.instance_state(member.region, instance_id)
            hook = self.terminating_hook(member.region, group.name) if state is not None else None
            if hook is not None:
                # Scale-in with a terminating hook: the instance waits in Terminating:Wait (IMDS shows
                # target-lifecycle-state Terminated) until the action completes or times out.
                state.lifecycle_state = "Terminating:Wait"
                timeout = float(hook.heartbeat_timeout)
                self.actions[instance_id] = LifecycleAction(
                    instance_id, member.region, group.name, hook.name, str(uuid.uuid4()), timeout,
                    hook.default_result, time.monotonic() + timeout, transition=TERMINATING)
                return
            if state is not None:
                state.lifecycle_state = "Terminating"
                self.asg(member.region).detach_instances(group.name, [instance_id], True)
            self.ec2(member.region).terminate_instances([instance_id])

    def role_credentials(self, instance_id: str) -> dict | None:
        import secrets as _secrets
        with self.lock:
            member = self.members.get(instance_id)
            if member is None or member.role is None:
                return None
            now = time.time()
            if member.credentials is None or now - member.credentials_issued >= member.credential_lifetime / 2:
                member.credentials_issued = now
                stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
                issued = self.issuer and self.issuer(member.role, instance_id, member.region,
                                                     member.credential_lifetime)
                member.credentials = {
                    "Code": "Success",
                    "LastUpdated": stamp(now),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": "ASIA" + _secrets.token_hex(8).upper(),
                    "SecretAccessKey": _secrets.token_urlsafe(30),
                    "Token": _secrets.token_urlsafe(60),
                    "Expiration": stamp(now + member.credential_lifetime),
                    **(issued or {}),
                }
            return dict(member.credentials)

    def spot_notice(self, instance_id: str, action: str | None, rebalance: bool) -> None:
        """A Spot interruption notice (two minutes ahead) and/or a rebalance recommendation, as IMDS
        shows them (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html)."""
        with self.lock:
            member = self.members.get(instance_id)
            if member is None:
                raise LifecycleError("ValidationError", f"unknown instance {instance_id}")
            stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
            if action:
                member.spot_action = {"action": action, "time": stamp(time.time() + 120)}
            if rebalance:
                member.rebalance = {"noticeTime": stamp(time.time())}

    # ---- what IMDS shows ----
    def member(self, instance_id: str) -> Member | None:
        with self.lock:
            return self.members.get(instance_id)

    def describe(self, instance_id: str, tags: bool = True, lifecycle: bool = True) -> dict | None:
        """The instance as IMDS shows it, read live from moto's EC2 state. IMDS asks only for what the
        path needs: tags and group membership are scans over the whole account in moto."""
        member = self.member(instance_id)
        if member is None:
            return None
        ec2 = self.ec2(member.region)
        try:
            inst = ec2.get_instance(instance_id)
        except Exception:
            return None
        zone = getattr(inst.placement, "zone", inst.placement)
        zone_id = None
        for z in ec2.describe_availability_zones():
            if z.name == zone:
                zone_id = z.zone_id
        tag_map = dict(ec2.tags.get(instance_id, {})) if tags else {}
        target = self.target_lifecycle_state(member) if lifecycle else None
        nic = inst.nics.get(0) if isinstance(inst.nics, dict) else (inst.nics[0] if inst.nics else None)
        return {
            "instance_id": instance_id,
            "region": member.region,
            "availability_zone": zone,
            "availability_zone_id": zone_id,
            "instance_type": inst.instance_type,
            "private_ipv4": inst.private_ip,
            "public_ipv4": inst.public_ip,
            "mac": getattr(nic, "mac_address", None),
            "interface_id": getattr(nic, "id", None),
            "nics": [{"device": index, "mac": n.mac_address, "interface_id": n.id,
                      "private_ipv4": n.private_ip_address}
                     for index, n in sorted(inst.nics.items())] if isinstance(inst.nics, dict) else [],
            "ami_id": inst.image_id,
            "state": inst.state,
            "tags": tag_map,
            "metadata_tags": member.metadata_tags,
            "http_endpoint": member.http_endpoint,
            "spot_action": member.spot_action,
            "role": member.role,
            "credentials": self.role_credentials(instance_id) if member.role else None,
            "rebalance": member.rebalance,
            "target_lifecycle_state": target,
        }

    def nic_count(self, region: str, instance_id: str) -> int:
        try:
            return len(self.ec2(region).get_instance(instance_id).nics)
        except Exception:
            return 0

    def target_lifecycle_state(self, member: Member) -> str | None:
        """IMDS autoscaling/target-lifecycle-state: where the group is taking the instance."""
        if member.warmed:
            return member.warmed
        _, state = self.instance_state(member.region, member.instance_id)
        if state is None:
            return "Terminated" if member.group else None
        ls = state.lifecycle_state
        if ls.startswith("Terminat"):
            return "Terminated"
        if ls.startswith("Standby") or ls.startswith("EnteringStandby"):
            return "Standby"
        return "InService"

    def lifecycle_state(self, region: str, instance_id: str) -> str | None:
        _, state = self.instance_state(region, instance_id)
        return state.lifecycle_state if state is not None else None
