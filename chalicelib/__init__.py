"""Neblina's server code: what the API and authorizer Lambdas run."""

VERSION = "0.1.0"  # the API's version: /health and the OpenAPI document's info.version
