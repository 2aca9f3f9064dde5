# The tables of chalicelib/storage/dynamo.py (build_models). tests/test_infra_terraform.py
# compares this map with the PynamoDB models: names, keys, attribute types, indexes, TTL.
locals {
  tables = {
    users = {
      hash_key      = "user_id"
      range_key     = null
      attributes    = { user_id = "S" }
      indexes       = {}
      ttl_attribute = null
    }
    tokens = {
      hash_key      = "token_hash"
      range_key     = null
      attributes    = { token_hash = "S", user_id = "S" }
      indexes       = { by_user = { hash_key = "user_id", range_key = null } }
      ttl_attribute = "purge_at" # 30 days after a token expires
    }
    datasets = {
      hash_key      = "name"
      range_key     = null
      attributes    = { name = "S" }
      indexes       = {}
      ttl_attribute = null
    }
    grants = {
      hash_key      = "user_id"
      range_key     = "dataset"
      attributes    = { user_id = "S", dataset = "S" }
      indexes       = {}
      ttl_attribute = null
    }
    caps = {
      hash_key      = "dataset"
      range_key     = null
      attributes    = { dataset = "S" }
      indexes       = {}
      ttl_attribute = null
    }
    queries = {
      hash_key      = "query_id"
      range_key     = null
      attributes    = { query_id = "S", owner_key = "S", created_at = "S" }
      indexes       = { by_owner = { hash_key = "owner_key", range_key = "created_at" } }
      ttl_attribute = null # the archive is kept
    }
    ratelimits = {
      hash_key      = "window_key"
      range_key     = null
      attributes    = { window_key = "S" }
      indexes       = {}
      ttl_attribute = "purge_at" # a day after the window ends
    }
  }
}

resource "aws_dynamodb_table" "neblina" {
  for_each = local.tables

  name                        = "${local.table_prefix}${each.key}"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = each.value.hash_key
  range_key                   = each.value.range_key
  deletion_protection_enabled = var.deletion_protection
  tags                        = local.tags

  dynamic "attribute" {
    for_each = each.value.attributes
    content {
      name = attribute.key
      type = attribute.value
    }
  }

  dynamic "global_secondary_index" {
    for_each = each.value.indexes
    content {
      name            = global_secondary_index.key
      hash_key        = global_secondary_index.value.hash_key
      range_key       = global_secondary_index.value.range_key
      projection_type = "ALL"
    }
  }

  dynamic "ttl" {
    for_each = each.value.ttl_attribute == null ? [] : [each.value.ttl_attribute]
    content {
      enabled        = true
      attribute_name = ttl.value
    }
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = local.kms_key_arn
  }
}
