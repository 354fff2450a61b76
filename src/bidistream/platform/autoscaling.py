"""Application Auto Scaling (JSON 1.1, ``X-Amz-Target: AnyScaleFrontendService.<Op>``), sans-I/O.

The operations boto3's ``application-autoscaling`` client calls for a
SageMaker variant: register a scalable target
(``endpoint/NAME/variant/VARIANT``, ``sagemaker:variant:DesiredInstanceCount``),
put a target-tracking policy on it, describe targets, policies and
activities, delete and deregister.  Requests are validated against botocore's
own model (:mod:`bidistream.platform.awsjson`) and answers are trimmed to it;
then the rules the model cannot say (namespace and dimension this platform
scales, min ≤ max, the endpoint and variant exist, metrics it can measure)
answer ``ValidationException`` or ``ObjectNotFoundException`` as AWS does.

The :class:`~bidistream.platform.autoscaler.Autoscaler` reads what this API
stores and records the activities it starts.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bidistream.errors import BidistreamError, ClientError, InputValidationError
from bidistream.platform.autoscaling_store import AutoscalingStore, TargetKey
from bidistream.platform.awsjson import ModelValidationError, service_model, shape_output, validate_input
from bidistream.platform.store import Store

__all__ = [
    "CUSTOM_METRICS",
    "DIMENSION",
    "NAMESPACE",
    "PREDEFINED_METRICS",
    "AutoscalingApi",
    "ControlPlanes",
    "TargetPolicy",
    "parse_resource_id",
]

log = logging.getLogger("bidistream.platform.autoscaling")

JSON_11 = "application/x-amz-json-1.1"
SERVICE = "application-autoscaling"
NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
_RESOURCE = re.compile(
    r"endpoint/([a-zA-Z0-9](?:-*[a-zA-Z0-9]){0,62})/variant/([a-zA-Z0-9](?:-*[a-zA-Z0-9]){0,62})"
)

# Predefined metrics SageMaker users name, and what the autoscaler measures for each.
PREDEFINED_METRICS = {
    # Invocations (InvokeEndpoint calls plus bidi sessions opened) per instance per minute.
    "SageMakerVariantInvocationsPerInstance": "invocations_per_instance",
    # Concurrent requests per instance: live sessions plus in-flight invocations.
    "SageMakerVariantConcurrentRequestsPerModelHighResolution": "concurrent_per_instance",
}
# CustomizedMetricSpecification.MetricName values bidistream measures itself (Namespace "bidistream").
CUSTOM_METRICS = {
    "LiveSessionsPerInstance": "sessions_per_instance",
    "SpeechBacklogSeconds": "backlog_seconds",
}
CUSTOM_NAMESPACE = "bidistream"
# SageMaker's defaults when a policy gives no cooldowns.
DEFAULT_SCALE_OUT_COOLDOWN = 300
DEFAULT_SCALE_IN_COOLDOWN = 300


class ObjectNotFound(ClientError):
    code = "ObjectNotFoundException"


class InvalidNextToken(ClientError):
    code = "InvalidNextTokenException"


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """A target-tracking policy as the autoscaler reads it."""

    name: str
    arn: str
    metric: str  # one of PREDEFINED_METRICS / CUSTOM_METRICS values
    target_value: float
    scale_out_cooldown: float
    scale_in_cooldown: float
    disable_scale_in: bool

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> TargetPolicy:
        cfg = doc["TargetTrackingScalingPolicyConfiguration"]
        return cls(
            name=doc["PolicyName"],
            arn=doc["PolicyARN"],
            metric=metric_of(cfg),
            target_value=float(cfg["TargetValue"]),
            scale_out_cooldown=float(cfg.get("ScaleOutCooldown", DEFAULT_SCALE_OUT_COOLDOWN)),
            scale_in_cooldown=float(cfg.get("ScaleInCooldown", DEFAULT_SCALE_IN_COOLDOWN)),
            disable_scale_in=bool(cfg.get("DisableScaleIn", False)),
        )


def metric_of(cfg: dict[str, Any]) -> str:
    predefined = cfg.get("PredefinedMetricSpecification")
    if predefined is not None:
        kind = predefined["PredefinedMetricType"]
        if kind not in PREDEFINED_METRICS:
            raise InputValidationError(
                f"PredefinedMetricType {kind} does not apply to a SageMaker variant here; "
                f"use one of {', '.join(PREDEFINED_METRICS)}."
            )
        return PREDEFINED_METRICS[kind]
    custom = cfg.get("CustomizedMetricSpecification")
    if custom is None:
        raise InputValidationError(
            "TargetTrackingScalingPolicyConfiguration needs PredefinedMetricSpecification or "
            "CustomizedMetricSpecification."
        )
    name = custom.get("MetricName")
    if name not in CUSTOM_METRICS or custom.get("Namespace", CUSTOM_NAMESPACE) != CUSTOM_NAMESPACE:
        raise InputValidationError(
            f"CustomizedMetricSpecification {custom.get('Namespace')}/{name} is not a metric bidistream "
            f"measures; use Namespace {CUSTOM_NAMESPACE!r} with MetricName one of "
            f"{', '.join(CUSTOM_METRICS)}."
        )
    return CUSTOM_METRICS[name]


def parse_resource_id(resource_id: str) -> tuple[str, str]:
    match = _RESOURCE.fullmatch(resource_id)
    if match is None:
        raise InputValidationError(
            f"Unsupported resource ID {resource_id!r}: a SageMaker variant is endpoint/NAME/variant/VARIANT."
        )
    return match.group(1), match.group(2)


class AutoscalingApi:
    def __init__(
        self,
        store: AutoscalingStore,
        endpoints: Store,
        *,
        account: str = "000000000000",
        default_region: str = "us-east-1",
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] | None = None,
        max_results: int = 50,
    ) -> None:
        self.store = store
        self.endpoints = endpoints
        self.account = account
        self.default_region = default_region
        self.clock = clock
        self.on_change = on_change
        self.max_results = max_results
        self.model = service_model(SERVICE)
        self._ops: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
            "RegisterScalableTarget": self.register_scalable_target,
            "DescribeScalableTargets": self.describe_scalable_targets,
            "DeregisterScalableTarget": self.deregister_scalable_target,
            "PutScalingPolicy": self.put_scaling_policy,
            "DescribeScalingPolicies": self.describe_scaling_policies,
            "DeleteScalingPolicy": self.delete_scaling_policy,
            "DescribeScalingActivities": self.describe_scaling_activities,
        }

    # ---------------------------------------------------------------- wire
    def dispatch(
        self, target: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """One JSON 1.1 request → ``(status, headers, body)``.  Never raises."""
        request_id = str(uuid.uuid4())
        op = target.rpartition(".")[2]
        handler = self._ops.get(op)
        if handler is None:
            return _error(400, "UnknownOperationException", f"Unknown operation {target!r}.", request_id)
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(
                400, "SerializationException", f"Request body is not a JSON object: {exc}", request_id
            )
        operation = self.model.operation_model(op)
        try:
            validate_input(operation, request)
            result = handler(request, _region(headers, self.default_region))
        except (ObjectNotFound, InvalidNextToken) as exc:
            return _error(400, exc.code, exc.message, request_id)
        except (ModelValidationError, ClientError) as exc:
            return _error(400, "ValidationException", exc.message, request_id)
        except BidistreamError as exc:
            return _error(500, "InternalServiceException", exc.message, request_id)
        except Exception as exc:  # a bug answers 500 instead of killing the connection
            log.exception("autoscaling operation %s crashed", op)
            return _error(500, "InternalServiceException", f"{type(exc).__name__}: {exc}", request_id)
        payload = json.dumps(shape_output(operation.output_shape, result)).encode()
        return 200, {"Content-Type": JSON_11, "x-amzn-RequestId": request_id}, payload

    async def handle(
        self, target: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        return self.dispatch(target, body, headers)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ------------------------------------------------------------- checks
    def _key(self, req: dict[str, Any]) -> TargetKey:
        namespace = req["ServiceNamespace"]
        if namespace != NAMESPACE:
            raise InputValidationError(
                f"Unsupported service namespace {namespace!r}: this platform scales SageMaker variants "
                f"({NAMESPACE!r})."
            )
        dimension = req.get("ScalableDimension")
        if dimension is not None and dimension != DIMENSION:
            raise InputValidationError(
                f"Unsupported scalable dimension {dimension!r} for namespace sagemaker; use {DIMENSION}."
            )
        return TargetKey(namespace, req.get("ResourceId", ""), dimension or DIMENSION)

    def _check_variant(self, resource_id: str) -> None:
        endpoint, variant = parse_resource_id(resource_id)
        record = self.endpoints.get_endpoint(endpoint)
        if record is None:
            raise InputValidationError(f"The endpoint {endpoint!r} does not exist (resource {resource_id}).")
        names = [
            p.get("VariantName") for p in record.doc.get("deployment") or record.doc.get("pending") or []
        ]
        if variant not in names:
            raise InputValidationError(
                f"The variant {variant!r} is not part of endpoint {endpoint!r} "
                f"(variants: {', '.join(str(n) for n in names) or 'none'})."
            )

    def _not_registered(self, key: TargetKey) -> ObjectNotFound:
        return ObjectNotFound(
            f"No scalable target registered for service namespace: {key.namespace}, "
            f"resource ID: {key.resource_id}, scalable dimension: {key.dimension}"
        )

    # -------------------------------------------------------------- targets
    def register_scalable_target(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        key = self._key(req)
        self._check_variant(key.resource_id)
        existing = self.store.get_target(key)
        doc = dict(existing.doc) if existing is not None else {}
        for field in ("MinCapacity", "MaxCapacity"):
            if field in req:
                doc[field] = req[field]
            elif existing is None:
                raise InputValidationError(
                    "MinCapacity and MaxCapacity are required to register a new scalable target."
                )
        if doc["MinCapacity"] > doc["MaxCapacity"]:
            raise InputValidationError(
                f"Minimum capacity {doc['MinCapacity']} cannot be greater than maximum capacity "
                f"{doc['MaxCapacity']}."
            )
        if doc["MinCapacity"] < 1:
            raise InputValidationError("MinCapacity of a SageMaker variant must be at least 1.")
        if "SuspendedState" in req:
            doc["SuspendedState"] = {**doc.get("SuspendedState", {}), **req["SuspendedState"]}
        created = existing.created if existing is not None else self.clock()
        target_id = doc.get("_id") or uuid.uuid4().hex
        doc.update(
            _id=target_id,
            ServiceNamespace=key.namespace,
            ResourceId=key.resource_id,
            ScalableDimension=key.dimension,
            RoleARN=req.get("RoleARN")
            or f"arn:aws:iam::{self.account}:role/aws-service-role/sagemaker.application-autoscaling."
            "amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint",
            ScalableTargetARN=f"arn:aws:application-autoscaling:{region}:{self.account}:scalable-target/{target_id}",
            CreationTime=created,
        )
        self.store.put_target(key, created, doc)
        self._changed()
        return {"ScalableTargetARN": doc["ScalableTargetARN"]}

    def describe_scalable_targets(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        key = self._key(req)
        ids = req.get("ResourceIds")
        rows = [
            r.doc
            for r in self.store.list_targets(key.namespace)
            if (ids is None or r.key.resource_id in ids) and r.key.dimension == key.dimension
        ]
        page, token = self._page(req, rows)
        out: dict[str, Any] = {"ScalableTargets": page}
        if token:
            out["NextToken"] = token
        return out

    def deregister_scalable_target(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        key = self._key(req)
        if not self.store.delete_target(key):
            raise self._not_registered(key)
        self._changed()
        return {}

    # ------------------------------------------------------------- policies
    def put_scaling_policy(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        key = self._key(req)
        if self.store.get_target(key) is None:
            raise self._not_registered(key)
        kind = req.get("PolicyType", "StepScaling")
        if kind != "TargetTrackingScaling":
            raise InputValidationError(
                f"PolicyType {kind} is not supported here: use TargetTrackingScaling "
                "(with TargetTrackingScalingPolicyConfiguration)."
            )
        cfg = req.get("TargetTrackingScalingPolicyConfiguration")
        if cfg is None:
            raise InputValidationError(
                "TargetTrackingScalingPolicyConfiguration is required for a TargetTrackingScaling policy."
            )
        metric_of(cfg)
        if cfg["TargetValue"] <= 0:
            raise ModelValidationError(
                f"1 validation error detected: Value '{cfg['TargetValue']}' at "
                "'targetTrackingScalingPolicyConfiguration.targetValue' failed to satisfy constraint: "
                "Member must be greater than 0"
            )
        name = req["PolicyName"]
        existing = self.store.get_policy(key, name)
        created = existing.created if existing is not None else self.clock()
        policy_id = existing.doc["_id"] if existing is not None else str(uuid.uuid4())
        arn = (
            f"arn:aws:autoscaling:{region}:{self.account}:scalingPolicy:{policy_id}:"
            f"resource/{key.namespace}/{key.resource_id}:policyName/{name}"
        )
        alarms = [
            {
                "AlarmName": f"TargetTracking-{key.resource_id}-{side}-{policy_id}",
                "AlarmARN": f"arn:aws:cloudwatch:{region}:{self.account}:alarm:"
                f"TargetTracking-{key.resource_id}-{side}-{policy_id}",
            }
            for side in ("AlarmHigh", "AlarmLow")
        ]
        doc = {
            "_id": policy_id,
            "PolicyARN": arn,
            "PolicyName": name,
            "ServiceNamespace": key.namespace,
            "ResourceId": key.resource_id,
            "ScalableDimension": key.dimension,
            "PolicyType": kind,
            "TargetTrackingScalingPolicyConfiguration": cfg,
            "Alarms": alarms,
            "CreationTime": created,
        }
        self.store.put_policy(key, name, created, doc)
        self._changed()
        return {"PolicyARN": arn, "Alarms": alarms}

    def describe_scaling_policies(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        key = self._key(req)
        names = req.get("PolicyNames")
        rid = req.get("ResourceId")
        rows = [
            r.doc
            for r in self.store.list_policies(key.namespace)
            if (names is None or r.name in names)
            and (rid is None or r.key.resource_id == rid)
            and r.key.dimension == key.dimension
        ]
        page, token = self._page(req, rows)
        out: dict[str, Any] = {"ScalingPolicies": page}
        if token:
            out["NextToken"] = token
        return out

    def delete_scaling_policy(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        key = self._key(req)
        if not self.store.delete_policy(key, req["PolicyName"]):
            raise ObjectNotFound(
                f"No scaling policy found for service namespace: {key.namespace}, resource ID: "
                f"{key.resource_id}, scalable dimension: {key.dimension}, policy name: {req['PolicyName']}"
            )
        self._changed()
        return {}

    def describe_scaling_activities(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        key = self._key(req)
        rid = req.get("ResourceId")
        rows = [
            a.doc
            for a in self.store.list_activities(key.namespace)
            if (rid is None or a.key.resource_id == rid) and a.key.dimension == key.dimension
        ]
        page, token = self._page(req, rows)
        out: dict[str, Any] = {"ScalingActivities": page}
        if token:
            out["NextToken"] = token
        return out

    def _page(
        self, req: dict[str, Any], rows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], str | None]:
        limit = req.get("MaxResults", self.max_results)
        token = req.get("NextToken")
        try:
            start = int(token) if token else 0
        except ValueError as exc:
            raise InvalidNextToken(
                f"Invalid NextToken {token!r}: pass a token a previous call returned."
            ) from exc
        page = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows[start : start + limit]]
        return page, (str(start + limit) if start + limit < len(rows) else None)


def _region(headers: Mapping[str, str], default: str) -> str:
    auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    match = re.search(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/", auth)
    return match.group(1) if match else default


def _error(status: int, code: str, message: str, request_id: str) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": JSON_11, "x-amzn-RequestId": request_id, "x-amzn-ErrorType": code}
    return status, headers, json.dumps({"__type": code, "message": message}).encode()


class ControlPlanes:
    """The gateway's one control-plane door: routes ``<Service>.<Op>`` to the right API.

    A bare operation name means SageMaker (what the gateway and built-in
    commands passed before Application Auto Scaling existed).
    """

    def __init__(self, apis: Mapping[str, Any], default: str = "SageMaker") -> None:
        self.apis = dict(apis)
        self.default = default

    def dispatch(
        self, target: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        service, _, op = target.rpartition(".")
        api = self.apis.get(service or self.default)
        if api is None:
            return _error(
                400, "UnknownOperationException", f"Unknown operation {target!r}.", str(uuid.uuid4())
            )
        return api.dispatch(f"{service or self.default}.{op}", body, headers)

    async def handle(
        self, target: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        return self.dispatch(target, body, headers)
