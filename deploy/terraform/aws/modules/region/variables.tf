variable "region_id" {
  description = "geogate's id of this region (a [[regions]] id in the gateway config), e.g. ap-southeast"
  type        = string
}

variable "name_prefix" {
  description = "Prefix of every resource's name"
  type        = string
  default     = "geogate"
}

variable "vpc_id" {
  description = "VPC of this region's fleet"
  type        = string
}

variable "public_subnet_ids" {
  description = "Subnets of the internet-facing ALB (two or more availability zones)"
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Subnets of the GPU hosts and of Redis (NAT egress for image pulls)"
  type        = list(string)
}

variable "instance_type" {
  description = "GPU instance type: g5.xlarge (1x A10G 24 GB, 4 vCPU) holds an 8B model in bf16"
  type        = string
  default     = "g5.xlarge"
}

variable "min_size" {
  description = "Fewest GPU hosts"
  type        = number
  default     = 1
}

variable "max_size" {
  description = "Most GPU hosts"
  type        = number
  default     = 4
}

variable "desired_capacity" {
  description = "GPU hosts to start with"
  type        = number
  default     = 1
}

variable "ami_ssm_parameter" {
  description = "Public SSM parameter holding the Deep Learning AMI id (NVIDIA driver + Docker + NVIDIA Container Toolkit)"
  type        = string
  default     = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
}

variable "root_volume_gb" {
  description = "gp3 root volume: the AMI, the images and the model's weights (an 8B model is 16 GB in bf16)"
  type        = number
  default     = 500
}

variable "model_path" {
  description = "Directory on the host holding the model (mounted read-only into the backend container)"
  type        = string
}

variable "model_s3_uri" {
  description = "Where the host copies the model from at boot into model_path (empty: the AMI or a snapshot already has it)"
  type        = string
  default     = ""
}

variable "model_name" {
  description = "Model name in the API (the backend's --served-model-name and the gateway's upstream models)"
  type        = string
}

variable "gateway_image" {
  description = "Image of deploy/docker/Dockerfile.gateway in your registry"
  type        = string
}

variable "backend_image" {
  description = "Image of deploy/docker/Dockerfile.backend in your registry"
  type        = string
}

variable "gateway_config" {
  description = "This region's gateway.toml (rendered by the root module); the host writes it to /etc/geogate/gateway.toml"
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate of the regional hostname and the global one, for the ALB's HTTPS listener"
  type        = string
}

variable "alb_logs_bucket" {
  description = "S3 bucket for the ALB's access logs"
  type        = string
}

variable "monitoring_cidrs" {
  description = "Where Prometheus scrapes from: the gateways' ops port (9180) and the backends' port (8000)"
  type        = list(string)
}

variable "redis_global_replication_group_id" {
  description = "null in the primary region (it creates the Global Datastore's primary); the Global Datastore's id elsewhere"
  type        = string
  default     = null
}

variable "redis_node_type" {
  description = "ElastiCache node type (Global Datastore needs r/m families; the fleet's state is a few MB)"
  type        = string
  default     = "cache.r7g.large"
}

variable "redis_auth_token" {
  description = "Redis AUTH token (16-128 characters); the gateways read it from the SSM parameter below"
  type        = string
  sensitive   = true
}

variable "redis_auth_ssm_parameter" {
  description = "Name of the SecureString SSM parameter this module stores the Redis AUTH token in, read by the hosts at boot"
  type        = string
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key for EBS, Redis at rest and the SSM parameter"
  type        = string
}

variable "tags" {
  description = "Tags on every resource"
  type        = map(string)
  default     = {}
}

variable "redis_client_cidrs" {
  description = "Private CIDRs of every region's GPU hosts: a Global Datastore takes writes only in the primary region, so all gateways write there (over VPC peering or a Transit Gateway)"
  type        = list(string)
}

variable "redis_write_endpoint" {
  description = "The primary region's Redis endpoint that every gateway uses (null: this region's own, i.e. this is the primary)"
  type        = string
  default     = null
}
