# REST API with the routes of app.py (tests/test_infra_terraform.py compares local.routes
# with the Chalice app's routing table), the token authorizer, Neblina's error shape for
# gateway-level failures (the same mapping as localstack/apiserver.py), stage throttling
# and JSON access logs.

locals {
  # "METHOD path" => needs the token authorizer. Keep in step with app.py.
  routes = {
    "GET /health"                                = false
    "GET /v1/openapi.json"                       = false
    "GET /console"                               = false
    "GET /console/{asset}"                       = false
    "GET /v1/datasets"                           = true
    "GET /v1/datasets/{name}/metadata"           = true
    "GET /v1/datasets/{name}/dummy"              = true
    "GET /v1/datasets/{name}/budget"             = true
    "POST /v1/datasets/{name}/cost"              = true
    "POST /v1/datasets/{name}/plan"              = true
    "POST /v1/datasets/{name}/queries"           = true
    "GET /v1/datasets/{name}/queries"            = true
    "GET /v1/datasets/{name}/queries/{query_id}" = true
  }

  resource_ids = {
    "/health"                                = aws_api_gateway_resource.health.id
    "/v1/openapi.json"                       = aws_api_gateway_resource.openapi.id
    "/console"                               = aws_api_gateway_resource.console.id
    "/console/{asset}"                       = aws_api_gateway_resource.console_asset.id
    "/v1/datasets"                           = aws_api_gateway_resource.datasets.id
    "/v1/datasets/{name}/metadata"           = aws_api_gateway_resource.dataset_child["metadata"].id
    "/v1/datasets/{name}/dummy"              = aws_api_gateway_resource.dataset_child["dummy"].id
    "/v1/datasets/{name}/budget"             = aws_api_gateway_resource.dataset_child["budget"].id
    "/v1/datasets/{name}/cost"               = aws_api_gateway_resource.dataset_child["cost"].id
    "/v1/datasets/{name}/plan"               = aws_api_gateway_resource.dataset_child["plan"].id
    "/v1/datasets/{name}/queries"            = aws_api_gateway_resource.dataset_child["queries"].id
    "/v1/datasets/{name}/queries/{query_id}" = aws_api_gateway_resource.query.id
  }

  route_methods = {
    for route, authorized in local.routes : route => {
      method     = split(" ", route)[0]
      path       = split(" ", route)[1]
      authorized = authorized
    }
  }

  # Gateway responses: API Gateway's own failures in Neblina's {"error", "message"} shape
  # (literal JSON, so tests/test_infra_terraform.py can compare them with the local server's).
  gateway_responses = {
    UNAUTHORIZED = {
      status = "401"
      body   = "{\"error\": \"unauthorized\", \"message\": \"missing or invalid API token\"}"
    }
    # The authorizer's explicit Deny carries error and message in its context.
    ACCESS_DENIED = {
      status = "403"
      body   = "{\"error\": \"$context.authorizer.error\", \"message\": \"$context.authorizer.message\"}"
    }
    # API Gateway reports an unknown route as a missing token (403); Neblina says 404.
    MISSING_AUTHENTICATION_TOKEN = {
      status = "404"
      body   = "{\"error\": \"not_found\", \"message\": \"no such route\"}"
    }
    THROTTLED = {
      status = "429"
      body   = "{\"error\": \"rate_limited\", \"message\": \"too many requests\"}"
    }
    REQUEST_TOO_LARGE = {
      status = "413"
      body   = "{\"error\": \"payload_too_large\", \"message\": \"request body too large\"}"
    }
    DEFAULT_4XX = {
      status = null
      body   = "{\"error\": \"invalid_request\", \"message\": $context.error.messageString}"
    }
    DEFAULT_5XX = {
      status = null
      body   = "{\"error\": \"internal_error\", \"message\": \"internal error\"}"
    }
  }
}

resource "aws_api_gateway_rest_api" "neblina" {
  name        = var.name
  description = "Neblina: remote data science under differential privacy"
  tags        = local.tags

  endpoint_configuration {
    types = ["REGIONAL"]
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_api_gateway_resource" "health" {
  rest_api_id = aws_api_gateway_rest_api.neblina.id
  parent_id   = aws_api_gateway_rest_api.neblina.root_resource_id
  path_part   = "health"
}

# The researcher console's static page (docs/console.md): public, like /health; the page
# holds no data and every API call it makes carries the token through the authorizer.
resource "aws_api_gateway_resource" "console" {
  rest_api_id = aws_api_gateway_rest_api.neblina.id
  parent_id   = aws_api_gateway_rest_api.neblina.root_resource_id
  path_part   = "console"
}

resource "aws_api_gateway_resource" "console_asset" {
  rest_api_id = aws_api_gateway_rest_api.neblina.id
  parent_id   = aws_api_gateway_resource.console.id
  path_part   = "{asset}"
}

resource "aws_api_gateway_resource" "v1" {
  rest_api_id = aws_api_gateway_rest_api.neblina.id
  parent_id   = aws_api_gateway_rest_api.neblina.root_resource_id
  path_part   = "v1"
}

resource "aws_api_gateway_resource" "openapi" {
  rest_api_id = aws_api_gateway_rest_api.neblina.id
  parent_id   = aws_api_gateway_resource.v1.id
  path_part   = "openapi.json"
}

resource "aws_api_gateway_resource" "datasets" {
  rest_api_id = aws_api_gateway_rest_api.neblina.id
  parent_id   = aws_api_gateway_resource.v1.id
  path_part   = "datasets"
}

resource "aws_api_gateway_resource" "dataset" {
  rest_api_id = aws_api_gateway_rest_api.neblina.id
  parent_id   = aws_api_gateway_resource.datasets.id
  path_part   = "{name}"
}

resource "aws_api_gateway_resource" "dataset_child" {
  for_each = toset(["metadata", "dummy", "budget", "cost", "plan", "queries"])

  rest_api_id = aws_api_gateway_rest_api.neblina.id
  parent_id   = aws_api_gateway_resource.dataset.id
  path_part   = each.value
}

resource "aws_api_gateway_resource" "query" {
  rest_api_id = aws_api_gateway_rest_api.neblina.id
  parent_id   = aws_api_gateway_resource.dataset_child["queries"].id
  path_part   = "{query_id}"
}

resource "aws_api_gateway_authorizer" "token" {
  name                             = "token_authorizer"
  rest_api_id                      = aws_api_gateway_rest_api.neblina.id
  type                             = "TOKEN"
  authorizer_uri                   = aws_lambda_function.authorizer.invoke_arn
  identity_source                  = "method.request.header.Authorization"
  authorizer_result_ttl_in_seconds = 60 # as app.py's @app.authorizer (chalicelib/config.py AUTHORIZER_TTL_SECONDS): revocation and expiry take effect within 60 s
}

resource "aws_api_gateway_method" "route" {
  # checkov:skip=CKV_AWS_59:GET /health, GET /v1/openapi.json and GET /console(/{asset}) are public by design (liveness, the API description, the console's static page); every /v1/datasets route uses the token authorizer.
  # checkov:skip=CKV2_AWS_53:Request validation is the app's (one error mapping point, Neblina's error codes); API Gateway models would duplicate it with other messages.
  for_each = local.route_methods

  rest_api_id   = aws_api_gateway_rest_api.neblina.id
  resource_id   = local.resource_ids[each.value.path]
  http_method   = each.value.method
  authorization = each.value.authorized ? "CUSTOM" : "NONE"
  authorizer_id = each.value.authorized ? aws_api_gateway_authorizer.token.id : null
}

resource "aws_api_gateway_integration" "route" {
  for_each = local.route_methods

  rest_api_id             = aws_api_gateway_rest_api.neblina.id
  resource_id             = local.resource_ids[each.value.path]
  http_method             = aws_api_gateway_method.route[each.key].http_method
  type                    = "AWS_PROXY"
  integration_http_method = "POST"
  uri                     = aws_lambda_function.api.invoke_arn
}

resource "aws_api_gateway_gateway_response" "neblina" {
  for_each = local.gateway_responses

  rest_api_id   = aws_api_gateway_rest_api.neblina.id
  response_type = each.key
  status_code   = each.value.status
  response_templates = {
    "application/json" = each.value.body
  }
  response_parameters = {
    "gatewayresponse.header.Content-Type" = "'application/json'"
  }
}

resource "aws_api_gateway_deployment" "neblina" {
  rest_api_id = aws_api_gateway_rest_api.neblina.id

  triggers = {
    redeployment = sha1(jsonencode([
      local.routes,
      local.gateway_responses,
      aws_api_gateway_authorizer.token.authorizer_result_ttl_in_seconds,
      aws_lambda_function.api.invoke_arn,
      aws_lambda_function.authorizer.invoke_arn,
    ]))
  }

  lifecycle {
    create_before_destroy = true
  }

  depends_on = [aws_api_gateway_integration.route, aws_api_gateway_gateway_response.neblina]
}

resource "aws_cloudwatch_log_group" "access" {
  name              = "/aws/apigateway/${var.name}/access"
  retention_in_days = var.log_retention_days
  kms_key_id        = local.kms_key_arn
  tags              = local.tags
}

resource "aws_api_gateway_stage" "neblina" {
  # checkov:skip=CKV_AWS_120:Responses must not be cached: every query is debited and answered once, and budgets change with each request.
  # checkov:skip=CKV2_AWS_51:Clients authenticate with API tokens over TLS; mutual TLS client certificates are not part of the design.
  # checkov:skip=CKV2_AWS_4:Execution logs are at ERROR level for every method (aws_api_gateway_method_settings.all); per-method metrics are opt-in (var.detailed_metrics) because they are billed as custom metrics.
  # checkov:skip=CKV2_AWS_29:A WAF web ACL costs at least $5/month plus rules; throttling and the token authorizer guard the API. Attach one with aws_wafv2_web_acl_association if needed.
  rest_api_id          = aws_api_gateway_rest_api.neblina.id
  deployment_id        = aws_api_gateway_deployment.neblina.id
  stage_name           = var.stage_name
  xray_tracing_enabled = var.tracing_mode == "Active"
  tags                 = local.tags

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.access.arn
    format = jsonencode({
      requestId          = "$context.requestId"
      requestTime        = "$context.requestTime"
      ip                 = "$context.identity.sourceIp"
      principal          = "$context.authorizer.principalId"
      method             = "$context.httpMethod"
      resource           = "$context.resourcePath"
      status             = "$context.status"
      responseLength     = "$context.responseLength"
      integrationLatency = "$context.integrationLatency"
      authorizerError    = "$context.authorizer.error"
      error              = "$context.error.responseType"
    })
  }

  depends_on = [aws_api_gateway_account.neblina]
}

resource "aws_api_gateway_method_settings" "all" {
  # checkov:skip=CKV_AWS_225:Caching is off on purpose (see the stage): answers are per request and debited.
  rest_api_id = aws_api_gateway_rest_api.neblina.id
  stage_name  = aws_api_gateway_stage.neblina.stage_name
  method_path = "*/*"

  settings {
    throttling_rate_limit  = var.throttling_rate_limit
    throttling_burst_limit = var.throttling_burst_limit
    metrics_enabled        = var.detailed_metrics
    logging_level          = "ERROR"
    data_trace_enabled     = false # never log request bodies: they hold researchers' queries
    caching_enabled        = false
  }
}
