# Example root: the whole Neblina stack in one region.
#
#   make package                       # builds build/lambda/{api,authorizer,worker-*}.zip
#   docker build ... (infra/docker/Dockerfile.worker): the SQL worker's image, pushed to ECR
#   cd infra/terraform/examples/complete
#   cp terraform.tfvars.example terraform.tfvars   # then edit
#   terraform init && terraform plan && terraform apply
#
# The same root applies to LocalStack with `tflocal` (see infra/README.md).

terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = { deployment = var.name }
  }
}

module "neblina" {
  source = "../.."

  name               = var.name
  api_package        = "${path.root}/../../../../build/lambda/api.zip"
  authorizer_package = "${path.root}/../../../../build/lambda/authorizer.zip"
  worker_packages = {
    for family in ["opendp"] : family => "${path.root}/../../../../build/lambda/worker-${family}.zip"
  }
  # The SQL worker from its container image (infra/docker/Dockerfile.worker with
  # requirements-sql.txt): SmartNoise SQL on DuckDB, which does not fit a zip.
  workers = {
    sql    = { memory_mb = 2048, timeout_seconds = 120, image_uri = var.sql_worker_image_uri }
    opendp = { memory_mb = 2048, timeout_seconds = 120 }
  }
  api_image_uri       = var.api_image_uri
  deletion_protection = var.deletion_protection
  log_retention_days  = var.log_retention_days
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-central-2"
}

variable "name" {
  description = "Resource name prefix (tables become <name>-users, ...)."
  type        = string
  default     = "neblina"
}

variable "api_image_uri" {
  description = "ECR image of the API function (infra/docker/Dockerfile); null deploys the zip."
  type        = string
  default     = null
}

variable "sql_worker_image_uri" {
  description = "ECR image of the SQL worker (infra/docker/Dockerfile.worker, REQUIREMENTS=requirements-sql.txt)."
  type        = string
}

variable "deletion_protection" {
  description = "Keep tables and buckets from being destroyed."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "Log retention."
  type        = number
  default     = 365
}

output "api_url" {
  description = "NEBLINA_URL for the client."
  value       = module.neblina.api_url
}

output "admin_environment" {
  description = "Environment for localstack/seed.py --real-aws and the admin CLI."
  value       = module.neblina.admin_environment
}

output "table_names" {
  description = "The DynamoDB tables."
  value       = module.neblina.table_names
}
