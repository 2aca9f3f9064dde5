# Spark-backed datasets on EMR Serverless (docs/spark.md), on when var.spark_emr is set.
#
# A query on a dataset whose metadata says `executor: spark` is priced and debited by the
# front as any other; its job is then handed to EMR Serverless by the front itself
# (chalicelib/emr.py, NEBLINA_SPARK=emr): the job's document is written under the datasets
# bucket's spark-jobs/ prefix, and StartJobRun starts scripts/spark_job_main.py (uploaded
# here) with chalicelib's zip on --py-files, under the job role below, with the query id as
# its client token. The job claims the record before any read (one release per debit
# however often EMR runs it), reads the Parquet with Spark, finishes the record through
# the store, and deletes its document.
#
# The application has no pre-initialised capacity: nothing is billed while no job runs
# (auto-start on the first job, auto-stop when idle). Its Python libraries (Python 3.12,
# requirements-spark.txt) come from a custom image (image_uri; infra/README.md, "EMR
# Serverless"): EMR's own image has an older Python.

variable "spark_emr" {
  description = "EMR Serverless for Spark-backed datasets (docs/spark.md); null: off. job_package and entry_point are build/lambda/spark-job.zip and build/lambda/spark-job-main.py (`scripts/package_lambda.py --spark-job`); dataset_prefixes are the s3://bucket/prefix/ locations the Spark datasets live under (the job role reads only those; default: the datasets bucket's spark/ prefix); image_uri an ECR image with the job's Python libraries; spark_submit_parameters more spark-submit parameters for every job run (worker sizes)."
  type = object({
    job_package          = string
    entry_point          = string
    dataset_prefixes     = optional(list(string))
    release_label        = optional(string, "emr-7.5.0")
    image_uri            = optional(string)
    architecture         = optional(string) # null: AWS's default, X86_64
    max_vcpu             = optional(number, 32)
    max_memory_gb        = optional(number, 128)
    max_disk_gb          = optional(number, 1000)
    idle_timeout_minutes = optional(number, 15)
    job_timeout_minutes  = optional(number, 45)
    # more spark-submit parameters for every job run, e.g. smaller workers for small tables:
    # "--conf spark.executor.cores=2 --conf spark.executor.memory=6g"
    spark_submit_parameters = optional(string, "")
  })
  default = null
}

locals {
  spark_emr = var.spark_emr != null ? { on = var.spark_emr } : {}
  spark_prefixes = var.spark_emr == null ? [] : [
    for uri in coalesce(var.spark_emr.dataset_prefixes, ["s3://${local.datasets_name}/spark/"]) : {
      bucket = split("/", trimprefix(uri, "s3://"))[0]
      prefix = join("/", slice(split("/", trimprefix(uri, "s3://")), 1, length(split("/", trimprefix(uri, "s3://")))))
    }
  ]
  # The front's settings for the hand-off (chalicelib/emr.py EmrConfig); none when off.
  spark_emr_environment = var.spark_emr == null ? {} : {
    NEBLINA_SPARK                = "emr"
    NEBLINA_EMR_APPLICATION_ID   = aws_emrserverless_application.spark["on"].id
    NEBLINA_EMR_JOB_ROLE_ARN     = aws_iam_role.spark_job["on"].arn
    NEBLINA_EMR_ENTRY_POINT      = "s3://${aws_s3_object.spark_entry_point["on"].bucket}/${aws_s3_object.spark_entry_point["on"].key}"
    NEBLINA_EMR_PY_FILES         = "s3://${aws_s3_object.spark_job_package["on"].bucket}/${aws_s3_object.spark_job_package["on"].key}"
    NEBLINA_EMR_TIMEOUT_MINUTES  = tostring(var.spark_emr.job_timeout_minutes)
    NEBLINA_EMR_SPARK_PARAMETERS = var.spark_emr.spark_submit_parameters
  }
}

resource "aws_s3_object" "spark_job_package" {
  for_each = local.spark_emr

  bucket      = aws_s3_bucket.neblina["artifacts"].id
  key         = "spark/job-${filesha256(each.value.job_package)}.zip"
  source      = each.value.job_package
  source_hash = filemd5(each.value.job_package)
  tags        = local.tags
}

resource "aws_s3_object" "spark_entry_point" {
  for_each = local.spark_emr

  bucket       = aws_s3_bucket.neblina["artifacts"].id
  key          = "spark/main-${filesha256(each.value.entry_point)}.py"
  source       = each.value.entry_point
  source_hash  = filemd5(each.value.entry_point)
  content_type = "text/x-python"
  tags         = local.tags
}

resource "aws_emrserverless_application" "spark" {
  for_each = local.spark_emr

  name          = "${var.name}-spark"
  release_label = each.value.release_label
  type          = "SPARK" # AWS takes either case; the emulator only this one
  architecture  = each.value.architecture
  tags          = local.tags

  auto_start_configuration {
    enabled = true
  }

  auto_stop_configuration {
    enabled              = true
    idle_timeout_minutes = each.value.idle_timeout_minutes
  }

  maximum_capacity {
    cpu    = "${each.value.max_vcpu} vCPU"
    memory = "${each.value.max_memory_gb} GB"
    disk   = "${each.value.max_disk_gb} GB"
  }

  dynamic "image_configuration" {
    for_each = each.value.image_uri == null ? [] : [each.value.image_uri]
    content {
      image_uri = image_configuration.value
    }
  }

  lifecycle {
    precondition {
      # The job's lease runs from its submission: it must outlast the application's start
      # (up to ~10 minutes) and the job run's own timeout, or the lease rule could settle
      # a job still legitimately running (its release would then not be released).
      condition     = var.limits.job_lease_seconds >= 60 * (each.value.job_timeout_minutes + 10)
      error_message = "limits.job_lease_seconds must be at least spark_emr.job_timeout_minutes plus 10 minutes."
    }
  }
}

# --- IAM: the job role (what the job code calls) and the front's hand-off -----------------
# The job (chalicelib/spark_job.py, then chalicelib/worker.py's run as the spark family):
#   GetObject on its document (spark-jobs/<query id>.json) and DeleteObject once settled;
#   GetObject (the HEAD of the version check, and the rows) and ListBucket, only under the
#   Spark datasets' prefixes; PutObject under archive/ (results over the inline size);
#   GetItem/UpdateItem on queries (claim, progress, finish, fail), UpdateItem on grants and
#   caps (the refund of a job that failed before the read); the key. No PutItem: a job
#   never debits. The code itself is read by EMR Serverless with this role too.

data "aws_iam_policy_document" "spark_job_assume" {
  for_each = local.spark_emr

  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["emr-serverless.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:emr-serverless:${local.region}:${local.account_id}:/applications/*"]
    }
  }
}

resource "aws_iam_role" "spark_job" {
  for_each = local.spark_emr

  name               = "${var.name}-spark-job"
  assume_role_policy = data.aws_iam_policy_document.spark_job_assume["on"].json
  tags               = local.tags
}

data "aws_iam_policy_document" "spark_job" {
  for_each = local.spark_emr

  statement {
    sid       = "ReadJobCode"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.neblina["artifacts"].arn}/spark/*"]
  }
  statement {
    sid       = "ReadAndDeleteOwnJobDocuments"
    actions   = ["s3:GetObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.neblina["datasets"].arn}/spark-jobs/*"]
  }
  statement {
    sid       = "ReadSparkDatasets"
    actions   = ["s3:GetObject"]
    resources = [for p in local.spark_prefixes : "arn:${local.partition}:s3:::${p.bucket}/${p.prefix}*"]
  }
  statement {
    # Spark lists a Parquet location before reading it; only under the Spark prefixes.
    sid       = "ListSparkDatasets"
    actions   = ["s3:ListBucket"]
    resources = distinct([for p in local.spark_prefixes : "arn:${local.partition}:s3:::${p.bucket}"])
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [for p in local.spark_prefixes : "${p.prefix}*"]
    }
  }
  statement {
    sid       = "ArchiveLargeResults"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.neblina["datasets"].arn}/archive/*"]
  }
  statement {
    sid       = "RunClaimedQueries"
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
    sid       = "UseNeblinaKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [local.kms_key_arn]
  }
}

resource "aws_iam_role_policy" "spark_job" {
  for_each = local.spark_emr

  name   = "${var.name}-spark-job"
  role   = aws_iam_role.spark_job["on"].id
  policy = data.aws_iam_policy_document.spark_job["on"].json
}

# The front: writes a job's document, starts its run on this application, passes the job
# role to EMR Serverless only. Nothing else of EMR (no cancel, no other application).
data "aws_iam_policy_document" "api_spark_handoff" {
  for_each = local.spark_emr

  statement {
    sid       = "StageSparkJobDocuments"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.neblina["datasets"].arn}/spark-jobs/*"]
  }
  statement {
    sid       = "StartSparkJobRuns"
    actions   = ["emr-serverless:StartJobRun"]
    resources = [aws_emrserverless_application.spark["on"].arn]
  }
  statement {
    sid       = "PassTheJobRole"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.spark_job["on"].arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["emr-serverless.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "api_spark_handoff" {
  for_each = local.spark_emr

  name   = "${var.name}-api-spark-handoff"
  role   = aws_iam_role.api.id
  policy = data.aws_iam_policy_document.api_spark_handoff["on"].json
}

output "spark_emr" {
  description = "EMR Serverless for Spark-backed datasets (null when var.spark_emr is null): the application, the job role, the code's S3 locations."
  value = var.spark_emr == null ? null : {
    application_id = aws_emrserverless_application.spark["on"].id
    job_role_arn   = aws_iam_role.spark_job["on"].arn
    entry_point    = local.spark_emr_environment.NEBLINA_EMR_ENTRY_POINT
    py_files       = local.spark_emr_environment.NEBLINA_EMR_PY_FILES
  }
}
