"""The control API, sans-I/O, driven through botocore's own serializer and parser.

Requests are built exactly as boto3's ``sagemaker`` client builds them and
answers are parsed by the same parser boto3 uses, so a field-name or
timestamp mistake fails here without any socket.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import botocore.parsers
import botocore.serialize
import botocore.session
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bidistream.platform.control_api import ControlApi, ControlLimits
from bidistream.platform.manager import VariantPlan
from bidistream.platform.states import EndpointEvent
from bidistream.platform.store import Store

_MODEL = botocore.session.get_session().get_service_model("sagemaker")
_SERIALIZER = botocore.serialize.create_serializer("json", include_validation=False)
_PARSER = botocore.parsers.create_parser("json")


class FakeDeployer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[VariantPlan] | None]] = []

    def deploy(self, name: str, plans: list[VariantPlan]) -> None:
        self.calls.append(("deploy", name, plans))

    def redeploy(self, name: str, plans: list[VariantPlan]) -> None:
        self.calls.append(("redeploy", name, plans))

    def remove(self, name: str) -> None:
        self.calls.append(("remove", name, None))


class Client:
    """Calls the API the way boto3 would and returns what boto3 would return."""

    def __init__(self, api: ControlApi) -> None:
        self.api = api

    def __call__(self, op: str, **params: Any) -> dict[str, Any]:
        op_model = _MODEL.operation_model(op)
        request = _SERIALIZER.serialize_to_request(params, op_model)
        headers = dict(request["headers"])
        headers["Authorization"] = (
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/eu-west-1/sagemaker/aws4_request, Signature=x"
        )
        status, out_headers, body = self.api.dispatch(headers["X-Amz-Target"], request["body"], headers)
        response = {"status_code": status, "headers": out_headers, "body": body}
        parsed: dict[str, Any] = _PARSER.parse(response, op_model.output_shape)
        parsed["_status"] = status
        return parsed


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Client, FakeDeployer, Store]:
    store = Store(tmp_path / "s.sqlite3")
    deployer = FakeDeployer()
    clock = iter(float(1_700_000_000 + i) for i in range(1000))
    api = ControlApi(
        store, deployer, limits=ControlLimits(max_instances_per_endpoint=8), clock=lambda: next(clock)
    )
    return Client(api), deployer, store


def _error(result: dict[str, Any]) -> tuple[int, str, str]:
    return result["_status"], result["Error"]["Code"], result["Error"]["Message"]


def _model(call: Client, name: str = "m1", image: str = "bidistream/echo") -> dict[str, Any]:
    return call(
        "CreateModel",
        ModelName=name,
        PrimaryContainer={"Image": image, "Environment": {"A": "1"}},
        ExecutionRoleArn="arn:aws:iam::000000000000:role/x",
    )


def _config(call: Client, name: str = "c1", **variant: Any) -> dict[str, Any]:
    pv = {
        "VariantName": "AllTraffic",
        "ModelName": "m1",
        "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.large",
    }
    pv.update(variant)
    return call("CreateEndpointConfig", EndpointConfigName=name, ProductionVariants=[pv])


def test_model_round_trip(setup: tuple[Client, FakeDeployer, Store]) -> None:
    call, _, _ = setup
    created = _model(call)
    assert created["ModelArn"] == "arn:aws:sagemaker:eu-west-1:000000000000:model/m1"
    desc = call("DescribeModel", ModelName="m1")
    assert desc["PrimaryContainer"] == {"Image": "bidistream/echo", "Environment": {"A": "1"}}
    assert isinstance(desc["CreationTime"], dt.datetime)
    assert desc["ExecutionRoleArn"].endswith("role/x")
    listed = call("ListModels")
    assert [m["ModelName"] for m in listed["Models"]] == ["m1"]
    assert call("DeleteModel", ModelName="m1")["_status"] == 200
    assert _error(call("DescribeModel", ModelName="m1"))[:2] == (400, "ValidationException")


def test_endpoint_lifecycle_calls_the_deployer(setup: tuple[Client, FakeDeployer, Store]) -> None:
    call, deployer, store = setup
    _model(call)
    _config(call, InitialVariantWeight=2.0, ContainerStartupHealthCheckTimeoutInSeconds=60)
    arn = call("CreateEndpoint", EndpointName="ep", EndpointConfigName="c1")["EndpointArn"]
    assert arn == "arn:aws:sagemaker:eu-west-1:000000000000:endpoint/ep"
    ((kind, name, plans),) = deployer.calls
    assert (kind, name) == ("deploy", "ep") and plans is not None
    assert plans[0] == VariantPlan(
        "AllTraffic", "m1", "bidistream/echo", {"A": "1"}, "ml.m5.large", 1, 2.0, 60
    )
    desc = call("DescribeEndpoint", EndpointName="ep")
    assert desc["EndpointStatus"] == "Creating"
    assert desc["ProductionVariants"][0]["DesiredInstanceCount"] == 1
    assert desc["ProductionVariants"][0]["CurrentInstanceCount"] == 0
    assert isinstance(desc["LastModifiedTime"], dt.datetime)
    # Only InService endpoints can be updated.
    status, code, msg = _error(call("UpdateEndpoint", EndpointName="ep", EndpointConfigName="c1"))
    assert (status, code) == (400, "ValidationException") and "Creating" in msg
    store.commit("ep", event=EndpointEvent.DEPLOYED)  # what the manager writes when instances are up
    upd = call(
        "UpdateEndpointWeightsAndCapacities",
        EndpointName="ep",
        DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 3}],
    )
    assert upd["EndpointArn"] == arn
    assert deployer.calls[-1][0] == "redeploy" and deployer.calls[-1][2][0].instance_count == 3  # type: ignore[index]
    desc = call("DescribeEndpoint", EndpointName="ep")
    assert desc["EndpointStatus"] == "Updating"
    assert desc["ProductionVariants"][0]["DesiredInstanceCount"] == 3
    listed = call("ListEndpoints", StatusEquals="Updating")
    assert [e["EndpointName"] for e in listed["Endpoints"]] == ["ep"]
    assert call("DeleteEndpoint", EndpointName="ep")["_status"] == 200
    assert deployer.calls[-1] == ("remove", "ep", None)
    assert call("DescribeEndpoint", EndpointName="ep")["EndpointStatus"] == "Deleting"


def test_configs_list_sort_and_page(setup: tuple[Client, FakeDeployer, Store]) -> None:
    call, _, _ = setup
    _model(call)
    for name in ("c1", "c2", "c3"):
        _config(call, name)
    page1 = call("ListEndpointConfigs", MaxResults=2, SortBy="Name", SortOrder="Ascending")
    assert [c["EndpointConfigName"] for c in page1["EndpointConfigs"]] == ["c1", "c2"]
    page2 = call(
        "ListEndpointConfigs",
        MaxResults=2,
        SortBy="Name",
        SortOrder="Ascending",
        NextToken=page1["NextToken"],
    )
    assert [c["EndpointConfigName"] for c in page2["EndpointConfigs"]] == ["c3"] and "NextToken" not in page2
    newest = call("ListEndpointConfigs", NameContains="C")
    assert [c["EndpointConfigName"] for c in newest["EndpointConfigs"]] == ["c3", "c2", "c1"]
    desc = call("DescribeEndpointConfig", EndpointConfigName="c2")
    assert desc["ProductionVariants"][0]["InstanceType"] == "ml.m5.large"
    assert call("DeleteEndpointConfig", EndpointConfigName="c2")["_status"] == 200
    assert _error(call("DeleteEndpointConfig", EndpointConfigName="c2"))[1] == "ValidationException"


@pytest.mark.parametrize(
    ("op", "params", "needle"),
    [
        (
            "CreateModel",
            {"ModelName": "bad_name", "PrimaryContainer": {"Image": "bidistream/echo"}},
            "modelName",
        ),
        (
            "CreateModel",
            {"ModelName": "x" * 64, "PrimaryContainer": {"Image": "bidistream/echo"}},
            "length less",
        ),
        (
            "CreateModel",
            {"ModelName": "m2", "PrimaryContainer": {"Image": "bidistream/nope"}},
            "not a built-in",
        ),
        ("CreateModel", {"ModelName": "m2", "PrimaryContainer": {"Image": "what ever"}}, "not a valid image"),
        (
            "CreateModel",
            {"ModelName": "m2", "PrimaryContainer": {"Image": "bidistream/echo", "Environment": {"1X": "v"}}},
            "environment.key",
        ),
        ("CreateModel", {"ModelName": "m2"}, "PrimaryContainer"),
        (
            "CreateModel",
            {"ModelName": "m1", "PrimaryContainer": {"Image": "bidistream/echo"}},
            "already existing model",
        ),
        (
            "CreateEndpointConfig",
            {
                "EndpointConfigName": "c9",
                "ProductionVariants": [{"VariantName": "v", "ModelName": "ghost", "InitialInstanceCount": 1}],
            },
            "Could not find model",
        ),
        (
            "CreateEndpointConfig",
            {
                "EndpointConfigName": "c9",
                "ProductionVariants": [{"VariantName": "v", "ModelName": "m1", "InitialInstanceCount": 0}],
            },
            "initialInstanceCount",
        ),
        (
            "CreateEndpointConfig",
            {
                "EndpointConfigName": "c9",
                "ProductionVariants": [
                    {
                        "VariantName": "v",
                        "ModelName": "m1",
                        "InitialInstanceCount": 1,
                        "InitialVariantWeight": -1,
                    }
                ],
            },
            "initialVariantWeight",
        ),
        (
            "CreateEndpointConfig",
            {
                "EndpointConfigName": "c9",
                "ProductionVariants": [
                    {
                        "VariantName": "v",
                        "ModelName": "m1",
                        "InitialInstanceCount": 1,
                        "InitialVariantWeight": 0,
                    }
                ],
            },
            "sum of InitialVariantWeight",
        ),
        (
            "CreateEndpointConfig",
            {
                "EndpointConfigName": "c9",
                "ProductionVariants": [
                    {"VariantName": "v", "ModelName": "m1", "InitialInstanceCount": 1},
                    {"VariantName": "v", "ModelName": "m1", "InitialInstanceCount": 1},
                ],
            },
            "Duplicate VariantName",
        ),
        (
            "CreateEndpointConfig",
            {
                "EndpointConfigName": "c9",
                "ProductionVariants": [{"VariantName": "v_1", "ModelName": "m1", "InitialInstanceCount": 1}],
            },
            "variantName",
        ),
        (
            "CreateEndpointConfig",
            {"EndpointConfigName": "c9", "ProductionVariants": []},
            "productionVariants",
        ),
        (
            "CreateEndpointConfig",
            {
                "EndpointConfigName": "c9",
                "ProductionVariants": [
                    {
                        "VariantName": "v",
                        "ModelName": "m1",
                        "InitialInstanceCount": 1,
                        "ContainerStartupHealthCheckTimeoutInSeconds": 5,
                    }
                ],
            },
            "between 60 and 3600",
        ),
        (
            "CreateEndpointConfig",
            {
                "EndpointConfigName": "c1",
                "ProductionVariants": [{"VariantName": "v", "ModelName": "m1", "InitialInstanceCount": 1}],
            },
            "already existing endpoint configuration",
        ),
        (
            "CreateEndpoint",
            {"EndpointName": "ep2", "EndpointConfigName": "ghost"},
            "Could not find endpoint configuration",
        ),
        ("CreateEndpoint", {"EndpointName": "-bad", "EndpointConfigName": "c1"}, "endpointName"),
        ("CreateEndpoint", {"EndpointName": "ep", "EndpointConfigName": "c1"}, "already existing endpoint"),
        ("DescribeEndpoint", {"EndpointName": "ghost"}, "Could not find endpoint"),
        ("DeleteEndpoint", {"EndpointName": "ghost"}, "Could not find endpoint"),
        ("DeleteModel", {"ModelName": "ghost"}, "Could not find model"),
        (
            "UpdateEndpoint",
            {"EndpointName": "ep", "EndpointConfigName": "ghost"},
            "Could not find endpoint configuration",
        ),
        (
            "UpdateEndpointWeightsAndCapacities",
            {
                "EndpointName": "ep",
                "DesiredWeightsAndCapacities": [{"VariantName": "ghost", "DesiredWeight": 1}],
            },
            "not part of endpoint",
        ),
        (
            "UpdateEndpointWeightsAndCapacities",
            {
                "EndpointName": "ep",
                "DesiredWeightsAndCapacities": [{"VariantName": "AllTraffic", "DesiredInstanceCount": 0}],
            },
            "desiredInstanceCount",
        ),
        (
            "UpdateEndpointWeightsAndCapacities",
            {
                "EndpointName": "ep",
                "DesiredWeightsAndCapacities": [{"VariantName": "AllTraffic", "DesiredWeight": 0}],
            },
            "sum of the variant weights",
        ),
        ("ListEndpoints", {"StatusEquals": "Sleeping"}, "statusEquals"),
        ("ListModels", {"MaxResults": 0}, "maxResults"),
    ],
)
def test_validation_errors_name_field_and_rule(
    setup: tuple[Client, FakeDeployer, Store], op: str, params: dict[str, Any], needle: str
) -> None:
    call, _, store = setup
    _model(call)
    _config(call)
    call("CreateEndpoint", EndpointName="ep", EndpointConfigName="c1")
    store.commit("ep", event=EndpointEvent.DEPLOYED)  # what the manager writes when instances are up
    status, code, message = _error(call(op, **params))
    assert (status, code) == (400, "ValidationException")
    assert needle in message


def test_instance_limit_is_resource_limit_exceeded(setup: tuple[Client, FakeDeployer, Store]) -> None:
    call, _, _ = setup
    _model(call)
    status, code, message = _error(_config(call, InitialInstanceCount=9))
    assert (status, code) == (400, "ResourceLimitExceeded") and "limit is 8" in message


def test_protocol_errors(setup: tuple[Client, FakeDeployer, Store]) -> None:
    call, _, _ = setup
    status, headers, body = call.api.dispatch("SageMaker.CreateTrainingJob", b"{}", {})
    assert status == 400 and json.loads(body)["__type"] == "UnknownOperationException"
    status, headers, body = call.api.dispatch("SageMaker.ListModels", b"{not json", {})
    assert status == 400 and json.loads(body)["__type"] == "SerializationException"
    assert headers["Content-Type"] == "application/x-amz-json-1.1"
    status, _, body = call.api.dispatch("SageMaker.ListModels", b"", {})
    assert status == 200 and json.loads(body) == {"Models": []}


OPERATIONS = list(ControlApi(Store(":memory:"), FakeDeployer()).operations)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=30), children, max_size=4)
    ),
    max_leaves=12,
)
_fields = st.sampled_from(
    [
        "ModelName",
        "EndpointName",
        "EndpointConfigName",
        "PrimaryContainer",
        "ProductionVariants",
        "DesiredWeightsAndCapacities",
        "MaxResults",
        "NextToken",
        "SortBy",
        "StatusEquals",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    op=st.sampled_from(OPERATIONS),
    body=st.dictionaries(_fields, _json_values, max_size=4),
)
def test_any_json_gets_a_modeled_answer_never_a_crash(
    setup: tuple[Client, FakeDeployer, Store], op: str, body: dict[str, Any]
) -> None:
    call, _, _ = setup
    status, headers, raw = call.api.dispatch(f"SageMaker.{op}", json.dumps(body).encode(), {})
    answer = json.loads(raw)
    if status == 200:
        assert "__type" not in answer
    else:
        assert status == 400, answer
        assert answer["__type"] in ("ValidationException", "ResourceLimitExceeded")
        assert answer["message"]
        assert headers["x-amzn-ErrorType"] == answer["__type"]
