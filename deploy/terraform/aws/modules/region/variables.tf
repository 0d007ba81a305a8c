variable "region_id" {
  description = "geogate's id of this region (a [[regions]] id in the gateway config), e.g. ap-southeast"
  type        = string
  # It names the region's AWS resources (an ElastiCache id: lower case, no "--"), its
  # gateways' fleet and upstream, and is written into the boot script.
  validation {
    condition     = can(regex("^[a-z0-9]+(-[a-z0-9]+)*$", var.region_id))
    error_message = "region_id: lower-case letters and digits, words joined by single \"-\" (e.g. ap-southeast)."
  }
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

# The three sizes together, min_size <= desired_capacity <= max_size, are the autoscaling
# group's precondition (hosts.tf): a validation here may name only its own variable before
# Terraform 1.9, and versions.tf takes 1.5. Each alone is a count of hosts.
variable "min_size" {
  description = "Fewest GPU hosts (at most desired_capacity)"
  type        = number
  default     = 1
  validation {
    condition     = var.min_size >= 0 && floor(var.min_size) == var.min_size
    error_message = "min_size: a whole number of hosts, 0 or more (got ${var.min_size})."
  }
}

variable "max_size" {
  description = "Most GPU hosts (at least desired_capacity)"
  type        = number
  default     = 4
  validation {
    condition     = var.max_size >= 0 && floor(var.max_size) == var.max_size
    error_message = "max_size: a whole number of hosts, 0 or more (got ${var.max_size})."
  }
}

variable "desired_capacity" {
  description = "GPU hosts to run, between min_size and max_size (without target_requests_per_host; with it the scaling policy sets the count)"
  type        = number
  default     = 1
  validation {
    condition     = var.desired_capacity >= 0 && floor(var.desired_capacity) == var.desired_capacity
    error_message = "desired_capacity: a whole number of hosts, 0 or more (got ${var.desired_capacity})."
  }
}

variable "target_requests_per_host" {
  description = "Target tracking: ALB requests a minute per GPU host the autoscaling group keeps to, between min_size and max_size (null: no scaling policy, desired_capacity hosts)"
  type        = number
  default     = null
  validation {
    condition     = var.target_requests_per_host == null ? true : var.target_requests_per_host > 0
    error_message = "target_requests_per_host: null, or requests a minute per host above 0."
  }
}

variable "ami_id" {
  # Pinned, not read from the DLAMI's `latest` SSM parameter at plan time: a new AMI there
  # would change the launch template on an ordinary apply and replace every host (an instance
  # refresh). Changing this is the reviewed, per-region step that rolls the hosts. Look the
  # current one up in the host's AWS region with
  #   aws ssm get-parameter --region <aws-region> --query Parameter.Value --output text \
  #     --name /aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id
  description = "Deep Learning AMI (NVIDIA driver + Docker + NVIDIA Container Toolkit) of this AWS region, e.g. ami-0123456789abcdef0"
  type        = string
  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id: an AMI id of this region (ami-...)."
  }
}

variable "root_volume_gb" {
  description = "gp3 root volume: the AMI, the images and the model's weights (an 8B model is 16 GB in bf16)"
  type        = number
  default     = 500
}

variable "model_path" {
  description = "Directory on the host holding the model (mounted read-only into the backend container)"
  type        = string
  # Written into the boot script (root's bash) and `docker run -v <path>:/model:ro`, where a
  # ":" ends the host path, and a quote, "$" or space would break or change the script.
  validation {
    condition     = can(regex("^(/[A-Za-z0-9._+@=-]+)+$", var.model_path))
    error_message = "model_path: an absolute path of letters, digits and . _ + @ = - (no \":\", space, quote or $)."
  }
}

variable "model_s3_uri" {
  description = "s3://bucket/prefix/ the host copies the model from at boot into model_path, ending in \"/\" (empty: the AMI or a snapshot already has it)"
  type        = string
  default     = ""
  # The role may read "arn:aws:s3:::<bucket/prefix>*" (hosts.tf): without the closing "/",
  # s3://my-models granted every object of every bucket whose name starts with my-models
  # (my-models-private/...), and s3://my-models/llama every prefix starting with llama. It is
  # also written into the boot script (root's bash): plain characters only.
  validation {
    condition     = var.model_s3_uri == "" || can(regex("^s3://[a-z0-9][a-z0-9.-]*[a-z0-9]/([A-Za-z0-9!_.'()-]+/)*$", var.model_s3_uri))
    error_message = "model_s3_uri: s3://bucket/prefix/ ending in \"/\" (a prefix of plain characters), or empty."
  }
}

variable "geoip_s3_uri" {
  description = "s3://bucket/key.mmdb of a MaxMind GeoIP2/GeoLite2 City or Country database, copied at boot and daily (empty: no GeoIP; clients are at the default location, so residency rules and per-country metrics see no country)"
  type        = string
  default     = ""
  validation {
    condition     = var.geoip_s3_uri == "" || can(regex("^s3://[a-z0-9][a-z0-9.-]+/[A-Za-z0-9!_.'()/-]+\\.mmdb$", var.geoip_s3_uri))
    error_message = "geoip_s3_uri: s3://bucket/key.mmdb (a key of plain characters), or empty."
  }
}

variable "model_name" {
  description = "Model name in the API (the backend's --served-model-name and the gateway's upstream models)"
  type        = string
  # Written into the boot script (root's bash) and the gateway's TOML (example/gateway.toml.tftpl):
  # a quote, backslash, "$" or space broke the boot or the config of every host.
  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._:/@+=-]*$", var.model_name))
    error_message = "model_name: letters, digits and . _ : / @ + = - (e.g. llama-3.1-8b-instruct)."
  }
}

variable "gateway_image" {
  description = "Image of deploy/docker/Dockerfile.gateway in your registry"
  type        = string
  # Written into the boot script (root's bash), as backend_image.
  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._/:@-]*$", var.gateway_image))
    error_message = "gateway_image: an image reference (registry/repository:tag or @sha256:digest)."
  }
}

variable "backend_image" {
  description = "Image of deploy/docker/Dockerfile.backend in your registry"
  type        = string
  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._/:@-]*$", var.backend_image))
    error_message = "backend_image: an image reference (registry/repository:tag or @sha256:digest)."
  }
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

variable "prometheus_cidrs" {
  # 8000 is the model server's whole API (/v1 unauthenticated, besides /metrics) and 9180 the
  # gateway's ops listener: Prometheus's own addresses only, no broad range.
  description = "Prometheus's addresses (IPv4, /24 or narrower; [] for none) allowed to the gateways' ops port (9180) and the model servers' port (8000)"
  type        = list(string)
  validation {
    condition     = alltrue([for c in var.prometheus_cidrs : !strcontains(c, ":") && can(cidrhost(c, 0)) && try(tonumber(split("/", c)[1]) >= 24, false)])
    error_message = "prometheus_cidrs: IPv4 CIDRs of /24 or narrower (Prometheus's own hosts or subnet); port 8000 serves the model server's unauthenticated API."
  }
}

variable "prometheus_security_group_id" {
  description = "Security group of a Prometheus in this region's VPC (or a peered VPC of the same AWS region) allowed to 9180 and 8000; null for none"
  type        = string
  default     = null
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
  description = "Redis AUTH token (16-128 characters: letters, digits and ! & # $ ^ < > -); the gateways read it from the SSM parameter below"
  type        = string
  sensitive   = true
  # ElastiCache's AUTH token constraints (CreateReplicationGroup's AuthToken): any other was
  # refused by AWS halfway through an apply, after the plan had passed.
  validation {
    condition     = can(regex("^[A-Za-z0-9!&#$^<>-]{16,128}$", var.redis_auth_token))
    error_message = "redis_auth_token: 16 to 128 characters, letters, digits and ! & # $ ^ < > - only (ElastiCache's AUTH token rules)."
  }
}

variable "redis_auth_ssm_parameter" {
  description = "Name of the SecureString SSM parameter this module stores the Redis AUTH token in, read by the hosts at boot"
  type        = string
  # The role's GetParameter grant is the ARN "parameter<name>": a name without the leading "/"
  # gives an ARN that is not the parameter's (the boot fails), and a wildcard would widen the
  # grant ("/geogate/*": every parameter under it). A hierarchy path of plain characters only.
  validation {
    condition     = can(regex("^(/[A-Za-z0-9_.-]+)+$", var.redis_auth_ssm_parameter))
    error_message = "redis_auth_ssm_parameter: a parameter path such as /geogate/redis-auth-token: a leading \"/\", then letters, digits, _ . - and /, no wildcard."
  }
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key for EBS, Redis at rest and the SSM parameters; its key policy must let the role AWSServiceRoleForAutoScaling use it (README, Deploying on AWS), or the autoscaling group cannot launch hosts with the encrypted root volume"
  type        = string
}

variable "ops_token" {
  description = "The gateways' ops.token (16 or more visible ASCII characters, no space): Prometheus sends it as bearer token to /metrics on 9180; the gateways read it from the SSM parameter below"
  type        = string
  sensitive   = true
  # The gateway refuses at start an ops.token an HTTP header cannot carry (gateway.checks.
  # header_token: a space, a line break, a non-ASCII character): with one, every host's gateway
  # stopped at boot, the ALB failed them all, and the autoscaling group replaced them in a loop.
  validation {
    condition     = can(regex("^[!-~]{16,}$", var.ops_token))
    error_message = "ops_token: 16 characters or more, visible ASCII only (no space): the gateways refuse any other."
  }
}

variable "ops_token_ssm_parameter" {
  description = "Name of the SecureString SSM parameter this module stores the ops token in, read by the hosts at boot"
  type        = string
  # The role's GetParameter grant is the ARN "parameter<name>": a name without the leading "/"
  # gives an ARN that is not the parameter's (the boot fails), and a wildcard would widen the
  # grant ("/geogate/*": every parameter under it). A hierarchy path of plain characters only.
  validation {
    condition     = can(regex("^(/[A-Za-z0-9_.-]+)+$", var.ops_token_ssm_parameter))
    error_message = "ops_token_ssm_parameter: a parameter path such as /geogate/ops-token: a leading \"/\", then letters, digits, _ . - and /, no wildcard."
  }
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
