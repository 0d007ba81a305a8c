output "regional_endpoints" {
  description = "Each region's ALB"
  value       = { for id, a in local.albs : id => a.dns_name }
}

output "redis_primary_endpoint" {
  description = "The Global Datastore's primary (every gateway's redis.url host)"
  value       = module.eu_central.redis_endpoint
}

output "dns_export_config" {
  description = "What geogate dns export --format route53 --alias-regions reads to make geodns_file (dns.tf): a region's gateway config, whose regions (each with its url, no addresses) are every region's"
  value       = local.gateway_config["eu-central"]
}
