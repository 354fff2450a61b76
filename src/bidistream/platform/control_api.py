"""SageMaker's control plane (JSON 1.1, ``X-Amz-Target: SageMaker.<Op>``), sans-I/O.

:meth:`ControlApi.dispatch` takes the target (``SageMaker.CreateModel`` or just
``CreateModel``), the body and the headers and returns ``(status, headers,
body)``; ``await handle(...)`` is the same for the gateway's event loop.  It it writes the store and tells a
:class:`Deployer` (the endpoint manager) what to start or stop, and never
waits for instances itself.  That is why CreateEndpoint answers at once with
the endpoint ``Creating`` and boto3's waiters then watch it move.

Shapes follow botocore's ``sagemaker`` service model: request and response
member names are case-sensitive and exact, timestamps are epoch seconds, and
every error is ``{"__type": Code, "message": ...}``.  Two rules matter to
clients that only look at codes:

* "not found" is ``400 ValidationException`` (not 404): boto3's
  ``endpoint_deleted`` waiter succeeds only on that, and ``endpoint_in_service``
  fails fast on it;
* a message names the field and the rule it broke, in SageMaker's own
  ``Value '…' at '…' failed to satisfy constraint: …`` phrasing.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from bidistream import contract
from bidistream.errors import (
    BidistreamError,
    ConflictError,
    InputValidationError,
    InternalError,
    NotFoundError,
    ResourceLimitExceeded,
    SerializationError,
    UnknownOperationError,
    wire_form,
)
from bidistream.platform.images import parse_image
from bidistream.platform.manager import VariantPlan, plans_from_doc
from bidistream.platform.states import EndpointEvent, EndpointStatus, InstanceState, TransitionError
from bidistream.platform.store import EndpointRecord, Record, Store

log = logging.getLogger("bidistream.platform")

__all__ = ["ControlApi", "ControlLimits", "Deployer", "ResourceLimitExceeded"]

JSON_11 = "application/x-amz-json-1.1"

# SageMaker's name rules (botocore's service model), anchored.
ENV_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_CREDENTIAL_REGION = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/")

ENDPOINT_STATUSES = tuple(str(s) for s in EndpointStatus)


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlLimits:
    # Instances one endpoint may ask for, all variants together: each one is a
    # process (or a Ray actor), so a typo like 1000 must not fork-bomb the host.
    max_instances_per_endpoint: int = 32
    # SageMaker's own bounds.
    max_variants: int = 10
    max_environment_entries: int = 100
    startup_timeout_range: tuple[int, int] = (60, 3600)
    max_list_results: int = 100


class Deployer(Protocol):
    """What the control API asks of the endpoint manager; each call returns at once."""

    def deploy(self, name: str, plans: list[VariantPlan]) -> None: ...

    def redeploy(self, name: str, plans: list[VariantPlan]) -> None: ...

    def remove(self, name: str) -> None: ...


def _violation(value: object, where: str, rule: str) -> InputValidationError:
    shown = value if isinstance(value, (int, float)) else str(value)[:100]
    return InputValidationError(
        f"1 validation error detected: Value '{shown}' at '{where}' failed to satisfy constraint: {rule}"
    )


# Store table -> (ARN resource type, the noun SageMaker's "Could not find" messages use).
_DOC_KINDS = {
    "models": ("model", "model"),
    "endpoint_configs": ("endpoint-config", "endpoint configuration"),
}


class ControlApi:
    def __init__(
        self,
        store: Store,
        deployer: Deployer,
        *,
        account: str = "000000000000",
        default_region: str = "us-east-1",
        limits: ControlLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.deployer = deployer
        self.account = account
        self.default_region = default_region
        self.limits = limits or ControlLimits()
        self.clock = clock
        self._ops: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
            "CreateModel": self.create_model,
            "DescribeModel": self.describe_model,
            "DeleteModel": self.delete_model,
            "ListModels": self.list_models,
            "CreateEndpointConfig": self.create_endpoint_config,
            "DescribeEndpointConfig": self.describe_endpoint_config,
            "DeleteEndpointConfig": self.delete_endpoint_config,
            "ListEndpointConfigs": self.list_endpoint_configs,
            "CreateEndpoint": self.create_endpoint,
            "DescribeEndpoint": self.describe_endpoint,
            "UpdateEndpoint": self.update_endpoint,
            "UpdateEndpointWeightsAndCapacities": self.update_weights_and_capacities,
            "DeleteEndpoint": self.delete_endpoint,
            "ListEndpoints": self.list_endpoints,
        }

    @property
    def operations(self) -> tuple[str, ...]:
        return tuple(self._ops)

    # ---------------------------------------------------------------- wire
    def dispatch(
        self, target: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """One JSON 1.1 request → ``(status, headers, body)``.  Never raises."""
        request_id = str(uuid.uuid4())
        service, _, op = target.rpartition(".")
        service = service or "SageMaker"  # the gateway passes the bare operation name
        try:
            handler = self._ops.get(op) if service == "SageMaker" else None
            if handler is None:
                raise UnknownOperationError(f"Unknown operation {target!r}.")
            try:
                request = json.loads(body or b"{}")
            except (ValueError, UnicodeDecodeError) as exc:
                raise SerializationError(f"Request body is not JSON: {exc}") from exc
            if not isinstance(request, dict):
                raise SerializationError("Request body must be a JSON object.")
            check_types(request)
            result = handler(request, self._region(headers))
        except BidistreamError as exc:
            return _error(exc, request_id)
        except Exception as exc:  # a bug answers 500 instead of killing the connection
            log.exception("control-plane operation %s crashed", op)
            return _error(InternalError(f"{type(exc).__name__}: {exc}"), request_id)
        payload = json.dumps(result).encode()
        return 200, {"Content-Type": JSON_11, "x-amzn-RequestId": request_id}, payload

    async def handle(
        self, target: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """The gateway's entry point (``bidistream.gateway.server.ControlPlane``)."""
        return self.dispatch(target, body, headers)

    def _region(self, headers: Mapping[str, str]) -> str:
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        match = _CREDENTIAL_REGION.search(auth)
        return match.group(1) if match else self.default_region

    def _arn(self, region: str, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{region}:{self.account}:{kind}/{name.lower()}"

    # -------------------------------------------------------------- models
    def create_model(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        name = _name(req, "ModelName", contract.MODEL_NAME)
        containers = req.get("Containers")
        primary = req.get("PrimaryContainer")
        if primary is None and containers:
            if not isinstance(containers, list) or len(containers) != 1:
                raise _violation(
                    len(containers) if isinstance(containers, list) else containers,
                    "containers",
                    "bidistream serves single-container models: "
                    "give PrimaryContainer or one Containers entry",
                )
            primary, where = containers[0], "containers.1"
        else:
            where = "primaryContainer"
        if not isinstance(primary, dict):
            raise InputValidationError("CreateModel needs PrimaryContainer (or Containers with one entry).")
        image = primary.get("Image")
        if not isinstance(image, str):
            raise _violation(image, f"{where}.image", "Member must not be null (the container's Image)")
        spec = parse_image(image, f"{where}.image")
        self._check_environment(primary.get("Environment"), f"{where}.environment")
        if spec.kind == "builtin":
            self._check_model_options(spec.target, primary.get("Environment") or {}, f"{where}.environment")
        arn = self._arn(region, "model", name)
        doc = {k: req[k] for k in _MODEL_FIELDS if k in req}
        self.store.insert_doc("models", Record(name, arn, self.clock(), doc), kind="model")
        return {"ModelArn": arn}

    def _check_model_options(self, builtin: str, env: dict[str, str], where: str) -> None:
        """A built-in's options in Environment are checked now, not when the instance fails to start."""
        from bidistream.container.loader import OPTION_ENV_PREFIX, check_options, options_from_environment

        try:
            check_options(builtin, options_from_environment(env), source=f"{where} option")
        except InputValidationError as exc:
            raise InputValidationError(
                f"{exc.message} (set them as {OPTION_ENV_PREFIX}<NAME>, e.g. {OPTION_ENV_PREFIX}PROFILE)"
            ) from exc

    def _check_environment(self, env: object, where: str) -> None:
        if env is None:
            return
        if not isinstance(env, dict):
            raise _violation(env, where, "Member must be a map of strings")
        if len(env) > self.limits.max_environment_entries:
            raise _violation(
                len(env), where, f"Map must have at most {self.limits.max_environment_entries} entries"
            )
        for key, value in env.items():
            if not ENV_KEY.fullmatch(key) or len(key) > 1024:
                raise _violation(
                    key,
                    f"{where}.key",
                    "Member must satisfy regular expression pattern: [a-zA-Z_][a-zA-Z0-9_]*",
                )
            if not isinstance(value, str) or len(value) > 1024:
                raise _violation(
                    value, f"{where}.{key}", "Member must be a string of at most 1024 characters"
                )

    def describe_model(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        name = _name(req, "ModelName", contract.MODEL_NAME)
        record = self._model(name, region)
        return {
            **record.doc,
            "ModelName": record.name,
            "ModelArn": record.arn,
            "CreationTime": record.created,
        }

    def _not_found(self, table: str, name: str, region: str) -> NotFoundError:
        resource, noun = _DOC_KINDS[table]
        return NotFoundError(f'Could not find {noun} "{self._arn(region, resource, name)}".')

    def _doc(self, table: str, name: str, region: str) -> Record:
        record = self.store.get_doc(table, name)
        if record is None:
            raise self._not_found(table, name, region)
        return record

    def _model(self, name: str, region: str) -> Record:
        return self._doc("models", name, region)

    def delete_model(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        name = _name(req, "ModelName", contract.MODEL_NAME)
        if not self.store.delete_doc("models", name):
            raise self._not_found("models", name, region)
        return {}

    def list_models(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        records = self.store.list_docs("models")
        rows = [
            {"ModelName": r.name, "ModelArn": r.arn, "CreationTime": r.created, "_status": ""}
            for r in records
        ]
        page, token = self._page(
            req, rows, "ModelName", {"Name": "ModelName", "CreationTime": "CreationTime"}
        )
        return {"Models": page, **({"NextToken": token} if token else {})}

    # ------------------------------------------------------ endpoint configs
    def create_endpoint_config(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        name = _name(req, "EndpointConfigName", contract.NAME)
        variants = req.get("ProductionVariants")
        if not isinstance(variants, list) or not variants:
            raise _violation(
                variants, "productionVariants", "Member must have length greater than or equal to 1"
            )
        if len(variants) > self.limits.max_variants:
            raise _violation(
                len(variants),
                "productionVariants",
                f"Member must have length less than or equal to {self.limits.max_variants}",
            )
        seen: set[str] = set()
        total_weight = 0.0
        total_instances = 0
        for n, variant in enumerate(variants, 1):
            where = f"productionVariants.{n}"
            if not isinstance(variant, dict):
                raise _violation(variant, where, "Member must be a ProductionVariant structure")
            vname = _name(variant, "VariantName", contract.NAME, where=f"{where}.variantName")
            if vname in seen:
                raise InputValidationError(
                    f"Duplicate VariantName {vname!r} in ProductionVariants: variant names must be unique."
                )
            seen.add(vname)
            model = _name(variant, "ModelName", contract.MODEL_NAME, where=f"{where}.modelName")
            self._model(model, region)
            if "ServerlessConfig" in variant:
                raise _violation(
                    "ServerlessConfig",
                    f"{where}.serverlessConfig",
                    "serverless variants are not supported; set InitialInstanceCount",
                )
            count = variant.get("InitialInstanceCount")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise _violation(
                    count,
                    f"{where}.initialInstanceCount",
                    "Member must have value greater than or equal to 1",
                )
            total_instances += count
            weight = variant.get("InitialVariantWeight", 1.0)
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                raise _violation(
                    weight,
                    f"{where}.initialVariantWeight",
                    "Member must have value greater than or equal to 0",
                )
            total_weight += float(weight)
            itype = variant.get("InstanceType", "ml.m5.large")
            if not isinstance(itype, str) or not itype.startswith("ml."):
                raise _violation(
                    itype, f"{where}.instanceType", "Member must be an instance type such as ml.m5.large"
                )
            timeout = variant.get("ContainerStartupHealthCheckTimeoutInSeconds")
            low, high = self.limits.startup_timeout_range
            if timeout is not None and (not isinstance(timeout, int) or not low <= timeout <= high):
                raise _violation(
                    timeout,
                    f"{where}.containerStartupHealthCheckTimeoutInSeconds",
                    f"Member must have value between {low} and {high}",
                )
        if total_weight <= 0:
            raise InputValidationError(
                "ProductionVariants: the sum of InitialVariantWeight must be greater than 0 "
                "(at least one variant must take traffic)."
            )
        if total_instances > self.limits.max_instances_per_endpoint:
            raise ResourceLimitExceeded(
                f"The endpoint config asks for {total_instances} instances; the limit is "
                f"{self.limits.max_instances_per_endpoint} per endpoint "
                "(ControlLimits.max_instances_per_endpoint)."
            )
        arn = self._arn(region, "endpoint-config", name)
        doc = {k: req[k] for k in _CONFIG_FIELDS if k in req}
        self.store.insert_doc(
            "endpoint_configs", Record(name, arn, self.clock(), doc), kind="endpoint configuration"
        )
        return {"EndpointConfigArn": arn}

    def describe_endpoint_config(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        name = _name(req, "EndpointConfigName", contract.NAME)
        record = self._config(name, region)
        return {
            **record.doc,
            "EndpointConfigName": record.name,
            "EndpointConfigArn": record.arn,
            "CreationTime": record.created,
        }

    def _config(self, name: str, region: str) -> Record:
        return self._doc("endpoint_configs", name, region)

    def delete_endpoint_config(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        name = _name(req, "EndpointConfigName", contract.NAME)
        if not self.store.delete_doc("endpoint_configs", name):
            raise self._not_found("endpoint_configs", name, region)
        return {}

    def list_endpoint_configs(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        rows = [
            {"EndpointConfigName": r.name, "EndpointConfigArn": r.arn, "CreationTime": r.created}
            for r in self.store.list_docs("endpoint_configs")
        ]
        page, token = self._page(
            req, rows, "EndpointConfigName", {"Name": "EndpointConfigName", "CreationTime": "CreationTime"}
        )
        return {"EndpointConfigs": page, **({"NextToken": token} if token else {})}

    # ------------------------------------------------------------- endpoints
    def _plans(self, config: Record, region: str) -> list[VariantPlan]:
        """Resolve an endpoint config's variants to images now: the endpoint keeps
        running what it was created with even if the model is deleted later."""
        plans = []
        for variant in config.doc["ProductionVariants"]:
            model = self._model(variant["ModelName"], region)
            container = model.doc.get("PrimaryContainer") or model.doc["Containers"][0]
            plans.append(
                VariantPlan(
                    name=variant["VariantName"],
                    model_name=model.name,
                    image=container["Image"],
                    environment=dict(container.get("Environment") or {}),
                    instance_type=variant.get("InstanceType", "ml.m5.large"),
                    instance_count=int(variant["InitialInstanceCount"]),
                    weight=float(variant.get("InitialVariantWeight", 1.0)),
                    startup_timeout=variant.get("ContainerStartupHealthCheckTimeoutInSeconds"),
                )
            )
        return plans

    def create_endpoint(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        name = _name(req, "EndpointName", contract.NAME)
        config_name = _name(req, "EndpointConfigName", contract.NAME)
        arn = self._arn(region, "endpoint", name)
        if self.store.get_endpoint(name) is not None:
            raise ConflictError(f'Cannot create already existing endpoint "{arn}".')
        plans = self._plans(self._config(config_name, region), region)
        now = self.clock()
        doc: dict[str, Any] = {"deployment": [p.to_doc() for p in plans]}
        if "Tags" in req:
            doc["Tags"] = req["Tags"]
        self.store.insert_endpoint(
            EndpointRecord(name, arn, config_name, str(EndpointStatus.CREATING), None, now, now, doc)
        )
        self.deployer.deploy(name, plans)
        return {"EndpointArn": arn}

    def _endpoint(self, name: str, region: str) -> EndpointRecord:
        record = self.store.get_endpoint(name)
        if record is None:
            raise NotFoundError(f'Could not find endpoint "{self._arn(region, "endpoint", name)}".')
        return record

    def describe_endpoint(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        name = _name(req, "EndpointName", contract.NAME)
        # The record and its instance rows in one read: the same fact
        # `bidistream endpoints` prints and the router routes by.
        record, rows = self.store.snapshot(name)
        if record is None:
            raise NotFoundError(f'Could not find endpoint "{self._arn(region, "endpoint", name)}".')
        healthy: dict[str, int] = {}
        for row in rows:
            if row.state == InstanceState.HEALTHY:
                healthy[row.variant] = healthy.get(row.variant, 0) + 1
        pending = {p.name: p for p in plans_from_doc(record.doc, "pending")}
        variants: list[dict[str, Any]] = []
        for doc in record.doc.get("deployment") or []:
            plan = VariantPlan.from_doc(doc)
            image: dict[str, Any] = {"SpecifiedImage": plan.image, "ResolvedImage": plan.image}
            if doc.get("DeployedAt") is not None:
                image["ResolutionTime"] = doc["DeployedAt"]
            desired = pending.get(plan.name, plan)
            variants.append(
                {
                    "VariantName": plan.name,
                    "DeployedImages": [image],
                    "CurrentWeight": plan.weight,
                    "DesiredWeight": desired.weight,
                    "CurrentInstanceCount": healthy.get(plan.name, 0),
                    "DesiredInstanceCount": desired.instance_count,
                }
            )
        out: dict[str, Any] = {
            "EndpointName": record.name,
            "EndpointArn": record.arn,
            "EndpointConfigName": record.config_name,
            "ProductionVariants": variants,
            "EndpointStatus": record.status,
            "CreationTime": record.created,
            "LastModifiedTime": record.modified,
        }
        if record.failure_reason:
            out["FailureReason"] = record.failure_reason
        return out

    def _begin_update(
        self, record: EndpointRecord, plans: list[VariantPlan], config_name: str | None
    ) -> None:
        total = sum(p.instance_count for p in plans)
        if total > self.limits.max_instances_per_endpoint:
            raise ResourceLimitExceeded(
                f"The update asks for {total} instances; the limit is "
                f"{self.limits.max_instances_per_endpoint} per endpoint."
            )
        doc = dict(record.doc)
        doc["pending"] = [p.to_doc() for p in plans]
        doc["previous_config"] = record.config_name  # restored if the update fails
        try:
            self.store.commit(
                record.name, event=EndpointEvent.UPDATE, config_name=config_name, doc=doc, clear_failure=True
            )
        except TransitionError as exc:
            # Another update won the race between our check and this write.
            now = self.store.get_endpoint(record.name)
            status = now.status if now is not None else "gone"
            raise ConflictError(
                f'Cannot update in-progress endpoint "{record.arn}" (status {status}).'
            ) from exc
        self.deployer.redeploy(record.name, plans)

    def _check_updatable(self, record: EndpointRecord) -> None:
        if record.status != EndpointStatus.IN_SERVICE:
            raise InputValidationError(
                f'Cannot update in-progress endpoint "{record.arn}": its status is {record.status}, '
                "and only an InService endpoint can be updated."
            )

    def update_endpoint(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        name = _name(req, "EndpointName", contract.NAME)
        config_name = _name(req, "EndpointConfigName", contract.NAME)
        record = self._endpoint(name, region)
        self._check_updatable(record)
        plans = self._plans(self._config(config_name, region), region)
        if req.get("RetainAllVariantProperties"):
            current = {p.name: p for p in plans_from_doc(record.doc)}
            plans = [
                VariantPlan(
                    **{
                        **_plan_fields(p),
                        "instance_count": current[p.name].instance_count,
                        "weight": current[p.name].weight,
                    }
                )
                if p.name in current
                else p
                for p in plans
            ]
        self._begin_update(record, plans, config_name)
        return {"EndpointArn": record.arn}

    def update_weights_and_capacities(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        name = _name(req, "EndpointName", contract.NAME)
        record = self._endpoint(name, region)
        desired = req.get("DesiredWeightsAndCapacities")
        if not isinstance(desired, list) or not desired:
            raise _violation(
                desired, "desiredWeightsAndCapacities", "Member must have length greater than or equal to 1"
            )
        self._check_updatable(record)
        current = {p.name: p for p in plans_from_doc(record.doc)}
        changes: dict[str, dict[str, Any]] = {}
        for n, item in enumerate(desired, 1):
            where = f"desiredWeightsAndCapacities.{n}"
            vname = _name(item, "VariantName", contract.NAME, where=f"{where}.variantName")
            if vname not in current:
                known = ", ".join(current) or "none"
                raise InputValidationError(
                    f"The variant {vname!r} is not part of endpoint {name!r} (variants: {known})."
                )
            if vname in changes:
                raise InputValidationError(f"Duplicate VariantName {vname!r} in DesiredWeightsAndCapacities.")
            change: dict[str, Any] = {}
            if "DesiredWeight" in item:
                weight = item["DesiredWeight"]
                if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                    raise _violation(
                        weight, f"{where}.desiredWeight", "Member must have value greater than or equal to 0"
                    )
                change["weight"] = float(weight)
            if "DesiredInstanceCount" in item:
                count = item["DesiredInstanceCount"]
                if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                    raise _violation(
                        count,
                        f"{where}.desiredInstanceCount",
                        "Member must have value greater than or equal to 1",
                    )
                change["instance_count"] = count
            if not change:
                raise InputValidationError(f"{where}: give DesiredWeight, DesiredInstanceCount or both.")
            changes[vname] = change
        plans = [VariantPlan(**{**_plan_fields(p), **changes.get(p.name, {})}) for p in current.values()]
        if sum(p.weight for p in plans) <= 0:
            raise InputValidationError(
                "DesiredWeightsAndCapacities: the sum of the variant weights must stay above 0."
            )
        self._begin_update(record, plans, None)
        return {"EndpointArn": record.arn}

    def delete_endpoint(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        name = _name(req, "EndpointName", contract.NAME)
        record = self._endpoint(name, region)
        if record.status != EndpointStatus.DELETING:
            self.store.commit(name, event=EndpointEvent.DELETE)
            self.deployer.remove(name)
        return {}

    def list_endpoints(self, req: dict[str, Any], region: str) -> dict[str, Any]:
        status = req.get("StatusEquals")
        if status is not None and status not in ENDPOINT_STATUSES:
            raise _violation(
                status, "statusEquals", f"Member must satisfy enum value set: {list(ENDPOINT_STATUSES)}"
            )
        rows: list[dict[str, Any]] = [
            {
                "EndpointName": r.name,
                "EndpointArn": r.arn,
                "CreationTime": r.created,
                "LastModifiedTime": r.modified,
                "EndpointStatus": r.status,
            }
            for r in self.store.list_endpoints()
            if status is None or r.status == status
        ]
        for key, field_name, cmp in (
            ("LastModifiedTimeBefore", "LastModifiedTime", float.__lt__),
            ("LastModifiedTimeAfter", "LastModifiedTime", float.__gt__),
        ):
            if key in req:
                rows = [r for r in rows if cmp(float(r[field_name]), float(req[key]))]
        page, token = self._page(
            req,
            rows,
            "EndpointName",
            {"Name": "EndpointName", "CreationTime": "CreationTime", "Status": "EndpointStatus"},
        )
        return {"Endpoints": page, **({"NextToken": token} if token else {})}

    # --------------------------------------------------------------- lists
    def _page(
        self, req: dict[str, Any], rows: list[dict[str, Any]], name_key: str, sort_keys: dict[str, str]
    ) -> tuple[list[dict[str, Any]], str | None]:
        contains = req.get("NameContains")
        if contains is not None:
            rows = [r for r in rows if str(contains).lower() in r[name_key].lower()]
        for key, cmp in (("CreationTimeBefore", float.__lt__), ("CreationTimeAfter", float.__gt__)):
            if key in req:
                rows = [r for r in rows if cmp(float(r["CreationTime"]), float(req[key]))]
        sort_by = req.get("SortBy", "CreationTime")
        if sort_by not in sort_keys:
            raise _violation(sort_by, "sortBy", f"Member must satisfy enum value set: {list(sort_keys)}")
        order = req.get("SortOrder", "Descending")
        if order not in ("Ascending", "Descending"):
            raise _violation(
                order, "sortOrder", "Member must satisfy enum value set: [Ascending, Descending]"
            )
        rows.sort(key=lambda r: (r[sort_keys[sort_by]], r[name_key]), reverse=order == "Descending")
        limit = req.get("MaxResults", self.limits.max_list_results)
        if not isinstance(limit, int) or not 1 <= limit <= self.limits.max_list_results:
            raise _violation(
                limit, "maxResults", f"Member must have value between 1 and {self.limits.max_list_results}"
            )
        token = req.get("NextToken")
        try:
            start = int(token) if token else 0
        except ValueError as exc:
            raise _violation(
                token, "nextToken", "Member must be a token returned by a previous call"
            ) from exc
        page = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows[start : start + limit]]
        more = start + limit < len(rows)
        return page, (str(start + limit) if more else None)


_MODEL_FIELDS = (
    "PrimaryContainer",
    "Containers",
    "InferenceExecutionConfig",
    "ExecutionRoleArn",
    "VpcConfig",
    "EnableNetworkIsolation",
)
_CONFIG_FIELDS = (
    "ProductionVariants",
    "DataCaptureConfig",
    "KmsKeyId",
    "AsyncInferenceConfig",
    "ExplainerConfig",
    "ShadowProductionVariants",
    "ExecutionRoleArn",
    "VpcConfig",
    "EnableNetworkIsolation",
)


# Member types from botocore's service model, for every member this API reads.
# JSON numbers arrive as int or float; a bool is never a number here.
_NUMBER = (int, float)
_MEMBER_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(
        (
            "ModelName",
            "EndpointName",
            "EndpointConfigName",
            "VariantName",
            "Image",
            "InstanceType",
            "ExecutionRoleArn",
            "NextToken",
            "SortBy",
            "SortOrder",
            "NameContains",
            "StatusEquals",
        ),
        (str,),
    ),
    **dict.fromkeys(("PrimaryContainer", "Environment"), (dict,)),
    **dict.fromkeys(("Containers", "ProductionVariants", "DesiredWeightsAndCapacities", "Tags"), (list,)),
    **dict.fromkeys(
        (
            "MaxResults",
            "InitialInstanceCount",
            "DesiredInstanceCount",
            "ContainerStartupHealthCheckTimeoutInSeconds",
        ),
        (int,),
    ),
    **dict.fromkeys(
        (
            "InitialVariantWeight",
            "DesiredWeight",
            "CreationTimeBefore",
            "CreationTimeAfter",
            "LastModifiedTimeBefore",
            "LastModifiedTimeAfter",
        ),
        _NUMBER,
    ),
    "RetainAllVariantProperties": (bool,),
}
# Lists whose items are structures.
_STRUCT_LISTS = {"Containers", "ProductionVariants", "DesiredWeightsAndCapacities"}


def check_types(request: dict[str, Any], where: str = "") -> None:
    """Reject a member of the wrong JSON type before any handler reads it, so a
    malformed request is a ValidationException naming the member, never a crash."""
    for key, value in request.items():
        member = key[:1].lower() + key[1:]
        path = f"{where}.{member}" if where else member
        expected = _MEMBER_TYPES.get(key)
        if expected is not None and value is not None:
            if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
                raise _violation(value, path, f"Member must be of type {_TYPE_NAMES[expected]}")
        if key in _STRUCT_LISTS and isinstance(value, list):
            for n, item in enumerate(value, 1):
                if not isinstance(item, dict):
                    raise _violation(item, f"{path}.{n}", "Member must be a structure")
                check_types(item, f"{path}.{n}")
        elif key == "PrimaryContainer" and isinstance(value, dict):
            check_types(value, path)


_TYPE_NAMES = {
    (str,): "string",
    (dict,): "map",
    (list,): "list",
    (int,): "integer",
    _NUMBER: "number",
    (bool,): "boolean",
}


def _plan_fields(plan: VariantPlan) -> dict[str, Any]:
    return {
        "name": plan.name,
        "model_name": plan.model_name,
        "image": plan.image,
        "environment": plan.environment,
        "instance_type": plan.instance_type,
        "instance_count": plan.instance_count,
        "weight": plan.weight,
        "startup_timeout": plan.startup_timeout,
    }


def _name(req: dict[str, Any], key: str, pattern: re.Pattern[str], where: str | None = None) -> str:
    where = where or key[0].lower() + key[1:]
    value = req.get(key)
    if value is None:
        raise _violation(None, where, "Member must not be null")
    if not isinstance(value, str):
        raise _violation(value, where, "Member must be a string")
    if len(value) > contract.MAX_NAME:
        raise _violation(value, where, f"Member must have length less than or equal to {contract.MAX_NAME}")
    if not pattern.fullmatch(value):
        raise _violation(value, where, f"Member must satisfy regular expression pattern: {pattern.pattern}")
    return value


def _error(error: BidistreamError, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """The JSON 1.1 error answer; status and ``__type`` are the error table's control-plane columns."""
    form = wire_form(error)
    code = form.control_type
    headers = {"Content-Type": JSON_11, "x-amzn-RequestId": request_id, "x-amzn-ErrorType": code}
    return form.control_status, headers, json.dumps({"__type": code, "message": error.message}).encode()
