"""Offsite Backup gateway: signs presigned multipart upload URLs for Home Assistant instances."""
