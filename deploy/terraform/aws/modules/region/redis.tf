# Shared state of the fleet: one ElastiCache replication group per region, joined in a Global
# Datastore. The primary region's group takes the writes (every gateway writes there, see
# local.redis_host); the others replicate it and can be promoted if that region is lost.

resource "aws_elasticache_subnet_group" "fleet" {
  name       = "${local.name}-redis"
  subnet_ids = var.private_subnet_ids
  tags       = local.tags
}

resource "aws_elasticache_replication_group" "fleet" {
  #checkov:skip=CKV_AWS_29:at_rest_encryption_enabled is true in the primary (the conditional below); a secondary inherits it from the Global Datastore, and checkov cannot evaluate the conditional
  #checkov:skip=CKV_AWS_30:transit_encryption_enabled is true in the primary (the conditional below); a secondary inherits it from the Global Datastore, and checkov cannot evaluate the conditional
  #checkov:skip=CKV_AWS_191:kms_key_id is set in the primary; a Global Datastore's secondaries take the primary's encryption settings and may not set their own
  replication_group_id = "${local.name}-redis"
  description          = "geogate shared state (${var.region_id})"
  subnet_group_name    = aws_elasticache_subnet_group.fleet.name
  security_group_ids   = [aws_security_group.redis.id]
  num_cache_clusters   = 2 # a replica in a second availability zone
  multi_az_enabled     = true

  automatic_failover_enabled  = true
  auto_minor_version_upgrade  = true
  global_replication_group_id = var.redis_global_replication_group_id

  # Only the primary defines engine, size and encryption; secondaries inherit them from the
  # Global Datastore (AWS refuses them there).
  engine                     = var.redis_global_replication_group_id == null ? "redis" : null
  engine_version             = var.redis_global_replication_group_id == null ? "7.1" : null
  node_type                  = var.redis_global_replication_group_id == null ? var.redis_node_type : null
  port                       = 6379
  transit_encryption_enabled = var.redis_global_replication_group_id == null ? true : null
  at_rest_encryption_enabled = var.redis_global_replication_group_id == null ? true : null
  kms_key_id                 = var.redis_global_replication_group_id == null ? var.kms_key_arn : null
  auth_token                 = var.redis_global_replication_group_id == null ? var.redis_auth_token : null

  # Observations and heartbeats expire in seconds: nothing worth a snapshot.
  snapshot_retention_limit = 0
  tags                     = local.tags
}

# The AUTH token where this region's hosts read it at boot (user_data.sh.tftpl), encrypted with
# the region's key.
resource "aws_ssm_parameter" "redis_auth" {
  name   = var.redis_auth_ssm_parameter
  type   = "SecureString"
  key_id = var.kms_key_arn
  value  = var.redis_auth_token
  tags   = local.tags
}
