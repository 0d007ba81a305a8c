# Reference deployment: three geogate regions on AWS GPU instances (eu-central-1, us-east-1,
# ap-southeast-1 by default in terraform.tfvars.example), one Redis Global Datastore, and
# Route 53 geolocation records from `geogate dns export --format route53`.

locals {
  redis_client_cidrs = [for r in var.regions : r.vpc_cidr]
  gateway_config = { for id, r in var.regions : id => templatefile("${path.module}/gateway.toml.tftpl", {
    region_id  = id
    vpc_cidr   = r.vpc_cidr
    regions    = var.regions
    domain     = var.domain
    model_name = var.model_name
  }) }
}

# One module block per region, not a for_each over var.regions: Terraform picks a module's
# provider statically, so each region's provider (versions.tf) needs a block of its own.
module "eu_central" {
  source    = "../modules/region"
  providers = { aws = aws.eu }

  region_id                    = "eu-central"
  vpc_id                       = var.regions["eu-central"].vpc_id
  public_subnet_ids            = var.regions["eu-central"].public_subnet_ids
  private_subnet_ids           = var.regions["eu-central"].private_subnet_ids
  certificate_arn              = var.regions["eu-central"].certificate_arn
  kms_key_arn                  = var.regions["eu-central"].kms_key_arn
  ami_id                       = var.regions["eu-central"].ami_id
  min_size                     = var.regions["eu-central"].min_size
  max_size                     = var.regions["eu-central"].max_size
  desired_capacity             = var.regions["eu-central"].desired_capacity
  instance_type                = var.instance_type
  root_volume_gb               = var.root_volume_gb
  target_requests_per_host     = var.target_requests_per_host
  model_name                   = var.model_name
  model_path                   = var.model_path
  model_s3_uri                 = var.model_s3_uri
  geoip_s3_uri                 = var.geoip_s3_uri
  gateway_image                = var.gateway_image
  backend_image                = var.backend_image
  gateway_config               = local.gateway_config["eu-central"]
  alb_logs_bucket              = var.alb_logs_buckets["eu-central"]
  prometheus_cidrs             = var.prometheus_cidrs
  prometheus_security_group_id = lookup(var.prometheus_security_group_ids, "eu-central", null)
  redis_client_cidrs           = local.redis_client_cidrs
  redis_node_type              = var.redis_node_type
  # The primary of the Global Datastore: no global id, its own endpoint.
  redis_auth_token         = var.redis_auth_token
  redis_auth_ssm_parameter = var.redis_auth_ssm_parameter
  ops_token                = var.ops_token
  ops_token_ssm_parameter  = var.ops_token_ssm_parameter
  tags                     = var.tags
}

resource "aws_elasticache_global_replication_group" "fleet" {
  provider                             = aws.eu
  global_replication_group_id_suffix   = "geogate"
  primary_replication_group_id         = module.eu_central.redis_replication_group_id
  global_replication_group_description = "geogate shared state across regions"
}

module "us_east" {
  source    = "../modules/region"
  providers = { aws = aws.us }

  region_id                         = "us-east"
  vpc_id                            = var.regions["us-east"].vpc_id
  public_subnet_ids                 = var.regions["us-east"].public_subnet_ids
  private_subnet_ids                = var.regions["us-east"].private_subnet_ids
  certificate_arn                   = var.regions["us-east"].certificate_arn
  kms_key_arn                       = var.regions["us-east"].kms_key_arn
  ami_id                            = var.regions["us-east"].ami_id
  min_size                          = var.regions["us-east"].min_size
  max_size                          = var.regions["us-east"].max_size
  desired_capacity                  = var.regions["us-east"].desired_capacity
  instance_type                     = var.instance_type
  root_volume_gb                    = var.root_volume_gb
  target_requests_per_host          = var.target_requests_per_host
  model_name                        = var.model_name
  model_path                        = var.model_path
  model_s3_uri                      = var.model_s3_uri
  geoip_s3_uri                      = var.geoip_s3_uri
  gateway_image                     = var.gateway_image
  backend_image                     = var.backend_image
  gateway_config                    = local.gateway_config["us-east"]
  alb_logs_bucket                   = var.alb_logs_buckets["us-east"]
  prometheus_cidrs                  = var.prometheus_cidrs
  prometheus_security_group_id      = lookup(var.prometheus_security_group_ids, "us-east", null)
  redis_client_cidrs                = local.redis_client_cidrs
  redis_node_type                   = var.redis_node_type
  redis_global_replication_group_id = aws_elasticache_global_replication_group.fleet.global_replication_group_id
  redis_write_endpoint              = module.eu_central.redis_endpoint
  redis_auth_token                  = var.redis_auth_token
  redis_auth_ssm_parameter          = var.redis_auth_ssm_parameter
  ops_token                         = var.ops_token
  ops_token_ssm_parameter           = var.ops_token_ssm_parameter
  tags                              = var.tags
}

module "ap_southeast" {
  source    = "../modules/region"
  providers = { aws = aws.ap }

  region_id                         = "ap-southeast"
  vpc_id                            = var.regions["ap-southeast"].vpc_id
  public_subnet_ids                 = var.regions["ap-southeast"].public_subnet_ids
  private_subnet_ids                = var.regions["ap-southeast"].private_subnet_ids
  certificate_arn                   = var.regions["ap-southeast"].certificate_arn
  kms_key_arn                       = var.regions["ap-southeast"].kms_key_arn
  ami_id                            = var.regions["ap-southeast"].ami_id
  min_size                          = var.regions["ap-southeast"].min_size
  max_size                          = var.regions["ap-southeast"].max_size
  desired_capacity                  = var.regions["ap-southeast"].desired_capacity
  instance_type                     = var.instance_type
  root_volume_gb                    = var.root_volume_gb
  target_requests_per_host          = var.target_requests_per_host
  model_name                        = var.model_name
  model_path                        = var.model_path
  model_s3_uri                      = var.model_s3_uri
  geoip_s3_uri                      = var.geoip_s3_uri
  gateway_image                     = var.gateway_image
  backend_image                     = var.backend_image
  gateway_config                    = local.gateway_config["ap-southeast"]
  alb_logs_bucket                   = var.alb_logs_buckets["ap-southeast"]
  prometheus_cidrs                  = var.prometheus_cidrs
  prometheus_security_group_id      = lookup(var.prometheus_security_group_ids, "ap-southeast", null)
  redis_client_cidrs                = local.redis_client_cidrs
  redis_node_type                   = var.redis_node_type
  redis_global_replication_group_id = aws_elasticache_global_replication_group.fleet.global_replication_group_id
  redis_write_endpoint              = module.eu_central.redis_endpoint
  redis_auth_token                  = var.redis_auth_token
  redis_auth_ssm_parameter          = var.redis_auth_ssm_parameter
  ops_token                         = var.ops_token
  ops_token_ssm_parameter           = var.ops_token_ssm_parameter
  tags                              = var.tags
}
