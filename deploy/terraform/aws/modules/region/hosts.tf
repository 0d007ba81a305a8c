# GPU hosts: one model server and one regional gateway on each (containers, host network).

locals {
  # model_s3_uri, s3://<bucket>/<prefix>/ (variables.tf; the prefix may be empty): its parts.
  model_bucket = split("/", trimprefix(var.model_s3_uri, "s3://"))[0]
  model_prefix = trimprefix(trimprefix(var.model_s3_uri, "s3://"), "${local.model_bucket}/")
}

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "gpu" {
  name               = "${local.name}-gpu"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
  tags               = local.tags
}

# Session Manager instead of SSH (no port 22 open): the SSM Agent's own actions only, AWS's
# minimal Session Manager instance policy (Systems Manager User Guide, "Create a custom IAM
# instance profile for Session Manager"). Not AmazonSSMManagedInstanceCore: it also grants
# ssm:GetParameter(s) on every parameter ("*"), which made the "boot" statement's two names
# meaningless. No ec2messages:* either: AWS's minimal policy leaves it out (the agent's channel
# for Run Command, which this deployment does not use). Session logs to S3 with enforced
# encryption (s3:GetEncryptionConfiguration) or KMS-encrypted sessions (kms:Decrypt on that
# key) would need more: neither is set up here.
data "aws_iam_policy_document" "session_manager" {
  # The agent's heartbeat, about its own instance (an EC2 instance's ARN; a hybrid node's is
  # a managed-instance's).
  statement {
    sid     = "AgentHeartbeat"
    actions = ["ssm:UpdateInstanceInformation"]
    resources = [
      "arn:aws:ec2:${data.aws_region.current.name}:*:instance/*",
      "arn:aws:ssm:${data.aws_region.current.name}:*:managed-instance/*",
    ]
  }
  statement {
    sid = "SessionChannels"
    actions = [
      "ssmmessages:CreateControlChannel",
      "ssmmessages:CreateDataChannel",
      "ssmmessages:OpenControlChannel",
      "ssmmessages:OpenDataChannel",
    ]
    resources = ["*"] # ssmmessages takes no resource ARN
  }
}

resource "aws_iam_role_policy" "session_manager" {
  name   = "session-manager"
  role   = aws_iam_role.gpu.id
  policy = data.aws_iam_policy_document.session_manager.json
}

locals {
  # An image in ECR (<account>.dkr.ecr.<region>.amazonaws.com/<name>, then :tag or @digest;
  # dkr.ecr-fips.<region> is the same repository by a FIPS endpoint, as the boot script's
  # login takes it): its account, region and repository name. One pattern, so the test of an
  # image (can) and the reading of its parts (regex) cannot drift apart. (A .cn registry is
  # another partition, which this module's ARNs, all "arn:aws:", do not serve.)
  ecr_image_regex = "^([0-9]{12})\\.dkr\\.ecr(?:-fips)?\\.([a-z0-9-]+)\\.amazonaws\\.com/([^:@]+)"
  # The ECR repositories of the two images, as ARNs; an image in another registry has none (no
  # login either).
  ecr_repositories = distinct([
    for m in [
      for image in [var.gateway_image, var.backend_image] :
      regex(local.ecr_image_regex, image) if can(regex(local.ecr_image_regex, image))
    ] : "arn:aws:ecr:${m[1]}:${m[0]}:repository/${m[2]}"
  ])
}

# Image pulls from ECR: the two repositories only. AmazonEC2ContainerRegistryReadOnly let the
# hosts list and pull every repository of the account.
data "aws_iam_policy_document" "ecr" {
  statement {
    sid       = "RegistryLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken takes no resource
  }
  dynamic "statement" {
    for_each = length(local.ecr_repositories) > 0 ? [1] : []
    content {
      sid       = "PullTheImages"
      actions   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
      resources = local.ecr_repositories
    }
  }
}

resource "aws_iam_role_policy" "ecr" {
  name   = "ecr-pull"
  role   = aws_iam_role.gpu.id
  policy = data.aws_iam_policy_document.ecr.json
}

data "aws_iam_policy_document" "boot" {
  # The host's watchdog (user_data.sh.tftpl) reports it unhealthy to its own group: this
  # region's group, by name (the launch template cannot name the group's ARN, made after it).
  # The boot completes the group's launch hook (ready) on it too.
  statement {
    sid       = "OwnGroup"
    actions   = ["autoscaling:CompleteLifecycleAction", "autoscaling:SetInstanceHealth"]
    resources = ["arn:aws:autoscaling:${data.aws_region.current.name}:*:autoScalingGroup:*:autoScalingGroupName/${local.group_name}"]
  }
  statement {
    sid     = "RedisAndOpsTokens"
    actions = ["ssm:GetParameter"]
    resources = [
      "arn:aws:ssm:*:*:parameter${var.redis_auth_ssm_parameter}",
      "arn:aws:ssm:*:*:parameter${var.ops_token_ssm_parameter}",
    ]
  }
  # The key also encrypts EBS and Redis: the role may decrypt with it only through SSM in this
  # region, i.e. the two SecureStrings above (get-parameter --with-decryption), not any
  # ciphertext made with the key that it gets hold of.
  statement {
    sid       = "DecryptIt"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["ssm.${data.aws_region.current.name}.amazonaws.com"]
    }
  }
  # The boot's `aws s3 sync` lists the model's prefix (ListObjectsV2: s3:ListBucket, on the
  # bucket) and gets each object under it (s3:GetObject, on the objects). One statement with
  # both actions on both ARNs let the hosts list the whole bucket (every other model's keys):
  # the list is held to the model's prefix (s3:prefix); s3://bucket/ names the whole bucket.
  dynamic "statement" {
    for_each = var.model_s3_uri == "" ? [] : [1]
    content {
      sid       = "ModelWeightsList"
      actions   = ["s3:ListBucket"]
      resources = ["arn:aws:s3:::${local.model_bucket}"]
      dynamic "condition" {
        for_each = local.model_prefix == "" ? [] : [1]
        content {
          test     = "StringLike"
          variable = "s3:prefix"
          values   = ["${local.model_prefix}*"]
        }
      }
    }
  }
  dynamic "statement" {
    for_each = var.model_s3_uri == "" ? [] : [1]
    content {
      sid       = "ModelWeightsRead"
      actions   = ["s3:GetObject"]
      resources = ["arn:aws:s3:::${local.model_bucket}/${local.model_prefix}*"]
    }
  }
  dynamic "statement" {
    for_each = var.geoip_s3_uri == "" ? [] : [1]
    content {
      sid       = "GeoIPDatabase"
      actions   = ["s3:GetObject"]
      resources = ["arn:aws:s3:::${trimprefix(var.geoip_s3_uri, "s3://")}"]
    }
  }
}

resource "aws_iam_role_policy" "boot" {
  name   = "boot"
  role   = aws_iam_role.gpu.id
  policy = data.aws_iam_policy_document.boot.json
}

# The gateways' ops.token where the hosts read it at boot (user_data.sh.tftpl), as the Redis
# token: Prometheus scrapes 9180 with it (Authorization: Bearer).
resource "aws_ssm_parameter" "ops_token" {
  name   = var.ops_token_ssm_parameter
  type   = "SecureString"
  key_id = var.kms_key_arn
  value  = var.ops_token
  tags   = local.tags
}

resource "aws_iam_instance_profile" "gpu" {
  name = "${local.name}-gpu"
  role = aws_iam_role.gpu.name
  tags = local.tags
}

resource "aws_launch_template" "gpu" {
  name_prefix   = "${local.name}-gpu-"
  image_id      = var.ami_id # pinned: see variables.tf
  instance_type = var.instance_type
  ebs_optimized = true
  iam_instance_profile {
    arn = aws_iam_instance_profile.gpu.arn
  }
  vpc_security_group_ids = [aws_security_group.gpu.id]
  # IMDSv2 only, one hop. The hop limit keeps bridge-networked containers away from the
  # instance role's credentials, not these: both run with --network host, where they are the
  # host to 169.254.169.254. The user data rejects their uid's packets to IMDS with iptables
  # (user_data.sh.tftpl); that rule is IPv4 only, so IMDS's IPv6 endpoint stays off.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    http_protocol_ipv6          = "disabled"
    instance_metadata_tags      = "enabled"
  }
  monitoring {
    enabled = true
  }
  block_device_mappings {
    device_name = "/dev/sda1"
    ebs {
      volume_size           = var.root_volume_gb
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.kms_key_arn
      delete_on_termination = true
    }
  }
  # gzip: EC2 takes 16 KB of user data, which the script and its gateway config came near;
  # cloud-init unpacks it (a third of the size).
  user_data = base64gzip(templatefile("${path.module}/user_data.sh.tftpl", {
    aws_region           = data.aws_region.current.name
    gateway_image        = var.gateway_image
    backend_image        = var.backend_image
    gateway_config       = var.gateway_config
    model_path           = var.model_path
    model_s3_uri         = var.model_s3_uri
    geoip_s3_uri         = var.geoip_s3_uri
    model_name           = var.model_name
    redis_host           = local.redis_host
    redis_param          = aws_ssm_parameter.redis_auth.name
    ops_token_param      = aws_ssm_parameter.ops_token.name
    region_id            = var.region_id
    group_name           = local.group_name
    ready_hook           = local.ready_hook
    host_ready_timeout_s = local.host_ready_timeout_s
  }))
  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { "geogate:role" = "gpu", Name = "${local.name}-gpu" })
  }
  tags = local.tags
}

locals {
  # Named before the group: the launch template's user data and the role's grant name it,
  # and the group comes after both.
  group_name = "${local.name}-gpu"
  ready_hook = "ready"
  # How long a new host may take to be ready (its images pulled, its model copied and
  # loaded): the launch hook's timeout and the group's health check grace (a group made
  # before the hook has only the grace for a boot); the boot script's BOOT_MAX_S is derived
  # from it (user_data.sh.tftpl), and README's put-lifecycle-hook command repeats it.
  # 900 s: what the ALB's check allowed a boot before the hook.
  host_ready_timeout_s = 900
}

resource "aws_autoscaling_group" "gpu" {
  name                = local.group_name
  vpc_zone_identifier = var.private_subnet_ids
  min_size            = var.min_size
  max_size            = var.max_size
  # With a scaling policy the policy sets the count: Terraform leaves it be (null), or every
  # apply would reset what the policy scaled to.
  desired_capacity  = var.target_requests_per_host == null ? var.desired_capacity : null
  target_group_arns = [aws_lb_target_group.gateway.arn]
  # EC2, not ELB: the ALB's /readyz says whether to send a host requests, not whether it is
  # lost. Under ELB checks a model server's restart (minutes to load the model again)
  # replaced the whole host, and a drain of <region>-local through the fleet replaced every
  # host, in a loop (the replacements adopted the drain). The host's watchdog
  # (user_data.sh.tftpl) reports it unhealthy after 15 minutes of a /readyz that fails and is
  # no drain; the grace (from in service on) holds its reports off a host just started.
  health_check_type         = "EC2"
  health_check_grace_period = local.host_ready_timeout_s
  # A new host enters service (and an instance refresh counts it) once its gateway is ready:
  # the boot completes this hook at its /readyz's first 200 (user_data.sh.tftpl). One not
  # ready within the timeout (images, the model's copy and load: the grace, as the ALB's
  # check allowed before) is abandoned and replaced.
  initial_lifecycle_hook {
    name                 = local.ready_hook
    lifecycle_transition = "autoscaling:EC2_INSTANCE_LAUNCHING"
    heartbeat_timeout    = local.host_ready_timeout_s
    default_result       = "ABANDON"
  }
  # Hosts wait in the hook for minutes: Terraform does not wait for them (its default, 10
  # minutes for healthy hosts, failed an apply and tainted the group).
  wait_for_capacity_timeout = "0"
  launch_template {
    id      = aws_launch_template.gpu.id
    version = aws_launch_template.gpu.latest_version
  }
  # A launch template change (AMI, images, config: a new config is a new fleet in Redis, see
  # user_data.sh.tftpl) replaces the hosts: launch before terminate, so a region of one host
  # keeps it until its replacement is in service, ready (min 100 %: never below the desired
  # count; max 200 %: up to twice it while replacing). With min 50 / max 100 the only host
  # went first. Each old host leaves after the target group's deregistration delay (alb.tf).
  # Every region's group refreshes on the same apply: roll one region at a time (README,
  # Deploying on AWS).
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 100
      max_healthy_percentage = 200
    }
  }
  dynamic "tag" {
    for_each = merge(local.tags, { "geogate:role" = "gpu" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
  # AWS refuses sizes out of order only when the apply reaches the group, after the plan passed
  # and other resources changed. desired_capacity is checked with a scaling policy too, where
  # Terraform does not pass it: a value out of range would otherwise wait to fail until the
  # policy is switched off (target_requests_per_host = null), in an apply about something else.
  lifecycle {
    # The provider replaces a group whose initial_lifecycle_hook changes (a new group: every
    # host at once). A group made before the hook gets it once, by hand (README, Deploying on
    # AWS: aws autoscaling put-lifecycle-hook), not by a replacement.
    ignore_changes = [initial_lifecycle_hook]
    precondition {
      condition     = var.min_size <= var.desired_capacity && var.desired_capacity <= var.max_size
      error_message = "GPU hosts of ${var.region_id}: min_size <= desired_capacity <= max_size is required; got min_size ${var.min_size}, desired_capacity ${var.desired_capacity}, max_size ${var.max_size}."
    }
    # Target tracking on the ALB's requests per host: with no host there is no target and no
    # request count, so a group scaled to 0 never scales out again.
    precondition {
      condition     = var.target_requests_per_host == null || var.min_size >= 1
      error_message = "GPU hosts of ${var.region_id}: with target_requests_per_host, min_size must be 1 or more (got ${var.min_size}): at 0 hosts the ALB counts no requests per host, and the group would never scale out again."
    }
  }
}

# Scale-out, when target_requests_per_host is set (null: the count stays min/max/desired, as
# set): target tracking on the ALB's requests per host a minute, between min_size and max_size.
# Requests are a rough proxy for GPU load: one is a 20-token answer, another a 4,000-token
# stream that holds a batch slot for a minute, so the same count may idle or saturate a GPU;
# set the target from a load test of your own traffic (requests a minute at which TTFT still
# meets its objective). A better signal is the model server's own queue
# (vllm:num_requests_waiting; not NVML's GPU utilization, high with one steady stream),
# published to CloudWatch (the CloudWatch agent's Prometheus scraping) and tracked with a
# customized metric specification. The warm-up is the group's health check grace: with the
# launch hook a host is in service once ready and could count sooner, but a group made before
# the hook, until it is put by hand (README), counts its hosts before their model is loaded.
resource "aws_autoscaling_policy" "requests_per_host" {
  count                     = var.target_requests_per_host == null ? 0 : 1
  name                      = "${local.name}-requests-per-host"
  autoscaling_group_name    = aws_autoscaling_group.gpu.name
  policy_type               = "TargetTrackingScaling"
  estimated_instance_warmup = aws_autoscaling_group.gpu.health_check_grace_period
  target_tracking_configuration {
    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${aws_lb.gateway.arn_suffix}/${aws_lb_target_group.gateway.arn_suffix}"
    }
    target_value = var.target_requests_per_host
  }
}
