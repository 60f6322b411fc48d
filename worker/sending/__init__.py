"""Sending: dispatcher, HTTP client, answer classification, retries, rate gates, token."""
