# GPU hosts: one model server and one regional gateway on each (containers, host network).

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

# Session Manager instead of SSH (no port 22 open), and image pulls from ECR.
resource "aws_iam_role_policy_attachment" "ssm" {
  role       = aws_iam_role.gpu.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_role_policy_attachment" "ecr" {
  role       = aws_iam_role.gpu.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly"
}

data "aws_iam_policy_document" "boot" {
  statement {
    sid     = "RedisAndOpsTokens"
    actions = ["ssm:GetParameter"]
    resources = [
      "arn:aws:ssm:*:*:parameter${var.redis_auth_ssm_parameter}",
      "arn:aws:ssm:*:*:parameter${var.ops_token_ssm_parameter}",
    ]
  }
  statement {
    sid       = "DecryptIt"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
  }
  dynamic "statement" {
    for_each = var.model_s3_uri == "" ? [] : [1]
    content {
      sid     = "ModelWeights"
      actions = ["s3:GetObject", "s3:ListBucket"]
      resources = [
        "arn:aws:s3:::${split("/", trimprefix(var.model_s3_uri, "s3://"))[0]}",
        "arn:aws:s3:::${trimprefix(var.model_s3_uri, "s3://")}*",
      ]
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
  # IMDSv2 only; one hop: the containers have no business with the instance's credentials
  # (the host reads the Redis token before starting them).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
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
  user_data = base64encode(templatefile("${path.module}/user_data.sh.tftpl", {
    aws_region      = data.aws_region.current.name
    gateway_image   = var.gateway_image
    backend_image   = var.backend_image
    gateway_config  = var.gateway_config
    model_path      = var.model_path
    model_s3_uri    = var.model_s3_uri
    model_name      = var.model_name
    redis_host      = local.redis_host
    redis_param     = aws_ssm_parameter.redis_auth.name
    ops_token_param = aws_ssm_parameter.ops_token.name
    region_id       = var.region_id
  }))
  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { "geogate:role" = "gpu", Name = "${local.name}-gpu" })
  }
  tags = local.tags
}

resource "aws_autoscaling_group" "gpu" {
  name                = "${local.name}-gpu"
  vpc_zone_identifier = var.private_subnet_ids
  min_size            = var.min_size
  max_size            = var.max_size
  desired_capacity    = var.desired_capacity
  target_group_arns   = [aws_lb_target_group.gateway.arn]
  # ELB: a host whose gateway is not ready is replaced; the grace covers pulling the images
  # and loading the model (minutes for an 8B model from S3). So never drain <region>-local
  # through the fleet: every host would be replaced, and the replacements adopt the drain
  # (example/gateway.toml.tftpl, [redis]); take a region out in Route 53.
  health_check_type         = "ELB"
  health_check_grace_period = 900
  launch_template {
    id      = aws_launch_template.gpu.id
    version = aws_launch_template.gpu.latest_version
  }
  # A launch template change (AMI, images, config: a new config is a new fleet in Redis, see
  # user_data.sh.tftpl) replaces the hosts: launch before terminate, so a region of one host
  # keeps it until its replacement passes the ELB check (min 100 %: never below the desired
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
}
