"""Delete an endpoint, its endpoint config and its model, as the seed's clean-up script does."""

from __future__ import annotations

import argparse
import sys

import boto3
import botocore.exceptions


def main() -> int:
    parser = argparse.ArgumentParser(description="Delete a bidirectional-streaming endpoint and its parts.")
    parser.add_argument("--endpoint-name", default="bidi-echo")
    parser.add_argument("--endpoint-config-name", help="default: ENDPOINT-config")
    parser.add_argument("--model-name", help="default: ENDPOINT-model")
    args = parser.parse_args()
    config_name = args.endpoint_config_name or f"{args.endpoint_name}-config"
    model_name = args.model_name or f"{args.endpoint_name}-model"
    sm = boto3.client("sagemaker")

    failures = 0
    for what, call, kwargs in (
        ("endpoint", sm.delete_endpoint, {"EndpointName": args.endpoint_name}),
        ("endpoint config", sm.delete_endpoint_config, {"EndpointConfigName": config_name}),
        ("model", sm.delete_model, {"ModelName": model_name}),
    ):
        try:
            call(**kwargs)
            print(f"deleted {what} {next(iter(kwargs.values()))}")
        except botocore.exceptions.ClientError as exc:
            failures += 1
            print(f"could not delete {what}: {exc.response['Error']['Message']}", file=sys.stderr)
    sm.get_waiter("endpoint_deleted").wait(
        EndpointName=args.endpoint_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
