output "regional_endpoints" {
  description = "Each region's ALB"
  value       = { for id, a in local.albs : id => a.dns_name }
}

output "redis_primary_endpoint" {
  description = "The Global Datastore's primary (every gateway's redis.url host)"
  value       = module.eu_central.redis_endpoint
}
