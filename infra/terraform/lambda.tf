# The front: the API (Chalice app.app: routes, ledger, archive; ~1 MB, no pandas or DP
# library) and the token authorizer (app.token_authorizer, ~1 MB: Chalice's runtime,
# pynamodb and a few chalicelib modules), each from its package (scripts/package_lambda.py).
# The engines run in the workers (workers.tf). Memory and timeouts: see the measurements in
# infra/README.md.

resource "aws_s3_object" "authorizer_package" {
  bucket      = aws_s3_bucket.neblina["artifacts"].id
  key         = "lambda/authorizer-${filesha256(var.authorizer_package)}.zip"
  source      = var.authorizer_package
  source_hash = filemd5(var.authorizer_package)
  tags        = local.tags
}

resource "aws_s3_object" "api_package" {
  count = var.api_image_uri == null ? 1 : 0

  bucket      = aws_s3_bucket.neblina["artifacts"].id
  key         = "lambda/api-${filesha256(var.api_package)}.zip"
  source      = var.api_package
  source_hash = filemd5(var.api_package)
  tags        = local.tags
}

resource "aws_cloudwatch_log_group" "api" {
  name              = "/aws/lambda/${local.api_function_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = local.kms_key_arn
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "authorizer" {
  name              = "/aws/lambda/${local.authorizer_function_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = local.kms_key_arn
  tags              = local.tags
}

resource "aws_lambda_function" "api" {
  # checkov:skip=CKV_AWS_116:API Gateway invokes synchronously; a dead-letter queue only receives failed asynchronous invocations.
  # checkov:skip=CKV_AWS_117:The function reaches only DynamoDB, S3, Lambda and KMS through IAM-authenticated AWS endpoints; a VPC would add NAT or endpoint costs and no control.
  # checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile chosen by the operator; the package is built reproducibly by `make package`.
  # checkov:skip=CKV_AWS_115:Concurrency is bounded by the stage throttling; reserving some is var.api_reserved_concurrency (off by default: accounts with a quota of 10 cannot reserve any).
  function_name = local.api_function_name
  description   = "Neblina REST API, the front (Chalice app.app)"
  role          = aws_iam_role.api.arn
  architectures = ["x86_64"]
  memory_size   = var.api_memory_mb
  timeout       = var.api_timeout_seconds
  kms_key_arn   = local.kms_key_arn
  tags          = local.tags

  package_type      = var.api_image_uri == null ? "Zip" : "Image"
  image_uri         = var.api_image_uri
  runtime           = var.api_image_uri == null ? "python3.12" : null
  handler           = var.api_image_uri == null ? "app.app" : null
  s3_bucket         = var.api_image_uri == null ? aws_s3_object.api_package[0].bucket : null
  s3_key            = var.api_image_uri == null ? aws_s3_object.api_package[0].key : null
  s3_object_version = var.api_image_uri == null ? aws_s3_object.api_package[0].version_id : null

  reserved_concurrent_executions = var.api_reserved_concurrency == null ? -1 : var.api_reserved_concurrency

  environment {
    # local.spark_emr_environment: the EMR Serverless hand-off's settings (emr.tf), if on
    variables = merge(local.environment, local.spark_emr_environment, { NEBLINA_WORKERS = local.workers_config })
  }

  tracing_config {
    mode = var.tracing_mode
  }

  lifecycle {
    precondition {
      condition     = var.limits.query_lease_seconds > var.api_timeout_seconds
      error_message = "limits.query_lease_seconds must exceed api_timeout_seconds: a query still running past its lease is treated as failed."
    }
  }

  depends_on = [aws_cloudwatch_log_group.api, aws_iam_role_policy.api]
}

resource "aws_lambda_function" "authorizer" {
  # checkov:skip=CKV_AWS_116:API Gateway invokes authorizers synchronously; a dead-letter queue only receives failed asynchronous invocations.
  # checkov:skip=CKV_AWS_117:The function reaches only DynamoDB and KMS through IAM-authenticated AWS endpoints; a VPC would add NAT or endpoint costs and no control.
  # checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile chosen by the operator; the package is built reproducibly by `make package`.
  # checkov:skip=CKV_AWS_115:Concurrency is bounded by the stage throttling (every authorized request passes through it first).
  function_name     = local.authorizer_function_name
  description       = "Neblina API token authorizer (Chalice app.token_authorizer)"
  role              = aws_iam_role.authorizer.arn
  architectures     = ["x86_64"]
  memory_size       = var.authorizer_memory_mb
  timeout           = var.authorizer_timeout_seconds
  kms_key_arn       = local.kms_key_arn
  runtime           = "python3.12"
  handler           = "app.token_authorizer"
  s3_bucket         = aws_s3_object.authorizer_package.bucket
  s3_key            = aws_s3_object.authorizer_package.key
  s3_object_version = aws_s3_object.authorizer_package.version_id
  tags              = local.tags

  environment {
    variables = local.environment
  }

  tracing_config {
    mode = var.tracing_mode
  }

  depends_on = [aws_cloudwatch_log_group.authorizer, aws_iam_role_policy.authorizer]
}

resource "aws_lambda_permission" "api" {
  statement_id  = "AllowApiGatewayInvoke"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.api.function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_api_gateway_rest_api.neblina.execution_arn}/*/*/*"
}

resource "aws_lambda_permission" "authorizer" {
  statement_id  = "AllowApiGatewayAuthorizer"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.authorizer.function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_api_gateway_rest_api.neblina.execution_arn}/authorizers/${aws_api_gateway_authorizer.token.id}"
}
