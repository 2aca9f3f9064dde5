# A root that applies the whole module (../terraform) to the embedded emulator
# (localstack/emulator.py): tests/test_terraform_apply.py runs it, and so can you by hand
# (infra/README.md, "Apply to the embedded emulator"). Not for AWS: every endpoint points
# at var.endpoint, credentials are the emulator's dummies, and the Lambda packages are
# stand-ins (the local API server and worker servers run the code, each with the environment
# Terraform gave its function; the emulator never invokes a function).

terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

variable "endpoint" {
  description = "URL of the embedded emulator, e.g. http://127.0.0.1:4566."
  type        = string
}

variable "name" {
  description = "Resource name prefix (tables become <name>-users, ...)."
  type        = string
  default     = "neblina"
}

variable "api_package" {
  description = "The API zip (a stand-in is enough: the emulator stores it, never runs it)."
  type        = string
}

variable "authorizer_package" {
  description = "The authorizer zip (a stand-in is enough)."
  type        = string
}

variable "worker_packages" {
  description = "Each zipped worker's zip, by family (stand-ins are enough)."
  type        = map(string)
}

variable "workers" {
  description = "The module's workers (null: its defaults); an image worker's image_uri is stored, never pulled."
  type = map(object({
    memory_mb            = number
    timeout_seconds      = number
    reserved_concurrency = optional(number)
    image_uri            = optional(string)
  }))
  default = null
}

variable "spark_emr" {
  description = "The module's EMR Serverless for Spark-backed datasets (null: off); the emulator stores the application and a job run, never runs one."
  type = object({
    job_package      = string
    entry_point      = string
    dataset_prefixes = optional(list(string))
  })
  default = null
}

provider "aws" {
  region                      = "us-east-1"
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  s3_use_path_style           = true

  endpoints {
    apigateway    = var.endpoint
    dynamodb      = var.endpoint
    emrserverless = var.endpoint
    iam           = var.endpoint
    kms           = var.endpoint
    lambda        = var.endpoint
    logs          = var.endpoint
    s3            = var.endpoint
    sqs           = var.endpoint
    sts           = var.endpoint
  }
}

module "neblina" {
  source = "../terraform"

  name                = var.name
  api_package         = var.api_package
  authorizer_package  = var.authorizer_package
  worker_packages     = var.worker_packages
  workers             = var.workers
  deletion_protection = false
  spark_emr           = var.spark_emr
}

output "table_prefix" {
  description = "NEBLINA_TABLE_PREFIX."
  value       = module.neblina.table_prefix
}

output "datasets_bucket" {
  description = "NEBLINA_BUCKET."
  value       = module.neblina.datasets_bucket
}

output "function_names" {
  description = "Every Lambda function (their environment is what the local API server and worker servers get)."
  value       = module.neblina.function_names
}

output "worker_function_names" {
  description = "The workers' functions, by family."
  value       = module.neblina.worker_function_names
}

output "worker_dead_letter_queue_url" {
  description = "The workers' dead-letter queue."
  value       = module.neblina.worker_dead_letter_queue_url
}

output "table_names" {
  description = "The DynamoDB tables."
  value       = module.neblina.table_names
}

output "api_url" {
  description = "The stage URL as the emulator reports it."
  value       = module.neblina.api_url
}

output "kms_key_arn" {
  description = "The key the buckets and tables are encrypted with."
  value       = module.neblina.kms_key_arn
}

output "spark_emr" {
  description = "The EMR Serverless application, job role and code locations (null when off)."
  value       = module.neblina.spark_emr
}
