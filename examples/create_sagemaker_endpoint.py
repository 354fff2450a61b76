"""Create a model, an endpoint config and an endpoint, then wait until it is InService.

The seed's create script for bidistream: the same boto3 calls a SageMaker user makes. boto3 reads the
control-plane URL from AWS_ENDPOINT_URL_SAGEMAKER and the CA from AWS_CA_BUNDLE (`bidistream env`
exports both), so nothing here names bidistream but the image.
"""

from __future__ import annotations

import argparse
import sys

import boto3


def main() -> int:
    parser = argparse.ArgumentParser(description="Create a bidirectional-streaming endpoint.")
    parser.add_argument(
        "--container-image-uri", default="bidistream/echo", help="image (default: %(default)s)"
    )
    parser.add_argument(
        "--role-arn", default="arn:aws:iam::000000000000:role/bidistream", help="execution role"
    )
    parser.add_argument("--endpoint-name", default="bidi-echo", help="endpoint name (default: %(default)s)")
    parser.add_argument("--instance-type", default="ml.c5.xlarge")
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument(
        "--environment", action="append", default=[], metavar="KEY=VALUE", help="container environment"
    )
    args = parser.parse_args()

    model_name = f"{args.endpoint_name}-model"
    config_name = f"{args.endpoint_name}-config"
    environment = dict(item.split("=", 1) for item in args.environment)
    sm = boto3.client("sagemaker")

    sm.create_model(
        ModelName=model_name,
        ExecutionRoleArn=args.role_arn,
        PrimaryContainer={"Image": args.container_image_uri, "Environment": environment},
    )
    print(f"model:           {model_name}")
    sm.create_endpoint_config(
        EndpointConfigName=config_name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": model_name,
                "InstanceType": args.instance_type,
                "InitialInstanceCount": args.instance_count,
            }
        ],
    )
    print(f"endpoint config: {config_name}")
    sm.create_endpoint(EndpointName=args.endpoint_name, EndpointConfigName=config_name)
    print(f"endpoint:        {args.endpoint_name} (waiting for InService)")
    # SageMaker's waiter polls every 30 s; bidistream endpoints start in seconds.
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=args.endpoint_name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )
    status = sm.describe_endpoint(EndpointName=args.endpoint_name)["EndpointStatus"]
    print(f"endpoint {args.endpoint_name} is {status}")
    return 0 if status == "InService" else 1


if __name__ == "__main__":
    sys.exit(main())
