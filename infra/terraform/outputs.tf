output "api_url" {
  description = "Base URL for the client: Client(url=..., token=...) or NEBLINA_URL."
  value       = aws_api_gateway_stage.neblina.invoke_url
}

output "table_prefix" {
  description = "NEBLINA_TABLE_PREFIX for admin tools (localstack/seed.py --real-aws, neblina-admin)."
  value       = local.table_prefix
}

output "table_names" {
  description = "The DynamoDB tables, by kind."
  value       = { for kind, table in aws_dynamodb_table.neblina : kind => table.name }
}

output "datasets_bucket" {
  description = "NEBLINA_BUCKET: where datasets and their metadata are uploaded."
  value       = aws_s3_bucket.neblina["datasets"].id
}

output "kms_key_arn" {
  description = "The key encrypting tables, buckets, logs and the functions' environment (uploaders need kms:GenerateDataKey on it)."
  value       = local.kms_key_arn
}

output "function_names" {
  description = "Every Lambda function, by package name (build/lambda/<name>.zip): api, authorizer, worker-<family>."
  value = merge(
    {
      api        = aws_lambda_function.api.function_name
      authorizer = aws_lambda_function.authorizer.function_name
    },
    { for family, function in aws_lambda_function.worker : "worker-${family}" => function.function_name },
  )
}

output "worker_function_names" {
  description = "The engine workers' functions, by family (what the front's NEBLINA_WORKERS names)."
  value       = { for family, function in aws_lambda_function.worker : family => function.function_name }
}

output "worker_dead_letter_queue_url" {
  description = "Jobs whose asynchronous invocation failed after its retries (request and error)."
  value       = aws_sqs_queue.worker_dlq.url
}

output "admin_environment" {
  description = "Environment for admin tools run with the operator's own AWS credentials."
  value = {
    NEBLINA_TABLE_PREFIX = local.table_prefix
    NEBLINA_BUCKET       = aws_s3_bucket.neblina["datasets"].id
    AWS_DEFAULT_REGION   = local.region
  }
}
