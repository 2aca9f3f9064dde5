variable "name" {
  description = "Prefix of every resource name. Tables are named \"<name>-users\" etc.: the code reads that prefix from NEBLINA_TABLE_PREFIX."
  type        = string
  default     = "neblina"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name: 2-31 characters of [a-z0-9-], starting with a letter (it becomes part of bucket names)."
  }
}

variable "api_package" {
  description = "Path of the API Lambda zip built by `make package` (build/lambda/api.zip). Ignored when api_image_uri is set."
  type        = string
}

variable "authorizer_package" {
  description = "Path of the authorizer Lambda zip built by `make package` (build/lambda/authorizer.zip)."
  type        = string
}

variable "worker_packages" {
  description = "Path of each zipped worker's package built by `make package`, by worker family: { sql = \"build/lambda/worker-opendp.zip\" }. Workers deployed from an image (workers[*].image_uri) need none."
  type        = map(string)
}

variable "workers" {
  description = "The engine workers (families of chalicelib/workers.py), one Lambda function each: memory (MB; 1,769 MB is one vCPU), timeout (s), reserved concurrency (null: unreserved) and image_uri (null: the zip in worker_packages; an ECR image of infra/docker/Dockerfile.worker for a family too large for a zip: sql (DuckDB), polars, diffprivlib). See infra/README.md for the measurements behind the defaults."
  type = map(object({
    memory_mb            = number
    timeout_seconds      = number
    reserved_concurrency = optional(number)
    image_uri            = optional(string)
  }))
  # sql is an image worker (it runs DuckDB, which does not fit a zip): a deployment sets
  # its image_uri (the validation below; infra/README.md), e.g.
  # workers = { sql = { memory_mb = 2048, timeout_seconds = 120, image_uri = "<ECR URI>" }, opendp = {...} }
  default = {
    sql    = { memory_mb = 2048, timeout_seconds = 120 }
    opendp = { memory_mb = 2048, timeout_seconds = 120 }
  }
  nullable = false # null (e.g. a root's unset pass-through) means these defaults

  validation {
    condition     = alltrue([for family, worker in var.workers : worker.image_uri != null if family == "sql"])
    error_message = "workers.sql.image_uri is required: the SQL worker runs SmartNoise SQL on DuckDB and ships as a container image (infra/docker/Dockerfile.worker with requirements-sql.txt); a zip has no room for DuckDB and would run every query on SQLite."
  }
}

variable "worker_max_event_age_seconds" {
  description = "How long Lambda keeps retrying a job (asynchronous invocation) before it goes to the dead-letter queue (60-21600). With the worker's timeout it must stay under the job lease."
  type        = number
  default     = 1800

  validation {
    condition     = var.worker_max_event_age_seconds >= 60 && var.worker_max_event_age_seconds <= 21600
    error_message = "worker_max_event_age_seconds: Lambda accepts 60 to 21600."
  }
}

variable "api_image_uri" {
  description = "ECR image URI of the API function (infra/docker/Dockerfile) for deployments that outgrow the 250 MB zip limit. Null: deploy the zip."
  type        = string
  default     = null
}

variable "datasets_bucket_name" {
  description = "Name of the datasets bucket (NEBLINA_BUCKET). Null: \"<name>-datasets-<account id>\"."
  type        = string
  default     = null
}

variable "extra_dataset_bucket_arns" {
  description = "ARNs of other buckets that hold datasets (data owners' own buckets). The API may read their objects; nothing else."
  type        = list(string)
  default     = []
}

variable "deletion_protection" {
  description = "Deletion protection on the tables and force_destroy off on the buckets. Turn off only to tear a test deployment down."
  type        = bool
  default     = true
}

variable "kms_key_arn" {
  description = "Customer managed KMS key for tables, buckets, logs and Lambda environment. Null: the module creates one (with rotation)."
  type        = string
  default     = null
}

variable "api_memory_mb" {
  description = "API Lambda memory (MB). Also buys CPU: 1,769 MB is one full vCPU. See infra/README.md for the measurements behind the default."
  type        = number
  default     = 2048
}

variable "api_timeout_seconds" {
  description = "API Lambda timeout. API Gateway answers 504 after 29 s anyway; a query that runs longer still finishes and is archived, and the client's retry with the same query_id collects it."
  type        = number
  default     = 60
}

variable "authorizer_memory_mb" {
  description = "Authorizer Lambda memory (MB). It needs ~60 MB; 512 MB buys CPU for a short cold start (importing botocore)."
  type        = number
  default     = 512
}

variable "authorizer_timeout_seconds" {
  description = "Authorizer Lambda timeout."
  type        = number
  default     = 10
}

variable "api_reserved_concurrency" {
  description = "Reserved concurrency of the API function (caps parallel queries and protects the account). Null: unreserved (accounts with a concurrency quota of 10 cannot reserve any)."
  type        = number
  default     = null
}

variable "log_retention_days" {
  description = "Retention of the Lambda and API access log groups."
  type        = number
  default     = 365
}

variable "tracing_mode" {
  description = "X-Ray tracing of both functions and the stage: \"Active\" or \"PassThrough\"."
  type        = string
  default     = "Active"
}

variable "stage_name" {
  description = "API Gateway stage; part of the URL (https://<id>.execute-api.<region>.amazonaws.com/<stage>)."
  type        = string
  default     = "api"
}

variable "throttling_rate_limit" {
  description = "Stage-wide steady request rate (requests per second) before API Gateway answers 429."
  type        = number
  default     = 50
}

variable "throttling_burst_limit" {
  description = "Stage-wide burst (requests) before API Gateway answers 429."
  type        = number
  default     = 100
}

variable "manage_api_gateway_account" {
  description = "Set the region's API Gateway account CloudWatch role (needed for access logs). It is one setting per account and region: set false if another stack manages it."
  type        = bool
  default     = true
}

variable "detailed_metrics" {
  description = "Per-method CloudWatch metrics of the stage (billed as custom metrics, about $0.30 per metric per month while traffic flows; the stage's basic metrics are free)."
  type        = bool
  default     = false
}

variable "log_level" {
  description = "NEBLINA_LOG_LEVEL of both functions."
  type        = string
  default     = "INFO"
}

variable "limits" {
  description = "Request limits, passed to the functions as NEBLINA_* variables (defaults equal the code's)."
  type = object({
    max_body_bytes        = optional(number, 65536)
    max_dummy_rows        = optional(number, 100000)
    max_query_chars       = optional(number, 10000)
    query_lease_seconds   = optional(number, 900)
    job_lease_seconds     = optional(number, 3600)
    dataset_cache_entries = optional(number, 4)
    max_epsilon_per_query = optional(string, "100")
    max_delta_per_query   = optional(string, "0.5")
    rate_limit            = optional(number, 600)
    rate_window_seconds   = optional(number, 60)
    inline_result_bytes   = optional(number, 300000)
    max_result_bytes      = optional(number, 3000000)
    lookup_cache_seconds  = optional(number, 5) # dataset record, grant seen, source version (docs/threat-model.md)
  })
  default = {}
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
