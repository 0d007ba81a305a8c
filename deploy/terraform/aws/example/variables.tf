variable "instance_type" {
  description = "GPU instance type of every region (g5.xlarge: 1x A10G 24 GB; g5.2xlarge: same GPU, 8 vCPU)"
  type        = string
  default     = "g5.xlarge"
}

variable "root_volume_gb" {
  description = "gp3 root volume of every GPU host: the AMI, the images and the model (an 8B model is 16 GB in bf16)"
  type        = number
  default     = 500
}

variable "target_requests_per_host" {
  description = "Scale-out: ALB requests a minute per GPU host each region's autoscaling group keeps to, between its min_size and max_size (null: no scaling policy, desired_capacity hosts)"
  type        = number
  default     = null
}

variable "regions" {
  description = "Per geogate region: the AWS region, its network, certificate, KMS key (its policy must grant AWSServiceRoleForAutoScaling), pinned Deep Learning AMI and GPU host counts"
  type = map(object({
    aws_region         = string
    latitude           = number
    longitude          = number
    vpc_id             = string
    vpc_cidr           = string
    public_subnet_ids  = list(string)
    private_subnet_ids = list(string)
    certificate_arn    = string
    kms_key_arn        = string
    ami_id             = string
    min_size           = number
    max_size           = number
    desired_capacity   = number
  }))
  # Checked here too, not only by each region's autoscaling group (modules/region, hosts.tf):
  # one message names every region whose sizes are out of order.
  validation {
    condition = alltrue([
      for r in values(var.regions) : r.min_size <= r.desired_capacity && r.desired_capacity <= r.max_size
    ])
    error_message = "regions: each region's GPU hosts need min_size <= desired_capacity <= max_size; not so in ${join(", ", [for id, r in var.regions : "${id} (min_size ${r.min_size}, desired_capacity ${r.desired_capacity}, max_size ${r.max_size})" if !(r.min_size <= r.desired_capacity && r.desired_capacity <= r.max_size)])}."
  }
}

variable "model_name" {
  description = "Model name in the API"
  type        = string
  default     = "llama-3.1-8b-instruct"
}

variable "model_path" {
  description = "Model directory on each host (mounted read-only into the backend)"
  type        = string
  default     = "/opt/models/llama-3.1-8b-instruct"
}

variable "model_s3_uri" {
  description = "s3://bucket/prefix/ (ending in \"/\") the hosts copy the model from at boot (empty: already on the AMI or a snapshot)"
  type        = string
  default     = ""
}

variable "geoip_s3_uri" {
  description = "s3://bucket/key.mmdb of a MaxMind GeoIP2/GeoLite2 City (or Country) database the hosts copy at boot and daily (empty: no GeoIP: residency rules and per-country metrics see no country)"
  type        = string
  default     = ""
}

variable "gateway_image" {
  description = "Gateway image (deploy/docker/Dockerfile.gateway) in a registry every region can pull from"
  type        = string
}

variable "backend_image" {
  description = "Model server image (deploy/docker/Dockerfile.backend)"
  type        = string
}

variable "zone_id" {
  description = "Route 53 hosted zone of the global name"
  type        = string
}

variable "domain" {
  description = "The zone's domain; regions answer at <region>.api.<domain>, clients at api.<domain>"
  type        = string
}

variable "geodns_file" {
  description = "Output of: geogate dns export --config dns-export.toml --format route53 --alias-regions --zone <domain> --name api, dns-export.toml being the output dns_export_config (dns.tf; README, Deploying on AWS); \"\" for a first apply without api.<domain>"
  type        = string
  default     = "route53.json"
  validation {
    # Relative to the working directory, the root module's path.module.
    condition     = var.geodns_file == "" ? true : fileexists(var.geodns_file)
    error_message = "geodns_file: no such file. Make it with geogate dns export from the output dns_export_config (dns.tf), or pass -var geodns_file= for a first apply without api.<domain>."
  }
}

variable "alb_logs_buckets" {
  description = "S3 bucket for ALB access logs, per geogate region (a bucket must be in the ALB's AWS region)"
  type        = map(string)
}

variable "prometheus_cidrs" {
  description = "Prometheus's addresses (IPv4, /24 or narrower; [] for none), allowed to every region's ports 9180 (gateway ops) and 8000 (model server: its whole API, unauthenticated)"
  type        = list(string)
}

variable "prometheus_security_group_ids" {
  description = "Per geogate region, the security group of a Prometheus in that region's VPC (regions left out: none)"
  type        = map(string)
  default     = {}
}

variable "ops_token" {
  description = "The gateways' ops.token (16 or more visible ASCII characters, no space; Prometheus's bearer token for /metrics), stored as the SSM parameter below; pass with TF_VAR_ops_token"
  type        = string
  sensitive   = true
}

variable "ops_token_ssm_parameter" {
  description = "Name of the SecureString SSM parameter the hosts read the ops token from (in each region)"
  type        = string
  default     = "/geogate/ops-token"
}

variable "redis_node_type" {
  description = "ElastiCache node type of every region's Redis (Global Datastore: r or m families); the fleet's state is a few MB, so cache.m7g.large is plenty"
  type        = string
  default     = "cache.r7g.large"
}

variable "redis_auth_token" {
  description = "Redis AUTH token (16-128 characters: letters, digits and ! & # $ ^ < > -, ElastiCache's rules); also stored as the SSM parameter below"
  type        = string
  sensitive   = true
}

variable "redis_auth_ssm_parameter" {
  description = "Name of the SecureString SSM parameter the hosts read the token from (in each region)"
  type        = string
  default     = "/geogate/redis-auth-token"
}

variable "tags" {
  description = "Tags on every resource"
  type        = map(string)
  default     = { project = "geogate" }
}
