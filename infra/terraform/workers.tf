# Engine workers (docs/architecture.md): one Lambda function per engine family, each with its
# own package (scripts/package_lambda.py: build/lambda/worker-<family>.zip), memory, timeout,
# role and log group. The front (the API function) invokes them: synchronously for prices
# and waited-for queries, asynchronously ("Event") for jobs, which Lambda retries twice and
# then hands to the dead-letter queue below. A retried job never runs a mechanism twice: the
# worker first claims the record (store.claim), and a claimed record is not claimable.
#
# Adding a worker: an entry in var.workers and in var.worker_packages (and its package entry
# in scripts/package_lambda.py), or, for a family too large for a zip (polars), an entry in
# var.workers with the image_uri of infra/docker/Dockerfile.worker; everything here follows.

locals {
  zipped_workers        = { for family, worker in var.workers : family => worker if worker.image_uri == null }
  worker_function_names = { for family in keys(var.workers) : family => "${var.name}-worker-${family}" }

  # NEBLINA_WORKERS of the front: which function serves each family (chalicelib/hop.py).
  workers_config = jsonencode({
    for family, function in aws_lambda_function.worker : family => { function = function.function_name }
  })
}

resource "aws_s3_object" "worker_package" {
  for_each = local.zipped_workers

  # Over 50 MB zipped: Lambda takes them only from S3.
  bucket      = aws_s3_bucket.neblina["artifacts"].id
  key         = "lambda/worker-${each.key}-${filesha256(var.worker_packages[each.key])}.zip"
  source      = var.worker_packages[each.key]
  source_hash = filemd5(var.worker_packages[each.key])
  tags        = local.tags
}

resource "aws_cloudwatch_log_group" "worker" {
  for_each = var.workers

  name              = "/aws/lambda/${local.worker_function_names[each.key]}"
  retention_in_days = var.log_retention_days
  kms_key_id        = local.kms_key_arn
  tags              = local.tags
}

resource "aws_lambda_function" "worker" {
  # checkov:skip=CKV_AWS_116:Asynchronous invocations fail over to the on-failure destination of aws_lambda_function_event_invoke_config.worker (the SQS queue below), which records the request and the error; a dead_letter_config would receive the same events a second time, without the error.
  # checkov:skip=CKV_AWS_117:The function reaches only DynamoDB, S3, SQS and KMS through IAM-authenticated AWS endpoints; a VPC would add NAT or endpoint costs and no control.
  # checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile chosen by the operator; the package is built reproducibly by `make package`.
  # checkov:skip=CKV_AWS_115:Concurrency is bounded by the front's (every invocation comes from it); reserving some is var.workers[*].reserved_concurrency (off by default: accounts with a quota of 10 cannot reserve any).
  for_each = var.workers

  function_name = local.worker_function_names[each.key]
  description   = "Neblina engine worker ${each.key} (chalicelib.worker.lambda_handler)"
  role          = aws_iam_role.worker[each.key].arn
  architectures = ["x86_64"]
  memory_size   = each.value.memory_mb
  timeout       = each.value.timeout_seconds
  kms_key_arn   = local.kms_key_arn
  tags          = local.tags

  # A zip from worker_packages, or an image (whose CMD is the same handler).
  package_type      = each.value.image_uri == null ? "Zip" : "Image"
  image_uri         = each.value.image_uri
  runtime           = each.value.image_uri == null ? "python3.12" : null
  handler           = each.value.image_uri == null ? "chalicelib.worker.lambda_handler" : null
  s3_bucket         = try(aws_s3_object.worker_package[each.key].bucket, null)
  s3_key            = try(aws_s3_object.worker_package[each.key].key, null)
  s3_object_version = try(aws_s3_object.worker_package[each.key].version_id, null)

  reserved_concurrent_executions = each.value.reserved_concurrency == null ? -1 : each.value.reserved_concurrency

  environment {
    variables = merge(local.environment, { NEBLINA_WORKER = each.key })
  }

  tracing_config {
    mode = var.tracing_mode
  }

  lifecycle {
    precondition {
      condition     = each.value.image_uri != null || contains(keys(var.worker_packages), each.key)
      error_message = "worker_packages has no package for this worker (build/lambda/worker-<family>.zip), and it has no image_uri."
    }
    precondition {
      condition     = var.limits.query_lease_seconds > each.value.timeout_seconds
      error_message = "limits.query_lease_seconds must exceed every worker's timeout: a waited-for query still running past its lease is treated as failed."
    }
  }

  depends_on = [aws_cloudwatch_log_group.worker, aws_iam_role_policy.worker]
}

# Failed asynchronous invocations (a job's worker crashed or timed out three times, or its
# event aged out before a worker took it): the request and the error, kept 14 days.
resource "aws_sqs_queue" "worker_dlq" {
  name                      = "${var.name}-worker-dlq"
  kms_master_key_id         = local.kms_key_arn
  message_retention_seconds = 1209600
  tags                      = local.tags
}

resource "aws_lambda_function_event_invoke_config" "worker" {
  for_each = aws_lambda_function.worker

  function_name                = each.value.function_name
  maximum_event_age_in_seconds = var.worker_max_event_age_seconds
  maximum_retry_attempts       = 2 # safe: a retried job finds its record claimed and stops

  destination_config {
    on_failure {
      destination = aws_sqs_queue.worker_dlq.arn
    }
  }

  lifecycle {
    precondition {
      # A job's lease runs from its submission: it must outlast every delivery Lambda may
      # still make (up to the event's maximum age) plus the worker's run, or a job still
      # legitimately running could be settled as failed by the lease rule.
      condition     = var.limits.job_lease_seconds >= var.worker_max_event_age_seconds + var.workers[each.key].timeout_seconds
      error_message = "limits.job_lease_seconds must be at least worker_max_event_age_seconds plus the worker's timeout."
    }
  }

  depends_on = [aws_iam_role_policy.worker]
}

# --- IAM: one role per worker -----------------------------------------------------------
# What the worker code calls (tests/deploy/test_package_lambda.py records the calls each
# packaged worker makes against the emulator and checks each is allowed here):
#   GetItem/UpdateItem on queries (claim, progress, finish, fail; the refund reads the
#   record's cap flag); the refund of a record that failed before any engine got rows is
#   one TransactWriteItems, which IAM checks as UpdateItem on grants (and caps, for a
#   capped dataset) and on queries. Nothing on users, tokens, datasets (the front hands the
#   dataset over) or ratelimits, no PutItem anywhere: a worker never debits.
#   GetObject on the datasets bucket (the rows, and the version check); PutObject under its
#   archive/ prefix only (results over NEBLINA_INLINE_RESULT_BYTES).
#   sqs:SendMessage on the dead-letter queue (Lambda sends failed events with the
#   function's role), KMS for the tables, the objects, the queue and the environment.

resource "aws_iam_role" "worker" {
  for_each = var.workers

  name               = "${var.name}-worker-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "worker" {
  for_each = var.workers

  statement {
    sid       = "RunReservedQueries"
    actions   = ["dynamodb:GetItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.neblina["queries"].arn]
  }
  statement {
    sid     = "RefundBeforeTheRead"
    actions = ["dynamodb:UpdateItem"]
    resources = [
      aws_dynamodb_table.neblina["grants"].arn,
      aws_dynamodb_table.neblina["caps"].arn,
    ]
  }
  statement {
    sid     = "ReadDatasetObjects"
    actions = ["s3:GetObject"]
    resources = concat(
      ["${aws_s3_bucket.neblina["datasets"].arn}/*"],
      [for arn in var.extra_dataset_bucket_arns : "${arn}/*"],
    )
  }
  statement {
    # Results too large for a queries item (chalicelib/result_overflow.py); nothing else in
    # the bucket is writable. Reading them back is ReadDatasetObjects.
    sid       = "ArchiveLargeResults"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.neblina["datasets"].arn}/archive/*"]
  }
  statement {
    sid       = "SendFailedJobsToTheDeadLetterQueue"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.worker_dlq.arn]
  }
  statement {
    sid       = "UseNeblinaKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [local.kms_key_arn]
  }
  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.worker[each.key].arn}:*"]
  }
  statement {
    sid       = "XRayHasNoResourceLevelPermissions"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "worker" {
  for_each = var.workers

  name   = "${var.name}-worker-${each.key}"
  role   = aws_iam_role.worker[each.key].id
  policy = data.aws_iam_policy_document.worker[each.key].json
}
