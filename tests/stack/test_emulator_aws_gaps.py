"""The embedded emulator behaves as AWS does where `terraform apply` of infra/terraform needs it.

Each test names one gap of moto 5.2.5 that localstack/emulator.py closes (see the docstrings
of ``install_aws_managed_policies``, ``accept_policy_based_log_delivery`` and
``honour_bucket_policy_conditions``), and each keeps a check that must still refuse, so
the patches cannot simply turn a check off. One emulator in this process, on a free port.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from emulator import EmulatorThread


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with EmulatorThread() as emulator:
        yield emulator.url


def client(endpoint: str, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def bucket(s3: Any, ownership: str | None = None) -> str:
    name = f"gap-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    if ownership:
        s3.put_bucket_ownership_controls(
            Bucket=name, OwnershipControls={"Rules": [{"ObjectOwnership": ownership}]}
        )
    return name


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_an_aws_managed_policy_can_be_attached_to_a_role(endpoint: str) -> None:
    iam = client(endpoint, "iam")
    role = f"role-{uuid.uuid4().hex[:8]}"
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "apigateway.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))
    arn = "arn:aws:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
    iam.attach_role_policy(RoleName=role, PolicyArn=arn)
    attached = iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [arn]
    document = iam.get_policy_version(PolicyArn=arn, VersionId="v1")["PolicyVersion"]
    assert "logs:PutLogEvents" in json.dumps(document["Document"])
    # a policy AWS does not have is still refused
    with pytest.raises(ClientError) as refused:
        iam.attach_role_policy(RoleName=role, PolicyArn="arn:aws:iam::aws:policy/NoSuchPolicy")
    assert error_code(refused) == "NoSuchEntity"


def test_logging_to_a_bucket_with_acls_disabled_needs_no_grant_at_put_time(endpoint: str) -> None:
    s3 = client(endpoint, "s3")
    source = bucket(s3)
    for ownership in ("BucketOwnerEnforced", None):  # None: AWS's default since 2023
        target = bucket(s3, ownership)
        # the target's bucket policy for logging.s3.amazonaws.com may come later (Terraform
        # creates the two independently)
        s3.put_bucket_logging(
            Bucket=source,
            BucketLoggingStatus={"LoggingEnabled": {"TargetBucket": target, "TargetPrefix": "x/"}},
        )
        enabled = s3.get_bucket_logging(Bucket=source)["LoggingEnabled"]
        assert enabled == {"TargetBucket": target, "TargetPrefix": "x/"}


def test_logging_still_refuses_a_missing_target_or_an_acl_bucket_without_the_grant(
    endpoint: str,
) -> None:
    s3 = client(endpoint, "s3")
    source = bucket(s3)
    acl_target = bucket(s3, "ObjectWriter")  # ACLs on: the log-delivery grant is needed
    for target in (acl_target, f"missing-{uuid.uuid4().hex[:8]}"):
        with pytest.raises(ClientError) as refused:
            s3.put_bucket_logging(
                Bucket=source,
                BucketLoggingStatus={
                    "LoggingEnabled": {"TargetBucket": target, "TargetPrefix": ""}
                },
            )
        assert error_code(refused) == "InvalidTargetBucketForLogging"


def tls_only_policy(name: str) -> dict[str, Any]:
    """The statement of infra/terraform/s3.tf's tls_only policy."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def test_objects_of_a_tls_only_bucket_can_be_written_and_read(endpoint: str) -> None:
    s3 = client(endpoint, "s3")
    name = bucket(s3, "BucketOwnerEnforced")
    s3.put_bucket_policy(Bucket=name, Policy=json.dumps(tls_only_policy(name)))
    s3.put_object(Bucket=name, Key="PENGUIN/penguins.csv", Body=b"a,b\n1,2\n")
    assert s3.head_object(Bucket=name, Key="PENGUIN/penguins.csv")["ContentLength"] == 8
    body = s3.get_object(Bucket=name, Key="PENGUIN/penguins.csv")["Body"].read()
    assert body == b"a,b\n1,2\n"


@pytest.mark.parametrize(
    "condition",
    [None, {"Bool": {"aws:SecureTransport": "true"}}, {"Null": {"aws:SourceVpc": "true"}}],
    ids=["unconditional", "condition-met", "absent-key-null-test"],
)
def test_a_deny_whose_condition_holds_still_denies(
    endpoint: str, condition: dict[str, Any] | None
) -> None:
    s3 = client(endpoint, "s3")
    name = bucket(s3)
    s3.put_object(Bucket=name, Key="k", Body=b"v")
    statement: dict[str, Any] = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{name}/*",
    }
    if condition:
        statement["Condition"] = condition
    s3.put_bucket_policy(
        Bucket=name, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    )
    with pytest.raises(ClientError) as denied:
        s3.get_object(Bucket=name, Key="k")
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
