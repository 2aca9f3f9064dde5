# Neblina on AWS: DynamoDB tables, S3 buckets, the front's two Lambda functions (API and
# token authorizer), one Lambda function per engine worker with its dead-letter queue, a
# REST API Gateway, least-privilege IAM, one KMS key. See infra/README.md.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  partition  = data.aws_partition.current.partition

  # The code names its tables "<NEBLINA_TABLE_PREFIX><kind>" (chalicelib/config.py).
  table_prefix  = "${var.name}-"
  kms_key_arn   = var.kms_key_arn != null ? var.kms_key_arn : aws_kms_key.neblina[0].arn
  datasets_name = coalesce(var.datasets_bucket_name, "${var.name}-datasets-${local.account_id}")

  api_function_name        = "${var.name}-api"
  authorizer_function_name = "${var.name}-authorizer"

  # Every variable the code reads (tests/test_infra_terraform.py derives that list from
  # the code and fails when one is missing here). AWS_REGION comes from the Lambda
  # runtime; AWS_ENDPOINT_URL is for emulators only and is never set in the cloud.
  environment = {
    NEBLINA_TABLE_PREFIX          = local.table_prefix
    NEBLINA_BUCKET                = local.datasets_name
    NEBLINA_STORE                 = "dynamodb"
    NEBLINA_LOG_LEVEL             = var.log_level
    NEBLINA_MAX_BODY_BYTES        = tostring(var.limits.max_body_bytes)
    NEBLINA_MAX_DUMMY_ROWS        = tostring(var.limits.max_dummy_rows)
    NEBLINA_MAX_QUERY_CHARS       = tostring(var.limits.max_query_chars)
    NEBLINA_QUERY_LEASE_SECONDS   = tostring(var.limits.query_lease_seconds)
    NEBLINA_JOB_LEASE_SECONDS     = tostring(var.limits.job_lease_seconds)
    NEBLINA_DATASET_CACHE_ENTRIES = tostring(var.limits.dataset_cache_entries)
    NEBLINA_MAX_EPSILON_PER_QUERY = var.limits.max_epsilon_per_query
    NEBLINA_MAX_DELTA_PER_QUERY   = var.limits.max_delta_per_query
    NEBLINA_RATE_LIMIT            = tostring(var.limits.rate_limit)
    NEBLINA_RATE_WINDOW_SECONDS   = tostring(var.limits.rate_window_seconds)
    NEBLINA_INLINE_RESULT_BYTES   = tostring(var.limits.inline_result_bytes)
    NEBLINA_MAX_RESULT_BYTES      = tostring(var.limits.max_result_bytes)
    NEBLINA_LOOKUP_CACHE_SECONDS  = tostring(var.limits.lookup_cache_seconds)
  }

  tags = merge({ application = "neblina" }, var.tags)
}
