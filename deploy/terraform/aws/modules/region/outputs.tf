output "alb_dns_name" {
  description = "The ALB's name: Route 53 aliases this region's links to it"
  value       = aws_lb.gateway.dns_name
}

output "alb_zone_id" {
  description = "The ALB's hosted zone (for Route 53 aliases)"
  value       = aws_lb.gateway.zone_id
}

output "redis_replication_group_id" {
  description = "This region's replication group (the primary's makes the Global Datastore)"
  value       = aws_elasticache_replication_group.fleet.id
}

output "redis_endpoint" {
  description = "Primary (or reader, in a secondary region) endpoint: the gateways' redis.url host, rediss:// on 6379"
  value       = aws_elasticache_replication_group.fleet.primary_endpoint_address
}

output "autoscaling_group_name" {
  description = "The GPU hosts' group"
  value       = aws_autoscaling_group.gpu.name
}
