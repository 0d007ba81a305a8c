# One geogate region on AWS: GPU hosts in an autoscaling group, each running the model server
# and a regional gateway (see README, "Deploying on AWS", for why on one host), behind an ALB
# that checks the gateway's /readyz; the region's member of the Redis Global Datastore.

locals {
  name = "${var.name_prefix}-${var.region_id}"
  tags = merge(var.tags, { "geogate:region" = var.region_id })
  # Gateways write observations every redis.refresh_interval_s: only the Global Datastore's
  # primary takes writes, so every region's gateways use the primary's endpoint.
  redis_host = coalesce(var.redis_write_endpoint, aws_elasticache_replication_group.fleet.primary_endpoint_address)
}

data "aws_region" "current" {}

# --- Security groups --------------------------------------------------------------------

resource "aws_security_group" "alb" {
  name        = "${local.name}-alb"
  description = "geogate ALB: HTTPS from clients, to the gateways"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  security_group_id = aws_security_group.alb.id
  description       = "Clients (the public API)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "alb_to_gateway" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the gateways' public port"
  referenced_security_group_id = aws_security_group.gpu.id
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
}

resource "aws_security_group" "gpu" {
  name        = "${local.name}-gpu"
  description = "geogate GPU hosts: gateway 8080 from the ALB, metrics from Prometheus"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "gpu_from_alb" {
  security_group_id            = aws_security_group.gpu.id
  description                  = "The gateway's public port, from the ALB"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
}

# Prometheus only: 9180 is the gateway's ops listener (ops.token), 8000 the model server's
# whole API, unauthenticated; the gateways reach it on the host's loopback, nobody else needs it.
resource "aws_vpc_security_group_ingress_rule" "gpu_metrics" {
  for_each          = toset(flatten([for cidr in var.prometheus_cidrs : ["${cidr} 9180", "${cidr} 8000"]]))
  security_group_id = aws_security_group.gpu.id
  description       = "Prometheus: gateway ops listener (9180) and backend metrics (8000)"
  cidr_ipv4         = split(" ", each.value)[0]
  ip_protocol       = "tcp"
  from_port         = tonumber(split(" ", each.value)[1])
  to_port           = tonumber(split(" ", each.value)[1])
}

resource "aws_vpc_security_group_ingress_rule" "gpu_metrics_from_prometheus_sg" {
  for_each                     = var.prometheus_security_group_id == null ? toset([]) : toset(["9180", "8000"])
  security_group_id            = aws_security_group.gpu.id
  description                  = "Prometheus (its security group): gateway ops listener (9180) and backend metrics (8000)"
  referenced_security_group_id = var.prometheus_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = tonumber(each.value)
  to_port                      = tonumber(each.value)
}

resource "aws_vpc_security_group_egress_rule" "gpu_https" {
  security_group_id = aws_security_group.gpu.id
  description       = "HTTPS: image registry, SSM, S3"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "gpu_redis" {
  for_each          = toset(var.redis_client_cidrs)
  security_group_id = aws_security_group.gpu.id
  description       = "Redis (TLS) in any region's VPC: the Global Datastore's primary takes the writes"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 6379
  to_port           = 6379
}

resource "aws_security_group" "redis" {
  name        = "${local.name}-redis"
  description = "geogate shared state: Redis over TLS from every region's gateways"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "redis_clients" {
  for_each          = toset(var.redis_client_cidrs)
  security_group_id = aws_security_group.redis.id
  description       = "Gateways of every region"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 6379
  to_port           = 6379
}
