# Least privilege, one role per function. Every resource is named; "*" appears only for
# the X-Ray actions, which have no resource-level permissions. The workers' roles are in
# workers.tf.
#
# What the code calls (tests/deploy/test_package_lambda.py records the calls the packaged
# functions make against the emulator and checks each is allowed here):
#   authorizer: GetItem on tokens and users; UpdateItem on tokens (the last use, at most
#   once a minute per token).
#   API (the front): GetItem on datasets; GetItem/UpdateItem on caps (a debit on a capped
#   dataset also debits its cap); GetItem/Query/UpdateItem on grants; GetItem/PutItem/
#   UpdateItem on queries and Query on its by_owner index (a debit is one
#   TransactWriteItems, which IAM checks as its PutItem/UpdateItem parts; a job whose hand-over
#   failed is refunded the same way); UpdateItem on ratelimits (the per-user counters);
#   GetObject under the datasets bucket's archive/ prefix only (results a worker wrote
#   there, read back for the researcher: the front never reads a dataset's rows);
#   lambda:InvokeFunction on the workers only.

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "api" {
  name               = "${var.name}-api"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = local.tags
}

resource "aws_iam_role" "authorizer" {
  name               = "${var.name}-authorizer"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "api" {
  statement {
    sid       = "ReadDatasets"
    actions   = ["dynamodb:GetItem"]
    resources = [aws_dynamodb_table.neblina["datasets"].arn]
  }
  statement {
    sid       = "DebitDatasetCaps"
    actions   = ["dynamodb:GetItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.neblina["caps"].arn]
  }
  statement {
    sid       = "DebitGrants"
    actions   = ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.neblina["grants"].arn]
  }
  statement {
    sid       = "ArchiveQueries"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.neblina["queries"].arn]
  }
  statement {
    sid       = "CountRequests"
    actions   = ["dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.neblina["ratelimits"].arn]
  }
  statement {
    sid       = "ListOwnQueries"
    actions   = ["dynamodb:Query"]
    resources = ["${aws_dynamodb_table.neblina["queries"].arn}/index/by_owner"]
  }
  statement {
    # Results a worker archived in S3 (too large for a queries item), read back for the
    # researcher. The rows of a dataset are read by the workers only.
    sid       = "ReadArchivedResults"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.neblina["datasets"].arn}/archive/*"]
  }
  statement {
    # Prices and waited-for queries (RequestResponse), jobs (Event): the workers only.
    sid       = "InvokeWorkers"
    actions   = ["lambda:InvokeFunction"]
    resources = [for function in aws_lambda_function.worker : function.arn]
  }
  statement {
    sid       = "UseNeblinaKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [local.kms_key_arn]
  }
  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.api.arn}:*"]
  }
  statement {
    sid       = "XRayHasNoResourceLevelPermissions"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }
}

data "aws_iam_policy_document" "authorizer" {
  statement {
    sid     = "LookUpTokensAndUsers"
    actions = ["dynamodb:GetItem"]
    resources = [
      aws_dynamodb_table.neblina["tokens"].arn,
      aws_dynamodb_table.neblina["users"].arn,
    ]
  }
  statement {
    sid       = "RecordTokenUse"
    actions   = ["dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.neblina["tokens"].arn]
  }
  statement {
    sid       = "UseNeblinaKey"
    actions   = ["kms:Decrypt"]
    resources = [local.kms_key_arn]
  }
  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.authorizer.arn}:*"]
  }
  statement {
    sid       = "XRayHasNoResourceLevelPermissions"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "api" {
  name   = "${var.name}-api"
  role   = aws_iam_role.api.id
  policy = data.aws_iam_policy_document.api.json
}

resource "aws_iam_role_policy" "authorizer" {
  name   = "${var.name}-authorizer"
  role   = aws_iam_role.authorizer.id
  policy = data.aws_iam_policy_document.authorizer.json
}

# API Gateway writes access logs with one role per account and region.
data "aws_iam_policy_document" "apigateway_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["apigateway.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "apigateway_logs" {
  count = var.manage_api_gateway_account ? 1 : 0

  name               = "${var.name}-apigateway-logs"
  assume_role_policy = data.aws_iam_policy_document.apigateway_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "apigateway_logs" {
  count = var.manage_api_gateway_account ? 1 : 0

  role       = aws_iam_role.apigateway_logs[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
}

resource "aws_api_gateway_account" "neblina" {
  count = var.manage_api_gateway_account ? 1 : 0

  cloudwatch_role_arn = aws_iam_role.apigateway_logs[0].arn
  depends_on          = [aws_iam_role_policy_attachment.apigateway_logs]
}
